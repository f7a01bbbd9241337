"""`clipforge eval --suite`: the shipped suite for the bundled data (configs/eval/demo.yaml: the demo scenes,
Flickr8k's test split, scikit-learn's digits) on a folder laid out as it expects, at test size (tiny models,
slices; Flickr8k on 20 test images when ../shared/data/flickr8k is here, else asserted skipped with its
reason): one CLIP_benchmark JSON per task and model, equal to the single-task CLI's; a summary (markdown +
CSV) with a row per task, a column per model, chance beside, the average last; CLIP_benchmark 1.6.2's own
`build` reads the JSONs into rows equal to ours; a skipped task; a malformed suite is one line naming the entry."""
import csv
import json
import os
import subprocess
import sys

import open_clip
import pytest
import torch
import yaml

from clipforge.data_pipeline.convert.api import convert
from clipforge.data_pipeline.digits import write_digits
from clipforge.data_pipeline.synthetic import make_synthetic_dataset
from clipforge.eval.cli import main
from clipforge.eval.suite import SuiteError, load_suite

from ..conftest import FLICKR8K
from .test_clip_benchmark_parity import PEER, REPO

SUITE = REPO / "configs" / "eval" / "demo.yaml"
DEMO_TASKS = ["retrieval", "shape-zeroshot", "colour-zeroshot", "shape-probe", "colour-probe"]
TASKS = DEMO_TASKS + ["flickr8k-retrieval", "digits-zeroshot", "digits-probe"]
HAVE_FLICKR8K = (FLICKR8K / "captions.csv").is_file()
RAN = TASKS if HAVE_FLICKR8K else [t for t in TASKS if t != "flickr8k-retrieval"]


@pytest.fixture(scope="module")
def suite_root(tmp_path_factory):
    """What the suite's root (runs/) holds after `clipforge demo`, `make flickr8k` and
    `python -m clipforge.data_pipeline.digits runs/digits`, at test size."""
    root = tmp_path_factory.mktemp("runs")
    demo = root / "demo"
    captions = make_synthetic_dataset(str(demo / "raw"), num_train=60, num_val=30, size=64, seed=4)
    for split in ("train", "val"):
        convert([str(captions)], str(demo / f"shards-{split}"), fmt="csv", image_size=64, resize_mode="center_crop",
                include_list=str(demo / "raw" / "splits" / f"{split}.txt"), keep_cols=["shape", "color"],
                progress=False)
    assert write_digits(str(root / "digits"), size=16, limit=120) == {"train": 120, "test": 120}
    if HAVE_FLICKR8K:  # the first 20 test images, as configs/flickr8k.sh converts the split
        test = (FLICKR8K / "splits" / "test.txt").read_text().split()[:20]
        (root / "test20.txt").write_text("\n".join(test) + "\n")
        convert([str(FLICKR8K / "captions.csv")], str(root / "flickr8k" / "shards-test"), image_size=64,
                include_list=str(root / "test20.txt"), progress=False)
    return root


@pytest.fixture(scope="module")
def suite_run(suite_root, tiny_model, tmp_path_factory):
    root, _ = tiny_model
    other = tmp_path_factory.mktemp("other")
    torch.manual_seed(7)
    torch.save(open_clip.create_model("tiny-vit").state_dict(), other / "model.pt")
    out = tmp_path_factory.mktemp("suite-out")
    rc = main(["--suite", str(SUITE), "--data-root", str(suite_root), "--out-dir", str(out), "--model",
               str(root / "export"), "--model", str(other / "model.pt"), "--model-config",
               str(root / "export" / "open_clip_config.json"), "--quiet", "--batch-size", "16",
               "--fewshot-epochs", "3"])
    assert rc == 0
    return out


def test_one_json_per_task_and_model(suite_run):
    assert sorted(os.listdir(suite_run)) == ["export", "features", "model.pt", "summary.csv", "summary.md"]
    for model in ("export", "model.pt"):
        assert sorted(os.listdir(suite_run / model)) == sorted(f"{t}.json" for t in RAN)
    tasks = {t: json.loads((suite_run / "export" / f"{t}.json").read_text())["task"] for t in RAN}
    assert tasks == {"retrieval": "zeroshot_retrieval", "shape-zeroshot": "zeroshot_classification",
                     "colour-zeroshot": "zeroshot_classification", "shape-probe": "linear_probe",
                     "colour-probe": "linear_probe", "digits-zeroshot": "zeroshot_classification",
                     "digits-probe": "linear_probe", **({"flickr8k-retrieval": "zeroshot_retrieval"}
                                                        if HAVE_FLICKR8K else {})}


def test_digits_tasks_use_the_datasets_classes_and_templates(suite_run):
    zeroshot = json.loads((suite_run / "export" / "digits-zeroshot.json").read_text())
    assert zeroshot["dataset"] == "digits" and zeroshot["clipforge"]["classnames"] == [str(d) for d in range(10)]
    assert zeroshot["clipforge"]["templates"] == "dataset"
    assert "a photo of the number {c}." in zeroshot["clipforge"]["prompts"]
    assert zeroshot["clipforge"]["counts"]["images"] == 120 and zeroshot["clipforge"]["chance"]["acc1"] == 0.1
    probe = json.loads((suite_run / "export" / "digits-probe.json").read_text())
    assert probe["clipforge"]["counts"] == {"train": 96, "val": 24, "test": 120, "classes": 10, "dim": 64}  # val: 20 %


def test_flickr8k_task_runs_on_its_slice_or_is_skipped_with_the_reason(suite_run):
    rows = {r[0]: r for r in csv.reader(open(suite_run / "summary.csv"))}
    if HAVE_FLICKR8K:
        result = json.loads((suite_run / "export" / "flickr8k-retrieval.json").read_text())
        assert result["dataset"] == "flickr8k" and result["clipforge"]["counts"] == {"images": 20, "captions": 100}
        assert rows["flickr8k-retrieval"][2] == "mean_recall@10"
    else:
        assert rows["flickr8k-retrieval"][3:] == ["n/a", "skipped", "skipped"]
        assert "`flickr8k-retrieval`: " in (suite_run / "summary.md").read_text()
        assert "make flickr8k writes it" in (suite_run / "summary.md").read_text()


def test_suite_json_equals_the_single_task_cli(suite_run, suite_root, tiny_model, tmp_path):
    root, _ = tiny_model
    single = tmp_path / "one.json"
    demo = suite_root / "demo"
    assert main(["--model", str(root / "export"), "--data", str(demo / "shards-val"), "--task",
                 "classification", "--label-key", "shape", "--classnames", str(demo / "raw" / "classnames.txt"),
                 "--templates", "simple", "--out", str(single), "--quiet", "--batch-size", "16"]) == 0
    suite = json.loads((suite_run / "export" / "shape-zeroshot.json").read_text())
    assert suite["metrics"] == json.loads(single.read_text())["metrics"]
    assert suite["clipforge"]["task_name"] == "shape-zeroshot"


def test_summary_rows_columns_chance_and_average(suite_run):
    rows = list(csv.reader(open(suite_run / "summary.csv")))
    assert rows[0] == ["task", "dataset", "metric", "chance", "export", "model.pt"]
    assert [r[0] for r in rows[1:]] == TASKS + ["average"]
    assert [r[2] for r in rows[1:-1]] == ["mean_recall@1", "acc1", "acc1", "acc1", "acc1", "mean_recall@10",
                                          "acc1", "acc1"]
    assert rows[2][3] == "25.00" and rows[7][3] == "10.00"  # 4 shapes, 10 digits
    ran = [r for r in rows[1:-1] if r[0] in RAN]
    assert rows[-1][2] == ("8 tasks" if HAVE_FLICKR8K else "7 tasks (1 skipped)")
    for col in (4, 5):
        for row in ran:
            result = json.loads((suite_run / rows[0][col] / f"{row[0]}.json").read_text())
            assert row[col] == f"{100 * result['metrics'][row[2]]:.2f}"
        values = [json.loads((suite_run / rows[0][col] / f"{r[0]}.json").read_text())["metrics"][r[2]] for r in ran]
        assert rows[-1][col] == f"{100 * sum(values) / len(values):.2f}"
    md = (suite_run / "summary.md").read_text()
    assert "| task | dataset | metric | chance | export | model.pt |" in md and "| average |" in md


def _peer_build(files, out):
    """CLIP_benchmark 1.6.2's `clip_benchmark build FILES --output OUT`, the peer's own main_build."""
    # the captioning metrics need pycocoevalcap (not installed, not used by build): an empty stand-in
    code = ("import sys, types; sys.modules['clip_benchmark.metrics.captioning'] = types.ModuleType('c'); "
            "from clip_benchmark.cli import main_build; "
            "main_build(types.SimpleNamespace(files=sys.argv[2:], output=sys.argv[1]))")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{PEER}"}
    proc = subprocess.run([sys.executable, "-c", code, str(out), *map(str, files)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return list(csv.DictReader(open(out)))


def test_clip_benchmark_build_rows_equal_ours(suite_run, tmp_path):
    """The peer's build over OUT/*/*.json: one row per JSON (in the order given), each with the JSON's
    model/pretrained/dataset/task and every metric to the last digit, and its headline = our summary's cell."""
    if not (PEER / "clip_benchmark").is_dir():
        pytest.skip(f"CLIP_benchmark not installed at {PEER} (make .venv-peers/.stamp-test)")
    files = sorted(suite_run.glob("*/*.json"))
    rows = _peer_build(files, tmp_path / "benchmark.csv")
    assert len(rows) == len(files) == 2 * len(RAN)
    summary = list(csv.reader(open(suite_run / "summary.csv")))
    cell = {(r[0], col): r[i] for r in summary[1:-1] for i, col in enumerate(summary[0]) if i >= 4}
    headline = {r[0]: r[2] for r in summary[1:-1]}
    for path, row in zip(files, rows):
        ours = json.loads(path.read_text())
        assert row["model_fullname"] == f"{ours['model']} {ours['pretrained']}"
        assert {k: row[k] for k in ("dataset", "model", "pretrained", "task", "language")} == \
            {k: ours[k] for k in ("dataset", "model", "pretrained", "task", "language")}
        for metric, value in ours["metrics"].items():
            # csv writes str(): a float's shortest repr (exact), acc5 below 5 classes (null) as an empty cell
            assert row[metric] == ("" if value is None else str(value)), (path, metric)
        task = path.stem
        assert f"{100 * float(row[headline[task]]):.2f}" == cell[(task, path.parent.name)]
    by_task = {r["task"] for r in rows}
    assert by_task == {"zeroshot_retrieval", "zeroshot_classification", "linear_probe"}
    probe = next(r for r in rows if r["task"] == "linear_probe")
    assert {"lp_acc1", "acc1", "weight_decay", "model_fullname"} <= set(probe)


def test_a_task_whose_data_is_missing_is_skipped_with_the_reason(tiny_model, suite_root, tmp_path, capsys):
    root, _ = tiny_model
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"root": str(suite_root), "tasks": [
        {"name": "here", "task": "retrieval", "data": "demo/shards-val"},
        {"name": "gone", "task": "retrieval", "data": "nowhere/shards-test", "skip_if_missing": "make nowhere"},
        {"name": "gone-too", "task": "linear_probe", "data": "digits", "train_data": "no-train",
         "skip_if_missing": True}]}))
    out = tmp_path / "out"
    assert main(["--suite", str(tmp_path / "s.yaml"), "--model", str(root / "export"), "--out-dir", str(out),
                 "--batch-size", "16", "--quiet"]) == 0
    stdout = capsys.readouterr().out
    assert f"skipped gone: {suite_root}/nowhere/shards-test not found; make nowhere" in stdout
    assert f"skipped gone-too: {suite_root}/no-train not found" in stdout
    assert sorted(os.listdir(out / "export")) == ["here.json"]
    rows = list(csv.reader(open(out / "summary.csv")))
    assert rows[2] == ["gone", "shards-test", "mean_recall@1", "n/a", "skipped"]
    here = json.loads((out / "export" / "here.json").read_text())["metrics"]["mean_recall@1"]
    assert rows[-1][2:] == ["1 tasks (2 skipped)", rows[1][3], f"{100 * here:.2f}"]
    md = (out / "summary.md").read_text()
    assert f"- `gone`: {suite_root}/nowhere/shards-test not found; make nowhere" in md
    # without skip_if_missing, missing data is an error (one line), as before
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"tasks": [{"task": "retrieval", "data": str(tmp_path / "x")}]}))
    assert main(["--suite", str(tmp_path / "s.yaml"), "--model", str(root / "export"), "--out-dir", str(out),
                 "--quiet"]) == 2
    assert "x: not found" in capsys.readouterr().err


def test_shipped_suite_marks_the_fetched_data_optional():
    tasks, doc = load_suite(str(SUITE))
    assert [t.name for t in tasks] == TASKS and doc["root"] == "runs"
    optional = {t.name for t in tasks if yaml.safe_load(SUITE.read_text())["tasks"][TASKS.index(t.name)]
                .get("skip_if_missing")}
    assert optional == {"flickr8k-retrieval", "digits-zeroshot", "digits-probe"}


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
