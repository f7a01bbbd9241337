"""`clipforge eval --suite FILE --model M [--model M2 ...]`: every task of a suite, for every model, in one
process (one process group under torchrun: every rank embeds its share of every dataset).

    root: runs/demo               # relative paths in the tasks start here (--data-root overrides)
    out_dir: runs/demo/eval-suite  # --out-dir overrides
    tasks:
      - {name: shapes, task: classification, data: shards-val, label_key: shape, classnames: raw/classnames.txt}
      - {name: shapes-probe, task: linear_probe, data: shards-val, train_data: shards-train, label_key: shape}

Writes OUT/<model>/<task name>.json (CLIP_benchmark's layout: its `clip_benchmark build OUT/*/*.json` reads
them) and OUT/summary.md + OUT/summary.csv: a row per task (its headline metric), a column per model, the
chance level beside, the average over tasks on the last row. Every entry is checked before any model loads.

An entry with `skip_if_missing: HINT` whose data (data, train_data, val_data) is not there is skipped, not
an error: its row says `skipped`, summary.md and stdout give the reason ("... not found; HINT"), and the
average is over the tasks that ran. `dataset: NAME` sets the JSON's "dataset" (default: the data folder's name).
"""
import csv
import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import yaml

from clipforge.errors import UserError
from clipforge.eval.task_options import ProbeConfig
from clipforge.eval.tasks import TaskSpec

HEADLINE = {"retrieval": "mean_recall@1", "classification": "acc1", "linear_probe": "acc1"}
SPEC_KEYS = {f.name for f in dataclasses.fields(TaskSpec)} - {"probe", "name"}
PROBE_KEYS = {"fewshot_k": "fewshot_k", "fewshot_lr": "lr", "fewshot_epochs": "epochs", "seed": "seed",
              "probe_batch_size": "batch_size"}
SUITE_KEYS = {"name", "metric", "dataset", "skip_if_missing"}
PATH_KEYS = ("data", "train_data", "val_data", "classnames")
DATA_KEYS = ("data", "train_data", "val_data")


@dataclass
class SuiteTask:
    name: str
    metric: str  # the summary's headline
    spec: TaskSpec
    skipped: Optional[str] = None  # why it is not run (skip_if_missing and its data is not there)

    @property
    def dataset(self) -> str:
        return self.spec.name or os.path.basename(os.path.normpath(self.spec.data.split("{")[0])) or self.spec.data


class SuiteError(UserError, ValueError):
    """The suite file is malformed; the message names the file and the entry."""


def _resolve(root: str, value: str) -> str:
    return value if os.path.isabs(value) or "://" in value else os.path.join(root, value)


def _exists(path: str) -> bool:
    if "://" in path:
        return True
    if "{" in path:  # a brace pattern: its folder
        return os.path.isdir(os.path.dirname(path.split("{")[0]) or ".")
    return os.path.exists(path)


def load_suite(path: str, data_root: str = None) -> Tuple[List[SuiteTask], Dict[str, Any]]:
    """-> (the tasks, the file's top-level settings)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SuiteError(f"{path}: cannot read the suite ({e})") from None
    tasks = doc.get("tasks") if isinstance(doc, dict) else None
    if not isinstance(tasks, list) or not tasks:
        raise SuiteError(f"{path}: expected a mapping with a non-empty 'tasks' list")
    root = data_root or doc.get("root") or "."
    out, names = [], set()
    for n, entry in enumerate(tasks):
        where = f"{path}: tasks[{n}]"
        if not isinstance(entry, dict) or "task" not in entry or "data" not in entry:
            raise SuiteError(f"{where}: each task needs at least 'task' and 'data'")
        entry = dict(entry)
        name = str(entry.pop("name", f"{entry['task']}-{os.path.basename(str(entry['data']))}"))
        if not re.fullmatch(r"[A-Za-z0-9._+-]+", name) or name in names:
            raise SuiteError(f"{where}: name {name!r} must be unique and made of letters, digits, . _ + -")
        names.add(name)
        metric = entry.pop("metric", None)
        hint = entry.pop("skip_if_missing", None)
        if "dataset" in entry:
            entry["name"] = str(entry.pop("dataset"))
        probe = {PROBE_KEYS[k]: entry.pop(k) for k in list(entry) if k in PROBE_KEYS}
        unknown = sorted(set(entry) - SPEC_KEYS - {"name"})
        if unknown:
            raise SuiteError(f"{where} ({name}): unknown key(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(SPEC_KEYS | set(PROBE_KEYS) | SUITE_KEYS))}")
        for key in PATH_KEYS:
            if entry.get(key):
                entry[key] = _resolve(root, str(entry[key]))
        if entry.get("templates") and os.path.exists(_resolve(root, entry["templates"])):
            entry["templates"] = _resolve(root, entry["templates"])
        try:
            spec = TaskSpec(**entry, probe=ProbeConfig(**probe))
        except (TypeError, ValueError) as e:
            raise SuiteError(f"{where} ({name}): {e}") from None
        skipped = None
        if hint:
            missing = [entry[k] for k in DATA_KEYS if entry.get(k) and not _exists(entry[k])]
            if missing:
                skipped = f"{missing[0]} not found" + ("" if hint is True else f"; {hint}")
        out.append(SuiteTask(name, metric or HEADLINE[spec.task], spec, skipped))
    return out, doc


def _model_columns(models: List[str]) -> List[str]:
    """A short, unique column name per --model (its folder / file name)."""
    cols = []
    for m in models:
        base = os.path.basename(os.path.normpath(m.replace("local-dir:", ""))) or m
        cols.append(base if base not in cols else f"{base}-{len(cols)}")
    return cols


def summary_rows(tasks: List[SuiteTask], results: Dict[str, Dict[str, Any]], columns: List[str]) -> List[List[str]]:
    """[header, one row per task, average]; values in %, n/a where a metric is missing or NaN, `skipped`
    for a skipped task (the average is over the tasks that ran)."""
    def pct(x):
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"
    rows = [["task", "dataset", "metric", "chance", *columns]]
    sums = [[] for _ in columns]
    ran = [t for t in tasks if not t.skipped]
    for t in tasks:
        if t.skipped:
            rows.append([t.name, t.dataset, t.metric, "n/a", *["skipped"] * len(columns)])
            continue
        first = results[columns[0]][t.name]
        values = [results[c][t.name]["metrics"].get(t.metric) for c in columns]
        for acc, v in zip(sums, values):
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                acc.append(v)
        rows.append([t.name, first["dataset"], t.metric, pct(first["clipforge"]["chance"].get(t.metric)),
                     *[pct(v) for v in values]])
    chance = [float(r[3]) for r, t in zip(rows[1:], tasks) if r[3] != "n/a" and not t.skipped]
    label = f"{len(ran)} tasks" + (f" ({len(tasks) - len(ran)} skipped)" if len(ran) < len(tasks) else "")
    rows.append(["average", "", label, f"{sum(chance) / len(chance):.2f}" if chance else "n/a",
                 *[pct(sum(s) / len(s)) if ran and len(s) == len(ran) else "n/a" for s in sums]])
    return rows


def write_summary(out_dir: str, rows: List[List[str]], tasks: List[SuiteTask] = ()) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "summary.csv"), "w", newline="") as f:
        csv.writer(f).writerows(rows)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    skipped = [f"- `{t.name}`: {t.skipped}" for t in tasks if t.skipped]
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("Values in %: each task's headline metric per model; chance = a random guess.\n\n")
        f.write("\n".join(lines) + "\n")
        if skipped:
            f.write("\nSkipped (the average leaves them out):\n" + "\n".join(skipped) + "\n")


def run_suite_cli(args) -> int:
    from clipforge.eval import report
    from clipforge.eval.cli import _quiet, runtime
    from clipforge.eval.distributed import init_from_env, rank_world
    from clipforge.modeling.load_model import load_model
    from clipforge.eval.tasks import cleanup, run_task
    tasks, doc = load_suite(args.suite, args.data_root)
    out_dir = args.out_dir or doc.get("out_dir") or "eval-suite"
    init_from_env()
    rank, world = rank_world()
    rt = runtime(args, args.device)
    rt.feature_cache = args.feature_cache or os.path.join(out_dir, "features")
    columns = _model_columns(args.model)
    results: Dict[str, Dict[str, Any]] = {}
    try:
        for model, column in zip(args.model, columns):
            with _quiet(args.quiet):
                loaded = load_model(model, args.model_config, args.pretrained)
            loaded.model.to(rt.device)
            results[column] = {}
            for task in tasks:
                if task.skipped:
                    continue
                name, spec = task.name, task.spec
                run, source, extra = run_task(spec, loaded, rt)
                extra.update(precision=rt.precision, world_size=world, suite=args.suite, task_name=name)
                result = report.result_json(run, source.name, loaded.name, loaded.pretrained, extra)
                results[column][name] = result
                if rank == 0:
                    report.write_json(os.path.join(out_dir, column, f"{name}.json"), result)
                    if not args.quiet:
                        print(report.table(run, f"{name}: {run.task} of {loaded.name} on {source.name}"),
                              file=sys.stderr, flush=True)
    finally:
        cleanup(rt)
    if rank == 0:
        rows = summary_rows(tasks, results, columns)
        write_summary(out_dir, rows, tasks)
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        print("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows))
        for task in tasks:
            if task.skipped:
                print(f"skipped {task.name}: {task.skipped}")
        ran = sum(not t.skipped for t in tasks)
        print(f"wrote {out_dir}/summary.md, summary.csv and {ran * len(columns)} JSONs")
    return 0
