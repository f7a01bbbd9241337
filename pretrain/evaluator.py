"""The periodic eval is named by the run config (`eval.evaluator: "module:function"`) and imported at run start:
the application above chooses it, so pretrain imports no eval package itself (tests/test_import_rules.py).

    check_evaluator(cfg.eval.evaluator)                # preflight: torch-free, before any process starts
    evaluator = resolve_evaluator(cfg.eval.evaluator)  # pretrain/cli.py, on every rank -> run(evaluator=...)
"""
import importlib
import importlib.util
from typing import Callable, Tuple

from clipforge.modeling.config import ConfigError

KEY = "eval.evaluator"


def _split(name: str) -> Tuple[str, str]:
    module, sep, function = name.partition(":")
    if not sep or not module or not function.isidentifier():
        raise ConfigError(f'{KEY}={name!r}: expected "module:function", e.g. '
                          '"clipforge.eval.periodic:retrieval_evaluator"')
    return module, function


def check_evaluator(name: str) -> None:
    """`name`'s module can be imported: found without running it (on a login node torch stays unloaded)."""
    module, _ = _split(name)
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a package above it is missing
        found = False
    if not found:
        raise ConfigError(f"{KEY}={name!r}: no module {module!r} to import")


def resolve_evaluator(name: str) -> Callable:
    """The evaluator factory `name` names, imported (an error raised inside that module is a bug: it propagates)."""
    check_evaluator(name)
    module, function = _split(name)
    evaluator = getattr(importlib.import_module(module), function, None)
    if not callable(evaluator):
        raise ConfigError(f"{KEY}={name!r}: module {module!r} has no function {function!r}")
    return evaluator
