"""`clipforge <command>`: one entry point; each command's module is imported only when used,
so `clipforge launch` starts without torch (login nodes)."""
import importlib
import sys

# command -> (module with main(argv) -> int, one-line summary)
COMMANDS = {
    "convert": ("clipforge.data_pipeline.convert.cli", "raw images + captions (folder, tables, COCO/Flickr json, URLs) -> tar shards"),
    "verify": ("clipforge.data_pipeline.verify", "re-read a shard dataset and check it against its manifest"),
    "curate": ("clipforge.data_pipeline.curate.cli", "filter a shard dataset (words, size, lists, scores, near-duplicates) -> a new one"),
    "pretrain": ("clipforge.pretrain.cli", "train one rank (run under torchrun/srun; alone = world size 1)"),
    "launch": ("clipforge.launch.commands", "run pretrain under torchrun (local) or as a slurm job"),
    "embed": ("clipforge.pretrain.embed", "a distillation teacher's image + caption embeddings of shards, stored beside them"),
    "eval": ("clipforge.eval.cli", "zero-shot retrieval / classification, linear probe, suites; CLIP_benchmark JSON"),
    "export": ("clipforge.modeling.soup", "WiSE-FT interpolation / model soups of open_clip exports -> a new local-dir"),
    "demo": ("clipforge.launch.demo", "the whole pipeline on a bundled synthetic dataset, on CPU, in minutes"),
}

USAGE = """usage: clipforge <command> [options]   (clipforge --version)

commands:
{commands}

examples:
  clipforge demo                # writes runs/demo/: raw/, shards-train/, shards-val/, run/, results
  clipforge convert runs/demo/raw/captions.csv --out shards/ --image-size 256
  clipforge launch local --config configs/demo-cpu.yaml --nproc 2 train.steps=50 train.run_dir=runs/demo/steps50
  clipforge eval --model runs/demo/run --data runs/demo/shards-val --task retrieval

`clipforge <command> --help` describes each command; each is also `python -m <package> ...`.
"""


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        width = max(map(len, COMMANDS))
        lines = "\n".join(f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items())
        print(USAGE.format(commands=lines))
        return 0
    if argv[0] in ("-V", "--version"):
        from clipforge.pretrain.rundir import clipforge_version, git_commit
        commit = git_commit()
        print(f"clipforge {clipforge_version()}" + (f" (git {commit})" if commit else ""))
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(f"clipforge: unknown command {command!r}; choose one of {', '.join(COMMANDS)} (see clipforge --help)",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
