"""Every command in the code blocks of README.md and docs/*.md runs (or is checked), collected from the text.

Blocks: fenced ```bash / ```sh / ```shell / ```console and untagged ones (an untagged block is read as
commands; mark other text ```text). Backslash continuations are joined, comments dropped. Each command line is
one example, covered by exactly one rule (an example no rule covers fails, so a new one cannot drift):
  help      the same line is a `--help` example: tests/launch/test_help_examples.py runs it
  run       clipforge / torchrun: run at test size in a folder laid out as after `clipforge demo`
            (tests/example_runner.py: rewrites, stand-in inputs, --dry-run for slurm / other hosts)
  synopsis  a usage line (FILE, DIR, [optional ...], a|b): each named flag and choice exists in that
            command's --help; what is left once [...] is dropped runs when it has no placeholder
  script    a block with shell variables / loops / export: the whole block runs under bash -eu, each
            clipforge / torchrun line rewritten as above
  sbatch    `sbatch [--array=A-B] [--dependency=...] --wrap "CMD"`: CMD runs here as each array task would
            (SLURM_ARRAY_TASK_* set; the array cut to 2 tasks), a dependent job after its block's array
  make      `make -n TARGET` works; demo: its clipforge line is covered; test*: it runs pytest on tests/;
            flickr8k: configs/flickr8k.sh (tests/test_flickr8k_recipe.py runs it on a slice); bench*: hours,
            `make -n` only (tests/bench runs the pieces)
Python blocks: their import lines import.
"""
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest

from .example_runner import REPO, check, example_lines, help_examples, help_text, known_broken, make_layout, \
    rewrite, run_demo, runnable, sh

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}
SCRIPT = re.compile(r"^\s*(export\s|\w+=\S|for\s|while\s|if\s|do\b|done\b|fi\b)|\$\{?\w", re.M)
SHELL_LINE = re.compile(r"^(export\s+\w+=|\w+=\S*$|for\s.*;\s*do$|do$|done$)")
# the usage lines' placeholders (upper-case words that are not: --image-col URL, $F8K)
PLACEHOLDER = re.compile(r"(?<![\w./=$-])(FILE|DIR|INPUT|RUN|RUN_OR_CKPT|CKPT|PATH|JOBID)(\.\.\.)?(?![\w.])"
                         r"|(^|\s)\.\.\.(\s|$)")
LAUNCHES_RANKS = re.compile(r"launch\.cli (launch local|pretrain|eval|demo)\b|torch\.distributed\.run")
MAKE_HOURS = {"bench", "bench-quick", "bench-learning"}
MAKE_PYTEST = {"test", "test-fast", "test-multiprocess"}

# examples that fail as printed, in texts owned elsewhere: xfail, not run (each takes ~15 s to fail); the fix
# edits the text, and then test_docs_have_examples_and_a_rule_for_each says to drop the entry. None today.
BROKEN = {}


@dataclass
class Example:
    where: str            # docs/x.md:LINE of the block
    text: str             # one command line, or a whole script block
    before: List[str]     # the block's earlier command lines

    def __str__(self):
        return self.text


def _blocks():
    for path in DOC_FILES:
        text = path.read_text()
        for match in re.finditer(r"^[ \t]*```([\w-]*)[^\n]*\n(.*?)^[ \t]*```", text, flags=re.M | re.S):
            yield f"{path.relative_to(REPO)}:{text[:match.start()].count(chr(10)) + 1}", match.group(1), match.group(2)


def collect() -> List[Example]:
    found: List[Example] = []
    for where, lang, body in _blocks():
        if lang not in SHELL_LANGS:
            continue
        lines = example_lines(body)
        if SCRIPT.search(body):
            found.append(Example(where, "\n".join(lines), []))
        else:
            found += [Example(where, line, lines[:i]) for i, line in enumerate(lines)]
    return found


EXAMPLES = collect()


def is_synopsis(line: str) -> bool:
    return "[" in line or bool(re.search(r"(?<![\"'])\b\w+\|\w", line)) or bool(PLACEHOLDER.search(line))


def rule(example: Example) -> Optional[str]:
    """Which rule covers an example (None: none does, the test fails)."""
    text = example.text
    if "\n" in text or SCRIPT.search(text):
        return "script"
    if text in help_examples():
        return "help"
    first = text.split()[0]
    if first in ("make", "sbatch"):
        return first
    if first in ("clipforge", "torchrun"):
        return "synopsis" if is_synopsis(text) else "run"
    return None


def _marks(example: Example):
    kind = rule(example)
    commands = [rewrite(line) for line in example.text.splitlines()] if kind in ("run", "script") else []
    marks = [pytest.mark.multiprocess] if any(LAUNCHES_RANKS.search(c) and "--dry-run" not in c
                                              for c in commands) else []
    if kind == "script" and marks:
        marks.append(pytest.mark.slow)
    if example.text in BROKEN:
        marks += known_broken(example.text, BROKEN, run=False).marks   # a fix edits the text
    return marks


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    """A user's folder before `clipforge demo` (its raw scenes, configs/, stand-ins); the demo run is made on
    first use by an example that reads it (run_demo)."""
    return make_layout(tmp_path_factory.mktemp("docs-user") / "work", trained=False)


def _run(example: str, commands: List[str], root: Path, env=None, fresh: bool = True) -> None:
    for command in commands:
        if re.search(r"runs/demo/(run|shards-)", command):
            run_demo(root)
        out = re.search(r"launch\.cli convert (?!.*--merge-only).*--out (\S+)", command)
        if out and fresh:   # every convert example starts from an empty --out, as on a fresh folder
            shutil.rmtree(root / out.group(1), ignore_errors=True)
        check(sh(command, root, env=env), example, command)


def _synopsis(example: Example, root: Path) -> None:
    line = example.text
    words = []
    for token in line.split()[1:]:
        if not re.fullmatch(r"[a-z][a-z|-]*", token):
            break
        words.append(token.split("|"))
    assert line.startswith("clipforge ") and words, f"{example.where}: no rule for this usage line: {line}"
    variants = [[]]
    for choices in words:
        variants = [v + [c] for v in variants for c in choices]
    for variant in variants:
        text = help_text(tuple(variant))
        for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", line):
            assert re.search(rf"(?<![\w-]){flag}(?![\w-])", text), \
                f"{example.where}: clipforge {' '.join(variant)} has no {flag}: {line}"
        for flag, choices in re.findall(r"(--[\w-]+)[ =]([\w-]+(?:\|[\w./-]+)+)", line):
            for choice in choices.split("|"):
                assert not re.fullmatch(r"[a-z][\w-]*", choice) or re.search(rf"\b{choice}\b", text), \
                    f"{example.where}: {flag} {choice} is not in clipforge {' '.join(variant)} --help: {line}"
    rest = line
    while re.search(r"\[[^\[\]]*\]", rest):
        rest = re.sub(r"\s*\[[^\[\]]*\]", "", rest)
    if not is_synopsis(rest):
        _run(line, runnable(rest), root)


def _script(example: Example, root: Path) -> None:
    lines = []
    for line in example.text.splitlines():
        if line.split()[0] in ("clipforge", "torchrun"):
            assert not is_synopsis(line), f"{example.where}: a usage line in a script: {line}"
            lines.append(rewrite(line))
        else:
            assert SHELL_LINE.match(line), f"{example.where}: no rule for this script line: {line}"
            lines.append(line)
    for line in lines:
        if re.search(r"runs/demo/(run|shards-)", line):
            run_demo(root)
    script = "set -eu\n" + "\n".join(lines)
    check(sh(script, root, shell=True), f"{example.where} (script)", script)


def _sbatch(example: Example, root: Path) -> None:
    if "--dependency" in example.text:   # its block's earlier jobs first
        for line in example.before:
            if line.startswith("sbatch ") and "--dependency" not in line:
                _sbatch(Example(example.where, line, []), root)
    words, array, wrap = shlex.split(re.sub(r"<[^<>]*>", "ID", example.text))[1:], None, None   # <array job id>
    while words:
        word = words.pop(0)
        if word.startswith("--array="):
            low, high = map(int, word.split("=", 1)[1].split("-"))
            array = range(low, min(high, low + 1) + 1)   # two tasks stand for the array
        elif word == "--wrap":
            wrap = words.pop(0)
        else:
            assert word.startswith("--dependency=afterok:"), f"{example.where}: no rule for sbatch {word}"
    assert wrap, f"{example.where}: sbatch without --wrap: {example.text}"
    for task in array or [None]:
        env = None if task is None else {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(array[0]),
                                         "SLURM_ARRAY_TASK_COUNT": str(len(array))}
        _run(example.text, runnable(wrap), root, env=env, fresh=task is None or task == array[0])


def _make(example: Example) -> None:
    words = example.text.split()
    assert len(words) == 2, f"{example.where}: no rule for {example.text}"
    target = words[1]
    dry = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, f"{example.where}: make -n {target}: {dry.stderr}"
    if target == "demo":
        found = [f"clipforge{m.group(1)}" for m in re.finditer(r"(?:^|\s)(?:\S*/)?clipforge( [^\n]*)?$", dry.stdout,
                                                                flags=re.M)]
        assert found and all(line in help_examples() for line in found), (found, dry.stdout)
    elif target in MAKE_PYTEST:
        assert re.search(r"-m pytest .*\btests\b", dry.stdout), dry.stdout
    elif target == "flickr8k":
        assert "configs/flickr8k.sh" in dry.stdout, dry.stdout
    else:
        assert target in MAKE_HOURS, f"{example.where}: no rule for make {target}"


def test_docs_have_examples_and_a_rule_for_each():
    assert len(EXAMPLES) >= 20
    unknown = [f"{e.where}: {e.text}" for e in EXAMPLES if rule(e) is None]
    assert not unknown, "docs examples no rule covers (make them runnable in tests/test_docs_examples.py):\n" + \
        "\n".join(unknown)
    texts = {e.text for e in EXAMPLES}
    assert set(BROKEN) <= texts, f"no longer in the docs (fixed?), drop from BROKEN: {set(BROKEN) - texts}"


@pytest.mark.parametrize("example", [pytest.param(e, marks=_marks(e), id=f"{e.where} {e.text[:60]}")
                                     for e in EXAMPLES])
def test_docs_example(layout, example):
    kind = rule(example)
    if kind == "help":
        return   # tests/launch/test_help_examples.py runs it
    if kind == "run":
        _run(example.text, runnable(example.text), layout)
    elif kind == "synopsis":
        _synopsis(example, layout)
    elif kind == "script":
        _script(example, layout)
    elif kind == "sbatch":
        _sbatch(example, layout)
    elif kind == "make":
        _make(example)
    else:
        pytest.fail(f"{example.where}: no rule for {example.text}")


def test_python_examples_import():
    """The import lines of the ```python blocks import (the rest is illustration: placeholders, no data)."""
    imports = []
    for where, lang, body in _blocks():
        if lang == "python":
            imports += [line.strip() for line in body.splitlines() if re.match(r"\s*(from \S+ )?import \S", line)]
    assert imports
    result = subprocess.run([sys.executable, "-c", "\n".join(dict.fromkeys(imports))], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_an_example_no_rule_covers_fails(tmp_path):
    """The rules refuse what they do not know: a new kind of docs example fails until a rule covers it."""
    for text in ("srun python train.py", "pip install clipforge", "python -m clipforge.pretrain --config c.yaml"):
        assert rule(Example("x.md:1", text, [])) is None, text
    with pytest.raises(AssertionError, match="has no --no-such-flag"):
        _synopsis(Example("x.md:1", "clipforge convert INPUT... --out DIR [--no-such-flag]", []), tmp_path)
    with pytest.raises(AssertionError, match="no rule for this script line"):
        _script(Example("x.md:1", "F8K=data\ncurl -O $F8K", []), tmp_path)
    with pytest.raises(AssertionError, match="no rule for make"):
        _make(Example("x.md:1", "make clean-venv", []))
