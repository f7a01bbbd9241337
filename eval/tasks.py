"""One eval task (retrieval, zero-shot classification, linear probe) on one dataset with one loaded model:
what `clipforge eval --task` runs once and a suite runs per entry.

    spec = TaskSpec(task="linear_probe", data="wds_vtab-cifar10")   # train split "train", test split "test"
    run, data, extra = run_task(spec, loaded, Runtime(device="cpu", precision="fp32"))

Class names and templates: the spec's (a file / a built-in set), else the dataset's own (CLIP_benchmark's
classnames.txt and zeroshot_classification_templates.txt, an ImageFolder's folder names), else the sorted
distinct label names and the imagenet7 templates.
"""
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from clipforge.eval import api
from clipforge.eval.distributed import comm_for_world, rank_world
from clipforge.eval.errors import EvalOptionError
from clipforge.eval.features import run_linear_probe
from clipforge.eval.sources import EvalSource, open_source
from clipforge.eval.task_options import ProbeConfig, ProbeDataOptions, TaskOptions
from clipforge.eval.templates import DEFAULT_TEMPLATES, load_classnames, load_templates
from clipforge.modeling.eval_options import RECALL_K, EvalOptions

TASKS = ("retrieval", "classification", "linear_probe")
# CLIP_benchmark's names for the same tasks.
PEER_TASKS = {"zeroshot_retrieval": "retrieval", "zeroshot_classification": "classification"}


@dataclass(kw_only=True)
class TaskSpec(TaskOptions, ProbeDataOptions):
    task: str
    data: str
    name: Optional[str] = None  # the JSON's "dataset" (default: the data folder's name)
    recall_k: List[int] = field(default_factory=lambda: list(RECALL_K))
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def __post_init__(self):
        self.task = PEER_TASKS.get(self.task, self.task)
        if self.task not in TASKS:
            raise EvalOptionError(f"task {self.task!r}: choose one of {', '.join(TASKS)} (or zeroshot_retrieval, "
                             "zeroshot_classification)")


@dataclass
class Runtime:
    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int = EvalOptions.batch_size
    workers: int = EvalOptions.workers
    progress: bool = False
    convert_dir: Optional[str] = None  # raw data: convert here and keep it (default: a temp dir)
    feature_cache: Optional[str] = None  # linear probe features
    temps: List[str] = field(default_factory=list)  # temp conversions, removed by cleanup()


def _image_size(preprocess_cfg: Dict[str, Any]) -> int:
    size = preprocess_cfg.get("size", 224)
    return size if isinstance(size, int) else max(size)


def open_data(path: str, split: str, labels: bool, name: Optional[str], loaded, rt: Runtime) -> EvalSource:
    """The dataset at `path`; raw data is converted once (rank 0; every rank then opens the result) at
    >= 256 px (the val transform resizes)."""
    source = open_source(path, split, labels, name)
    if source is not None:
        return source
    rank = rank_world()[0]
    out = None
    if rank == 0:
        target = rt.convert_dir or tempfile.mkdtemp(prefix="clipforge-eval-")
        try:
            out = api.open_eval_data(path, convert_dir=target, image_size=max(256, _image_size(
                loaded.preprocess_cfg))).spec
        except BaseException:
            if not rt.convert_dir:
                shutil.rmtree(target, ignore_errors=True)
            raise
    out = comm_for_world().gather_objects(out)[0]
    if not rt.convert_dir:
        rt.temps.append(out)
    name = name or os.path.basename(os.path.normpath(path.split("{")[0])) or path
    return open_source(out, split, labels, name)


def cleanup(rt: Runtime) -> None:
    if rt.temps and rank_world()[1] > 1:
        torch.distributed.barrier()
    if rank_world()[0] == 0:
        for temp in rt.temps:
            shutil.rmtree(temp, ignore_errors=True)
    rt.temps.clear()


def _classnames(spec: TaskSpec, source: EvalSource) -> Optional[List[str]]:
    return load_classnames(spec.classnames) if spec.classnames else source.classnames


def run_task(spec: TaskSpec, loaded, rt: Runtime) -> Tuple[api.EvalRun, EvalSource, Dict[str, Any]]:
    """-> (the run, the evaluated dataset, what the JSON records beside the metrics)."""
    common = dict(batch_size=rt.batch_size, device=rt.device, precision=rt.precision, workers=rt.workers)
    labels = spec.task != "retrieval"
    source = open_data(spec.data, spec.split, labels, spec.name, loaded, rt)
    extra: Dict[str, Any] = {"data": spec.data}
    if spec.task == "retrieval":
        run = api.run_retrieval(loaded.model, loaded.tokenizer, loaded.transform, source.data, spec.recall_k,
                                progress=rt.progress, **common)
        extra["recall_k"] = spec.recall_k
        return run, source, extra
    names = _classnames(spec, source)
    if spec.task == "classification":
        template_spec = spec.templates or ("dataset" if source.templates else DEFAULT_TEMPLATES)
        templates = source.templates if template_spec == "dataset" else load_templates(template_spec)
        run = api.run_classification(loaded.model, loaded.tokenizer, loaded.transform, source.data, templates,
                                     names, spec.label_key, progress=rt.progress, **common)
        # what decides the classifier: enough to re-run it
        extra.update(templates=template_spec, prompts=templates, classnames_file=spec.classnames,
                     classnames=run.extra["classnames"], label_key=spec.label_key)
        return run, source, extra
    train = open_data(spec.train_data or spec.data, spec.train_split, True, None, loaded, rt)
    val = None
    if spec.val_data or spec.val_split:
        val = open_data(spec.val_data or spec.data, spec.val_split or "val", True, None, loaded, rt)
    run = run_linear_probe(loaded.model, loaded.tokenizer, loaded.transform, train, source, val,
                           spec.val_proportion, names, spec.label_key, spec.probe, cache_dir=rt.feature_cache,
                           **common)
    extra.update(train_data=spec.train_data or spec.data, train_split=spec.train_split, val_data=spec.val_data,
                 val_split=spec.val_split, label_key=spec.label_key, classnames=run.extra["classnames"],
                 probe=run.extra["probe"], val_acc1=run.extra["val_acc1"])
    return run, source, extra
