"""Command-line flags built from an options dataclass, so that each option's default and help text are written once,
on its field (stdlib only: data_pipeline, eval, launch and modeling all use it).

    @dataclass
    class Options:
        fmt: str = option("auto", "input format", "--format", choices=FORMATS)
        image_size: int = option(256, "output size in pixels")
        user_agent: str = "clipforge"        # a plain field (no help): not on the command line

    add_fields(parser, Options)              # --format, --image-size
    Options(**field_values(args, Options))

The flag is the field's name with dashes unless flags are given (a name without dashes is a positional: the
field's own name); the value type is the default's (str for None); a bool field is a switch: --NAME sets a False
default, a True default needs a "--no-..." flag, which clears it. Other add_argument keywords (choices, nargs,
metavar, type) pass through as they are.
"""
import argparse
import dataclasses
import functools
from typing import Any, Dict, Iterable, Mapping, Optional


def option(default: Any, help: str, *flags: str, **argparse_kwargs) -> Any:
    """A dataclass field that is also a command-line flag; a list default is copied for every instance."""
    metadata = {"help": help, "flags": flags, "argparse": argparse_kwargs}
    if isinstance(default, list):
        return dataclasses.field(default_factory=functools.partial(list, default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def flag_fields(cls) -> Iterable[dataclasses.Field]:
    """The fields of `cls` declared with option(), in declaration order."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def add_fields(parser, cls, defaults: Optional[Mapping[str, Any]] = None) -> None:
    """One argument per option() field of `cls` on `parser` (or an argument group); `defaults` replaces a field's
    default on this command line only (the convert CLI's node count and rank come from slurm's environment)."""
    for f in flag_fields(cls):
        default = (defaults or {}).get(f.name, field_default(f))
        flags = f.metadata["flags"] or ("--" + f.name.replace("_", "-"),)
        kwargs: Dict[str, Any] = {"help": f.metadata["help"], "default": default}
        if isinstance(default, bool):
            kwargs["action"] = "store_false" if default else "store_true"
        elif not isinstance(default, list):
            kwargs["type"] = str if default is None else type(default)
        if flags[0].startswith("-"):
            kwargs["dest"] = f.name
        parser.add_argument(*flags, **{**kwargs, **f.metadata["argparse"]})


def field_values(args: argparse.Namespace, cls) -> Dict[str, Any]:
    """The parsed values of `cls`'s option() fields, as keyword arguments of `cls`."""
    return {f.name: getattr(args, f.name) for f in flag_fields(cls)}
