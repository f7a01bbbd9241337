"""The house's import rules (../shared/DESIGN.md, docs/internals.md), read from the source with `ast`:

- every import of ours goes through the installed names (`clipforge.pretrain...`, never a bare `pretrain`:
  setup.cfg installs the folders under `clipforge`), in every file of the checkout, tests and bench included;
- clipforge/ itself (UserError, atomic writes) imports no other clipforge package;
- data_pipeline imports no other clipforge package (but clipforge/);
- modeling (model factory, preprocessing, run config) imports neither pretrain, eval nor launch;
- eval and pretrain never import each other (the periodic eval reaches training by name: the config's
  eval.evaluator, imported at run start by pretrain/evaluator.py);
- launch imports no torch / deepspeed / open_clip at module level, directly or through the clipforge
  modules it imports at module level (tests/launch/test_slurm_script.py::test_launch_imports_no_torch_or_deepspeed
  checks the same at run time, with those packages made unimportable).
"""
import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("clipforge", "data_pipeline", "modeling", "pretrain", "eval", "launch")
FOLDERS = PACKAGES[1:]  # installed as clipforge.<folder>
HEAVY = ("torch", "torchvision", "deepspeed", "open_clip")

# package -> the clipforge packages it may import
ALLOWED = {
    "clipforge": set(),
    "data_pipeline": {"clipforge"},
    "modeling": {"clipforge", "data_pipeline"},
    "pretrain": {"clipforge", "data_pipeline", "modeling"},
    "eval": {"clipforge", "data_pipeline", "modeling"},
    "launch": {"clipforge", "data_pipeline", "modeling", "pretrain", "eval"},
}


def _files(package: str) -> List[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _module_name(path: Path) -> str:
    """The installed dotted name of a repo file: pretrain/run.py -> clipforge.pretrain.run."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(parts if parts[0] == "clipforge" else ["clipforge", *parts])


def _layer(name: str) -> str:
    """Which of PACKAGES a dotted name belongs to (clipforge.eval.api -> eval; clipforge.errors -> clipforge),
    or its bare first part when it is not ours."""
    parts = name.split(".")
    if parts[0] != "clipforge":
        return parts[0]
    return parts[1] if len(parts) > 1 and parts[1] in FOLDERS else "clipforge"


def _imports(path: Path, module_level_only: bool = False) -> Iterator[Tuple[str, int]]:
    """(absolute dotted name, line) of every import in the file (relative ones resolved); with
    module_level_only, those that run when the module is imported (not inside a function body)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]

    def walk(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import) and not (module_level_only and in_function):
                for alias in child.names:
                    yield alias.name, child.lineno
            elif isinstance(child, ast.ImportFrom) and not (module_level_only and in_function):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[:len(package.split(".")) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                yield base, child.lineno
                for alias in child.names:  # `from pkg import module`
                    yield f"{base}.{alias.name}", child.lineno
            yield from walk(child, inside)

    yield from walk(tree, False)


def _source_of(name: str):
    """The repo file of a dotted module name, or None (not ours, or an attribute, not a module)."""
    parts = name.split(".")
    if parts[0] != "clipforge":
        return None
    path = REPO.joinpath(*(parts[1:] if len(parts) > 1 and parts[1] in FOLDERS else parts))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_the_layers_below(package):
    wrong = []
    for path in _files(package):
        rel = path.relative_to(REPO).as_posix()
        for name, line in _imports(path):
            top = _layer(name)
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                wrong.append(f"{rel}:{line} imports {name}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def _repo_files() -> List[Path]:
    """Every Python file of the checkout: the packages, tests, bench and the top level. Not the dot folders
    (.venv, .venv-peers: third-party code, some of it not even UTF-8; .git), runs or build."""
    skip = {"runs", "build", "shared"}
    return sorted(p for p in REPO.rglob("*.py")
                  if not (skip & set(p.relative_to(REPO).parts[:1]) or p.relative_to(REPO).parts[0].startswith(".")))


def _dynamic_imports(path: Path) -> Iterator[Tuple[str, int]]:
    """(name, line) of `__import__("x")` and `importlib.import_module("x")` calls with a literal name."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in ("__import__", "import_module"):
                yield node.args[0].value, node.lineno


def test_no_bare_import_of_the_repos_folders_anywhere():
    """`import pretrain` / `from modeling.config import ...` only work from a checkout, where they load a second
    copy of the module beside clipforge.modeling.config: every file (tests and bench too) uses clipforge.*."""
    bare = [f"{path.relative_to(REPO).as_posix()}:{line} imports {name}" for path in _repo_files()
            for name, line in [*_imports(path), *_dynamic_imports(path)] if name.split(".")[0] in FOLDERS]
    assert not bare, "\n".join(sorted(set(bare)))

def _module_level_closure(start: List[Path]) -> Dict[str, str]:
    """Every module imported when `start` is imported: name -> the file that imports it first."""
    seen: Set[Path] = set()
    found: Dict[str, str] = {}
    todo = list(start)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name, line in _imports(path, module_level_only=True):
            found.setdefault(name, f"{path.relative_to(REPO).as_posix()}:{line}")
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__, a/b/c
                source = _source_of(".".join(parts[:i]))
                if source is not None:
                    todo.append(source)
    return found


def test_launch_imports_no_torch_at_module_level():
    found = _module_level_closure(_files("launch"))
    heavy = {name: where for name, where in found.items() if name.split(".")[0] in HEAVY}
    assert not heavy, heavy


def test_modeling_config_is_torch_free():
    """launch validates configs on login nodes: modeling.config (and modeling/__init__) must not need torch."""
    found = _module_level_closure([REPO / "modeling" / "config.py"])
    heavy = {name: where for name, where in found.items() if name.split(".")[0] in HEAVY}
    assert not heavy, heavy
