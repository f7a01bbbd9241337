"""The one reading of a run's periodic eval, RUN/eval/stepN.json (torch-free, stdlib only): the trainer's loss.png
(pretrain/metrics.py) and `clipforge eval --all-checkpoints` without --data (eval/curve.py) both draw from it.

Two layouts are read: `clipforge eval --out`'s (CLIP_benchmark's, chance levels and the step under "clipforge"),
which the trainer writes since 2026-12-02, and the older {"step", "dataset", "metrics", "chance"}. Only files
named stepN.json count: RUN/eval also holds other `clipforge eval --out` results (the recipes' test.json) and
the curve/ folder, which are not points of the periodic eval.
"""
import glob
import json
import os
import re
from typing import Dict, List, NamedTuple

STEP_JSON = re.compile(r"^step(\d+)\.json$")


class EvalPoint(NamedTuple):
    step: int
    metrics: Dict[str, float]
    chance: Dict[str, float]   # empty for old files written without chance levels


def periodic_eval(run_dir: str) -> List[EvalPoint]:
    """RUN/eval/stepN.json in step order (the step is the name's: pretrain/checkpoint.tag_for writes it)."""
    points = []
    for path in glob.glob(os.path.join(run_dir, "eval", "step*.json")):
        match = STEP_JSON.match(os.path.basename(path))
        if match:
            with open(path) as f:
                row = json.load(f)
            chance = row["clipforge"]["chance"] if "clipforge" in row else row.get("chance", {})
            points.append(EvalPoint(int(match.group(1)), row["metrics"], chance))
    return sorted(points, key=lambda point: point.step)
