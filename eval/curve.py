"""`clipforge eval --model RUN --all-checkpoints`: a run's metrics over training, as CSV + PNG.

With --data (and --task): every kept checkpoint of RUN (RUN/checkpoints/stepN, consolidated from any ZeRO
stage like `--model RUN/checkpoints/stepN`) is evaluated in turn, every rank taking part, one
CLIP_benchmark JSON each (OUT_DIR/stepN.json). Without --data: the curve of the trainer's own periodic
eval (RUN/eval/stepN.json, the data.val_path it named), nothing re-evaluated. Either way OUT_DIR (default
RUN/eval/curve) gets curve.csv (step, then one column per metric) and curve.png.
"""
import csv
import glob
import os
import re
from typing import Dict, List, Tuple

from clipforge.eval.errors import EvalDataError
from clipforge.modeling.eval_results import periodic_eval

STEP = re.compile(r"step(\d+)$")
Curve = List[Tuple[int, Dict[str, float]]]


def kept_checkpoints(run_dir: str) -> List[Tuple[int, str]]:
    """[(step, RUN/checkpoints/stepN)] in step order: the folders a finished save left (no .tmp-)."""
    found = []
    for path in glob.glob(os.path.join(run_dir, "checkpoints", "step*")):
        match = STEP.search(os.path.basename(path))
        if match and os.path.isdir(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def periodic_curve(run_dir: str) -> Curve:
    """The trainer's RUN/eval/stepN.json (both layouts: `clipforge eval --out`'s, and the older one)."""
    return [(point.step, point.metrics) for point in periodic_eval(run_dir)]


def write_curve(curve: Curve, out_dir: str, title: str) -> Tuple[str, str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clipforge.atomic import atomic_path
    os.makedirs(out_dir, exist_ok=True)
    keys = sorted({k for _, metrics in curve for k in metrics})
    csv_path, png_path = os.path.join(out_dir, "curve.csv"), os.path.join(out_dir, "curve.png")
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step"] + keys)
        for step, metrics in curve:
            writer.writerow([step] + [metrics.get(k, "") for k in keys])
    fig, ax = plt.subplots(figsize=(8, 4))
    for key in [k for k in keys if k.startswith("mean_") or k in ("acc1", "mean_per_class_recall")] or keys:
        ax.plot([s for s, _ in curve], [m.get(key) for _, m in curve], marker="o", label=key)
    ax.set(xlabel="step", ylabel="metric", title=title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize=8)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return csv_path, png_path


def evaluate_checkpoints(args, evaluate_one) -> Curve:
    """evaluate_one(model_spec, out_json) -> metrics (eval.cli's one-model path), for each kept checkpoint."""
    checkpoints = kept_checkpoints(args.model)
    if not checkpoints:
        raise EvalDataError(f"--model {args.model}: no kept checkpoints in {args.model}/checkpoints "
                            "(--all-checkpoints needs a run dir that saved some)")
    return [(step, evaluate_one(path, os.path.join(args.curve_dir, f"step{step:08d}.json")))
            for step, path in checkpoints]


def run_curve(args, evaluate_one) -> int:
    from clipforge.eval.distributed import rank_world
    args.curve_dir = args.out_dir or os.path.join(args.model, "eval", "curve")
    if args.data:
        curve = evaluate_checkpoints(args, evaluate_one)
    else:
        curve = periodic_curve(args.model)
        if not curve:
            raise EvalDataError(f"--model {args.model}: no periodic eval in {args.model}/eval (give --data and "
                                "--task to evaluate its checkpoints instead)")
    if rank_world()[0] == 0:
        csv_path, png_path = write_curve(curve, args.curve_dir, f"{os.path.basename(os.path.abspath(args.model))}"
                                         f" over training ({len(curve)} points)")
        print(f"wrote {csv_path} and {png_path}")
    return 0
