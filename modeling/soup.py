"""`clipforge export`: weight-space interpolation (WiSE-FT) and averaging (model soups) of open_clip
local-dir exports, written as a new local-dir that open_clip, `clipforge eval` and CLIP_benchmark load.

    theta = (1 - alpha) * theta_A + alpha * theta_B            (--interpolate A B --alpha)
    theta = sum_i w_i * theta_i / sum_i w_i                    (--soup A:w_A B:w_B ...)

Only the same architecture can be averaged: the models' `model_cfg` must be equal and every tensor must
have the same name, shape and dtype, else the command refuses with one line naming the first difference.
Floating tensors are averaged in float64 and cast back to their dtype (alpha 0 or 1 gives A or B bit for
bit); integer tensors (BatchNorm's num_batches_tracked, HF position ids) are the heaviest model's (the
first of equals).
The first model's other files (its HF tokenizer) are copied beside the weights.
"""
import argparse
import json
import os
import shutil
import sys
from typing import Dict, List, Sequence, Tuple

from clipforge.atomic import atomic_path, write_atomic
from clipforge.errors import UserError

WEIGHTS, CONFIG = "open_clip_model.safetensors", "open_clip_config.json"

EXAMPLES = """examples:
  clipforge export --interpolate runs/demo/run runs/demo/run --alpha 0.5 --out runs/demo/wise-0.5
  clipforge export --soup runs/demo/run:2 runs/demo/run:1 --out runs/demo/soup"""


class SoupError(UserError, ValueError):
    """Models that cannot be averaged, or an unreadable model folder."""


def local_dir(path: str) -> str:
    """A training run dir (its export/) or an open_clip local-dir export."""
    for folder in (os.path.join(path, "export"), path):
        if os.path.isfile(os.path.join(folder, WEIGHTS)) and os.path.isfile(os.path.join(folder, CONFIG)):
            return folder
    raise SoupError(f"{path}: no {CONFIG} + {WEIGHTS} here or in {path}/export (give a run dir or a local-dir export)")


def read_model(folder: str) -> Tuple[dict, Dict]:
    """The config and the tensors of a local-dir export (see local_dir)."""
    from safetensors.torch import load_file
    with open(os.path.join(folder, CONFIG)) as f:
        config = json.load(f)
    return config, load_file(os.path.join(folder, WEIGHTS))


def check_same_architecture(paths: Sequence[str], configs: List[dict], states: List[Dict]) -> None:
    for path, config, state in zip(paths[1:], configs[1:], states[1:]):
        if config.get("model_cfg") != configs[0].get("model_cfg"):
            raise SoupError(f"{path}: its model_cfg differs from {paths[0]}'s: only one architecture can be averaged")
        for name in sorted(set(states[0]) | set(state)):
            a, b = states[0].get(name), state.get(name)
            if a is None or b is None or a.shape != b.shape or a.dtype != b.dtype:
                have = lambda t: "missing" if t is None else f"{tuple(t.shape)} {t.dtype}"  # noqa: E731
                raise SoupError(f"{path}: tensor {name} is {have(b)}, in {paths[0]} {have(a)}: not the same architecture")


def weighted_average(states: List[Dict], weights: Sequence[float]) -> Dict:
    import torch
    total = float(sum(weights))
    heaviest = states[max(range(len(weights)), key=lambda i: (weights[i], -i))]
    out = {}
    for name, first in states[0].items():
        if not first.is_floating_point():
            out[name] = heaviest[name].clone()
            continue
        acc = torch.zeros(first.shape, dtype=torch.float64)
        for state, weight in zip(states, weights):
            if weight != 0:  # 0 * inf would be nan: a model with weight 0 contributes nothing at all
                acc += (weight / total) * state[name].double()
        out[name] = acc.to(first.dtype)
    return out


def write_soup(paths: Sequence[str], weights: Sequence[float], out_dir: str) -> str:
    from safetensors.torch import save_file
    if len(paths) < 2:
        raise SoupError("give at least two models")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise SoupError(f"weights {list(weights)}: each must be >= 0 and their sum > 0")
    folders = [local_dir(p) for p in paths]
    models = [read_model(folder) for folder in folders]
    configs, states = [m[0] for m in models], [m[1] for m in models]
    check_same_architecture(paths, configs, states)
    soup = weighted_average(states, weights)
    os.makedirs(out_dir, exist_ok=True)
    for name in sorted(os.listdir(folders[0])):  # the HF tokenizer's files, when the text tower has one
        if name not in (WEIGHTS, CONFIG) and os.path.isfile(os.path.join(folders[0], name)):
            shutil.copy(os.path.join(folders[0], name), os.path.join(out_dir, name))
    with atomic_path(os.path.join(out_dir, WEIGHTS)) as tmp:
        save_file({k: v.contiguous() for k, v in soup.items()}, tmp)
    config = dict(configs[0], clipforge_soup={"models": [os.path.abspath(p) for p in paths], "weights": list(weights)})
    write_atomic(os.path.join(out_dir, CONFIG), json.dumps(config, indent=2))
    return out_dir


def _model_weight(arg: str) -> Tuple[str, float]:
    path, sep, weight = arg.rpartition(":")
    try:
        return (path, float(weight)) if sep else (arg, 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{arg!r}: expected MODEL or MODEL:WEIGHT (a number)") from None


def parse_args(argv: List[str]):
    parser = argparse.ArgumentParser(
        prog="clipforge export", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="WiSE-FT interpolation or a model soup of open_clip local-dir exports (or run dirs) "
                    "of one architecture -> a new local-dir.", epilog=EXAMPLES)
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--interpolate", nargs=2, metavar=("A", "B"), help="(1 - alpha) * A + alpha * B")
    how.add_argument("--soup", nargs="+", type=_model_weight, metavar="MODEL[:WEIGHT]",
                     help="the weighted mean of the models (weight 1 when left out)")
    parser.add_argument("--alpha", type=float, default=0.5, help="with --interpolate: B's share, 0..1 (0.5)")
    parser.add_argument("--out", required=True, help="the new local-dir (open_clip_config.json + weights)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.interpolate:
            if not 0.0 <= args.alpha <= 1.0:
                raise SoupError(f"--alpha {args.alpha}: must be in [0, 1]")
            paths, weights = list(args.interpolate), [1.0 - args.alpha, args.alpha]
        else:
            paths, weights = [p for p, _ in args.soup], [w for _, w in args.soup]
        out = write_soup(paths, weights, args.out)
    except UserError as err:  # anything else is a bug: its traceback, exit 1
        print(f"clipforge export: error: {err}", file=sys.stderr)
        return 2
    print(f"clipforge export: wrote {out} (open_clip local-dir: {', '.join(f'{w:g} x {p}' for p, w in zip(paths, weights))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
