"""`clipforge demo`: the whole pipeline on the bundled synthetic dataset, on CPU, in minutes.

render raw files -> `clipforge convert` (train + held-out split) -> `clipforge launch local`
(torchrun, 2 ranks, DeepSpeed ZeRO-2, gloo) -> `clipforge eval` retrieval + classification on the
held-out split -> a results table with chance levels. Every stage is the real CLI in its own
process, exactly what a user would type; this module only strings them together (and imports no torch).
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from clipforge.data_pipeline.synthetic import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo-cpu.yaml"
TINY_MODEL = REPO / "configs" / "models" / "tiny-vit.json"

EXAMPLES = """examples:
  clipforge demo                                  # full size: 4,000 training scenes, 500 held out
  clipforge demo --out /tmp/demo --train-images 800 --val-images 200 train.epochs=2
"""


def _run(stage: str, argv: list[str]) -> float:
    print(f"\n=== {stage}: {' '.join(argv[2:])}", flush=True)
    start = time.time()
    result = subprocess.run(argv)
    if result.returncode != 0:
        raise SystemExit(f"clipforge demo: the {stage} stage failed (exit code {result.returncode}); "
                         "its output is above")
    return time.time() - start


def _loss_curve(metrics_file: Path) -> tuple[float, float]:
    losses = [json.loads(line)["loss"] for line in metrics_file.read_text().splitlines() if '"loss"' in line]
    return losses[0], losses[-1]


# CLIP_benchmark's names: "image retrieval" = text->image queries, "text retrieval" = image->text.
DIRECTION = {"image": "text->image", "text": "image->text"}


def _row(name: str, value: float, chance: float) -> tuple[str, str, str, str]:
    return name, f"{100 * value:.2f}", f"{100 * chance:.2f}", f"{value / chance:.1f}"


def results_table(retrieval: dict, classification: dict) -> str:
    """Each metric beside the chance level that `clipforge eval` computed for the same data."""
    rows = [("metric", "value %", "chance %", "x chance")]
    for result in (retrieval, classification):
        chance = result["clipforge"]["chance"]
        prefix = "classification " if result is classification else ""
        for name, value in result["metrics"].items():
            # acc5 is null (n/a) with fewer than 5 classes, as in CLIP_benchmark; mean recalls are left out.
            if value is None or name.startswith("mean_recall"):
                continue
            direction = f" ({DIRECTION[name.split('_')[0]]})" if not prefix else ""
            rows.append(_row(f"{prefix}{name}{direction}", value, chance[name]))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="clipforge demo", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="output folder (raw data, shards, run, results)")
    parser.add_argument("--train-images", type=int, default=4000)
    parser.add_argument("--val-images", type=int, default=500)
    parser.add_argument("--nproc", type=int, default=2, help="training processes (ranks)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides for training, e.g. train.epochs=2")
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    python = [sys.executable, "-m"]
    timings = {}
    start = time.time()
    print(f"=== rendering {args.train_images} + {args.val_images} synthetic scenes into {out / 'raw'}", flush=True)
    captions = make_synthetic_dataset(str(out / "raw"), args.train_images, args.val_images)
    timings["render"] = time.time() - start

    for split in ("train", "val"):
        timings[f"convert {split}"] = _run(f"convert {split}", python + [
            "data_pipeline", "convert", str(captions), "--format", "csv", "--out", str(out / f"shards-{split}"),
            "--include-list", str(out / "raw" / "splits" / f"{split}.txt"), "--image-size", "64",
            "--resize-mode", "center_crop", "--samples-per-shard", "500", "--keep-cols", "shape,color"])

    run_dir = out / "run"
    timings["pretrain"] = _run("pretrain", python + [
        "launch", "local", "--config", str(DEMO_CONFIG), "--nproc", str(args.nproc),
        f"train.run_dir={run_dir}", f"model.name={TINY_MODEL}",
        f"data.sources=[{{path: '{out / 'shards-train'}'}}]", f"data.val_path={out / 'shards-val'}",
        *args.overrides])

    common = ["eval", "--model", str(run_dir), "--data", str(out / "shards-val")]
    timings["eval retrieval"] = _run("eval retrieval", python + common + [
        "--task", "retrieval", "--out", str(out / "retrieval.json")])
    timings["eval classification"] = _run("eval classification", python + common + [
        "--task", "classification", "--label-key", "shape", "--classnames", str(out / "raw" / "classnames.txt"),
        "--out", str(out / "classification.json")])

    retrieval = json.loads((out / "retrieval.json").read_text())
    classification = json.loads((out / "classification.json").read_text())
    num_classes = classification["clipforge"]["counts"]["classes"]
    first, last = _loss_curve(run_dir / "metrics.jsonl")
    print("\n=== clipforge demo results (held-out split: "
          f"{args.val_images} images x 2 captions; {num_classes}-way shape classification)\n")
    print(results_table(retrieval, classification))
    print(f"\ntraining loss: first logged {first:.3f} -> last logged {last:.3f}")
    print("stage times: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())
          + f"; total {time.time() - start:.0f} s")
    print(f"outputs: {out} (run dir {run_dir}: config.yaml, metrics.jsonl, tensorboard/, model.pt, export/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
