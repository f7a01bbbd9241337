"""`clipforge eval --suite`: the shipped demo suite on a demo-shaped folder (seconds, tiny models): one
CLIP_benchmark JSON per task and model, equal to the single-task CLI's; a summary (markdown + CSV) with a
row per task, a column per model, chance beside, the average last; CLIP_benchmark's own `build` reads the
JSONs; a malformed suite is one line naming the entry."""
import csv
import json
import os
import subprocess
import sys

import open_clip
import pytest
import torch

from data_pipeline.convert.api import convert
from data_pipeline.synthetic import make_synthetic_dataset
from eval.cli import main
from eval.suite import SuiteError, load_suite

from .test_clip_benchmark_parity import PEER, REPO

SUITE = REPO / "configs" / "eval" / "demo.yaml"
TASKS = ["retrieval", "shape-zeroshot", "colour-zeroshot", "shape-probe", "colour-probe"]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    """What `clipforge demo` writes (raw/, shards-train/, shards-val/), at test size."""
    root = tmp_path_factory.mktemp("demo")
    captions = make_synthetic_dataset(str(root / "raw"), num_train=60, num_val=30, size=64, seed=4)
    for split in ("train", "val"):
        convert([str(captions)], str(root / f"shards-{split}"), fmt="csv", image_size=64, resize_mode="center_crop",
                include_list=str(root / "raw" / "splits" / f"{split}.txt"), keep_cols=["shape", "color"],
                progress=False)
    return root


@pytest.fixture(scope="module")
def suite_run(demo_root, tiny_model, tmp_path_factory):
    root, _ = tiny_model
    other = tmp_path_factory.mktemp("other")
    torch.manual_seed(7)
    torch.save(open_clip.create_model("tiny-vit").state_dict(), other / "model.pt")
    out = tmp_path_factory.mktemp("suite-out")
    rc = main(["--suite", str(SUITE), "--data-root", str(demo_root), "--out-dir", str(out), "--model",
               str(root / "export"), "--model", str(other / "model.pt"), "--model-config",
               str(root / "export" / "open_clip_config.json"), "--quiet", "--batch-size", "16",
               "--fewshot-epochs", "3"])
    assert rc == 0
    return out


def test_one_json_per_task_and_model(suite_run):
    assert sorted(os.listdir(suite_run)) == ["export", "features", "model.pt", "summary.csv", "summary.md"]
    for model in ("export", "model.pt"):
        assert sorted(os.listdir(suite_run / model)) == sorted(f"{t}.json" for t in TASKS)
    tasks = {t: json.loads((suite_run / "export" / f"{t}.json").read_text())["task"] for t in TASKS}
    assert tasks == {"retrieval": "zeroshot_retrieval", "shape-zeroshot": "zeroshot_classification",
                     "colour-zeroshot": "zeroshot_classification", "shape-probe": "linear_probe",
                     "colour-probe": "linear_probe"}


def test_suite_json_equals_the_single_task_cli(suite_run, demo_root, tiny_model, tmp_path):
    root, _ = tiny_model
    single = tmp_path / "one.json"
    assert main(["--model", str(root / "export"), "--data", str(demo_root / "shards-val"), "--task",
                 "classification", "--label-key", "shape", "--classnames", str(demo_root / "raw" / "classnames.txt"),
                 "--templates", "simple", "--out", str(single), "--quiet", "--batch-size", "16"]) == 0
    suite = json.loads((suite_run / "export" / "shape-zeroshot.json").read_text())
    assert suite["metrics"] == json.loads(single.read_text())["metrics"]
    assert suite["clipforge"]["task_name"] == "shape-zeroshot"


def test_summary_rows_columns_chance_and_average(suite_run):
    rows = list(csv.reader(open(suite_run / "summary.csv")))
    assert rows[0] == ["task", "dataset", "metric", "chance", "export", "model.pt"]
    assert [r[0] for r in rows[1:]] == TASKS + ["average"]
    assert [r[2] for r in rows[1:-1]] == ["mean_recall@1", "acc1", "acc1", "acc1", "acc1"]
    assert rows[2][3] == "25.00"  # 4 shapes
    for col in (4, 5):
        for task, row in zip(TASKS, rows[1:-1]):
            result = json.loads((suite_run / rows[0][col] / f"{task}.json").read_text())
            assert row[col] == f"{100 * result['metrics'][row[2]]:.2f}"
        values = [json.loads((suite_run / rows[0][col] / f"{t}.json").read_text())["metrics"][r[2]]
                  for t, r in zip(TASKS, rows[1:-1])]
        assert rows[-1][col] == f"{100 * sum(values) / len(values):.2f}"
    md = (suite_run / "summary.md").read_text()
    assert "| task | dataset | metric | chance | export | model.pt |" in md and "| average |" in md


def test_clip_benchmark_build_reads_the_jsons(suite_run, tmp_path):
    if not (PEER / "clip_benchmark").is_dir():
        pytest.skip(f"CLIP_benchmark not installed at {PEER}")
    files = sorted(str(p) for p in suite_run.glob("*/*.json"))
    # the captioning metrics need pycocoevalcap (not installed, not used by build): an empty stand-in
    code = ("import sys, types; sys.modules['clip_benchmark.metrics.captioning'] = types.ModuleType('c'); "
            "from clip_benchmark.cli import main_build; "
            "main_build(types.SimpleNamespace(files=sys.argv[2:], output=sys.argv[1]))")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{PEER}"}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "b.csv"), *files], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "b.csv")))
    assert len(rows) == 10
    probe = next(r for r in rows if r["task"] == "linear_probe")
    assert {"lp_acc1", "acc1", "weight_decay", "model_fullname"} <= set(probe)


@pytest.mark.parametrize("text, message", [
    ("tasks: []", "non-empty 'tasks' list"),
    ("tasks: [{task: retrieval}]", r"tasks\[0\]: each task needs at least 'task' and 'data'"),
    ("tasks: [{task: retrieval, data: x, recal_k: [1]}]", r"tasks\[0\] \(retrieval-x\): unknown key\(s\) recal_k"),
    ("tasks: [{task: ranking, data: x}]", "task 'ranking': choose one of"),
    ("tasks: [{name: a, task: retrieval, data: x}, {name: a, task: retrieval, data: y}]", "must be unique"),
])
def test_malformed_suite_is_one_line(tmp_path, capsys, text, message):
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(SuiteError, match=message):
        load_suite(str(tmp_path / "s.yaml"))
    assert main(["--suite", str(tmp_path / "s.yaml"), "--model", "m"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clipforge eval: error: ") and "\n" not in err
