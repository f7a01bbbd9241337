"""Prompt templates and class names for zero-shot classification.

    templates = load_templates("imagenet7")        # a built-in set, or a file (see below)
    classnames = load_classnames("classes.txt")    # one name per line, or JSON list / {label: name}

A template holds `{c}` (CLIP_benchmark's placeholder) or `{}` where the class name goes. Template files:
one template per line (.txt), a JSON list of templates, or a JSON object {classname: [prompts...]} of
class-specific prompts (CuPL style, as CLIP_benchmark accepts).
"""
import json
import os
from typing import Dict, List, Union

from clipforge.errors import UserError

# The built-in sets (prompt text from the CLIP paper's released notebooks).
BUILTIN: Dict[str, List[str]] = {
    "simple": ["a photo of a {c}."],
    # The 7 templates the CLIP authors selected for ImageNet ensembling.
    "imagenet7": ["itap of a {c}.", "a bad photo of the {c}.", "a origami {c}.", "a photo of the large {c}.",
                  "a {c} in a video game.", "art of the {c}.", "a photo of the small {c}."],
    # CLIP's CIFAR-10/100 templates.
    "cifar": ["a photo of a {c}.", "a blurry photo of a {c}.", "a black and white photo of a {c}.",
              "a low contrast photo of a {c}.", "a high contrast photo of a {c}.", "a bad photo of a {c}.",
              "a good photo of a {c}.", "a photo of a small {c}.", "a photo of a big {c}.",
              "a photo of the {c}.", "a blurry photo of the {c}.", "a black and white photo of the {c}.",
              "a low contrast photo of the {c}.", "a high contrast photo of the {c}.", "a bad photo of the {c}.",
              "a good photo of the {c}.", "a photo of the small {c}.", "a photo of the big {c}."],
}
DEFAULT_TEMPLATES = "imagenet7"

Templates = Union[List[str], Dict[str, List[str]]]


class TemplateError(UserError, ValueError):
    """A template or class-name file is missing or malformed; the message names it."""


def _normalise(template: str, where: str) -> str:
    template = template.replace("{}", "{c}")
    if "{c}" not in template:
        raise TemplateError(f"{where}: template {template!r} has no {{c}} (or {{}}) where the class name goes")
    return template


def _read(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise TemplateError(f"{path}: cannot read ({e.strerror})") from None
    if path.endswith(".json"):
        try:
            return json.loads(text)
        except ValueError as e:
            raise TemplateError(f"{path}: not valid JSON ({e})") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def load_templates(spec: str = DEFAULT_TEMPLATES) -> Templates:
    """A built-in set name, or a .txt / .json file of templates (or of per-class prompts)."""
    if spec in BUILTIN:
        return list(BUILTIN[spec])
    if not os.path.exists(spec):
        raise TemplateError(f"templates {spec!r}: neither a built-in set ({', '.join(BUILTIN)}) nor a file")
    data = _read(spec)
    if isinstance(data, dict):
        if not all(isinstance(v, list) and v and all(isinstance(p, str) for p in v) for v in data.values()):
            raise TemplateError(f"{spec}: a JSON object must map each class name to a non-empty list of prompts")
        return {str(k): list(v) for k, v in data.items()}
    if not isinstance(data, list) or not data or not all(isinstance(t, str) for t in data):
        raise TemplateError(f"{spec}: expected a non-empty list of templates")
    return [_normalise(t, spec) for t in data]


def load_classnames(path: str) -> List[str]:
    """Class names in class-index order: one per line, a JSON list, or a JSON {label: name} object
    (labels 0..C-1)."""
    if not os.path.isfile(path):
        raise TemplateError(f"classnames file {path!r} not found")
    data = _read(path)
    if isinstance(data, dict):
        try:
            index = {int(k): str(v) for k, v in data.items()}
        except ValueError:
            raise TemplateError(f"{path}: a JSON object must map integer labels to class names") from None
        if sorted(index) != list(range(len(index))):
            raise TemplateError(f"{path}: labels must be 0..{len(index) - 1} without gaps")
        data = [index[i] for i in range(len(index))]
    if not isinstance(data, list) or not data:
        raise TemplateError(f"{path}: expected a non-empty list of class names")
    names = [str(n) for n in data]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TemplateError(f"{path}: class names repeated: {', '.join(dupes[:5])}")
    return names


def prompts_for(classname: str, templates: Templates) -> List[str]:
    if isinstance(templates, dict):
        if classname not in templates:
            raise TemplateError(f"class {classname!r} has no prompts in the per-class templates file")
        return templates[classname]
    return [t.format(c=classname) for t in templates]
