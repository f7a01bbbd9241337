"""Checks of what a run config points at (data, model, text tower), before any process starts.

Torch-free and fast (well under a second): `clipforge launch local|slurm` runs them before torchrun /
sbatch, `clipforge pretrain` before DeepSpeed is imported. They only look at the file system: the
loader still checks every shard when it opens the dataset, but a mistyped path must not cost a
DeepSpeed start-up (and, under slurm, a queue wait) to be found.
"""
import importlib.util
import json
import os
from typing import List, Optional, Sequence

from braceexpand import braceexpand

from clipforge.modeling.config import ConfigError, RunConfig, suggest_key
from clipforge.modeling.stages import resolve_stages
from clipforge.pretrain.evaluator import check_evaluator

DATASET_MARKERS = ("manifest.json", "sizes.json")


def _is_remote(spec: str) -> bool:
    # fsspec URLs (s3://, hf://, https://) are checked by the loader when it opens them
    return "://" in spec


def check_dataset(key: str, spec: str) -> None:
    """A shard dataset dir (manifest.json or sizes.json), a .tar or a brace pattern of existing tars."""
    if _is_remote(spec):
        return
    if os.path.isdir(spec):
        if not any(os.path.isfile(os.path.join(spec, m)) for m in DATASET_MARKERS):
            raise ConfigError(f"{key}={spec!r}: not a shard dataset (no manifest.json or sizes.json); "
                              "give a `clipforge convert --out` folder or a tar brace pattern")
        return
    paths: List[str] = list(braceexpand(spec))
    if not paths or not all(p.endswith(".tar") for p in paths):
        raise ConfigError(f"{key}={spec!r}: no such shard dataset folder (give a `clipforge convert --out` "
                          "folder, a .tar or a brace pattern of tars)")
    # the first and last shard stand for the pattern: stat-ing 100k shards on a cluster FS is not fast
    for path in dict.fromkeys((paths[0], paths[-1])):
        if not os.path.isfile(path):
            raise ConfigError(f"{key}={spec!r}: shard {path} not found")


def check_hard_negatives(key: str, spec: str, k: int) -> None:
    """data.hard_negatives reads KEY.neg.txt: a local dataset folder whose manifest names none is refused here
    (the loader checks remote ones, and tars without a manifest sample by sample: missing_hard_negatives)."""
    manifest = os.path.join(spec, "manifest.json")
    if k == 0 or _is_remote(spec) or not os.path.isfile(manifest):
        return
    try:
        with open(manifest, encoding="utf-8") as handle:
            listed = json.load(handle).get("hard_negatives")
    except (OSError, ValueError, AttributeError):
        return  # an unreadable manifest is the loader's to name, with its reason
    if listed is None:
        raise ConfigError(f"data.hard_negatives={k}: {key}={spec!r} has no hard negatives (its manifest names no "
                          "KEY.neg.txt); convert it with --neg-caption-col COLUMN, or set data.hard_negatives=0")


def _open_clip_configs() -> Optional[str]:
    """open_clip's model_configs/ folder, found without importing it (an import pulls in torch); None when
    open_clip is not installed here (a bare login node)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(list(spec.submodule_search_locations)[0], "model_configs")
    return folder if os.path.isdir(folder) else None


def open_clip_model_names() -> Optional[List[str]]:
    """open_clip's built-in model names (None when open_clip is not installed here)."""
    folder = _open_clip_configs()
    if folder is None:
        return None
    return sorted(name[:-5] for name in os.listdir(folder) if name.endswith(".json"))


def check_model(name: str) -> None:
    """model.name: a model-config JSON that exists, or an open_clip built-in name."""
    if name.endswith(".json") or os.path.sep in name:
        if not os.path.isfile(name):
            raise ConfigError(f"model.name={name!r}: no such model-config JSON file "
                              "(relative paths are relative to the directory you launch from)")
        return
    names = open_clip_model_names()
    if names is not None and name not in names:
        close = [n for n in names if n.lower().replace("/", "-") == name.lower().replace("/", "-")]
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"model.name={name!r}: not an open_clip model; {hint}give a built-in name "
                          "(e.g. ViT-B-32, see open_clip.list_models()) or a path to a model-config JSON")


def check_stages(cfg: RunConfig) -> None:
    """train.stages against model.name's config (patch size, towers), as the model factory resolves them at start;
    read as JSON (model-config files, an export's open_clip_config.json, open_clip's built-in ones)."""
    if not cfg.train.stages:
        return
    name, folder = cfg.model.name, _open_clip_configs()
    path = name if name.endswith(".json") or os.path.sep in name else \
        os.path.join(folder, f"{name}.json") if folder else None
    if path is None:
        return
    with open(path, encoding="utf-8") as handle:
        model_cfg = json.load(handle)
    resolve_stages(cfg.train.stages, model_cfg.get("model_cfg", model_cfg), cfg.model)


def preflight(cfg: RunConfig) -> None:
    """Every path check of the config, and that the periodic eval it names (eval.evaluator) exists; raises
    ConfigError (one line) at the first problem."""
    for i, source in enumerate(cfg.data.sources):
        check_dataset(f"data.sources[{i}].path", source.path)
        check_hard_negatives(f"data.sources[{i}].path", source.path, cfg.data.hard_negatives)
    if cfg.data.val_path:
        check_dataset("data.val_path", cfg.data.val_path)
    check_model(cfg.model.name)   # model.hf_text_dir is checked by modeling.config_checks.validate
    check_stages(cfg)
    check_evaluator(cfg.eval.evaluator)


def unknown_flag_message(extras: Sequence[str], argv: Sequence[str]) -> Optional[str]:
    """argparse's leftovers -> one line; `--lr 1e-4` -> "did you mean optim.lr=1e-4?" (None if no flag)."""
    flags = [e for e in extras if e.startswith("-")]
    if not flags:
        return None
    flag, _, value = flags[0].partition("=")
    if not value:
        following = list(argv)[list(argv).index(flags[0]) + 1:] if flags[0] in argv else []
        value = following[0] if following and not following[0].startswith("-") else "VALUE"
    hint = suggest_key(flag, value)
    return f"unknown option {flag}" + (f"; config keys are given as overrides: did you mean {hint}?" if hint
                                       else " (see --help)")
