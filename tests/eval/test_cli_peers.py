"""CLIP_benchmark's spellings give the same result as clipforge's; the JSON records what decided a
classification (templates, prompts, class names file, label key); the table names each metric's direction."""
import json

from clipforge.eval.cli import parse_args
from clipforge.eval.templates import load_templates

from .test_cli import run_cli


def test_clip_benchmark_spellings_give_the_same_json(eval_shards, tiny_model, tmp_path, capsys):
    root, _ = tiny_model
    ours, theirs = tmp_path / "ours.json", tmp_path / "theirs.json"
    rc, stdout, err = run_cli(["--model", root / "export", "--data", eval_shards / "shards", "--task", "retrieval",
                               "--recall-k", "1,5", "--out", ours], capsys)
    assert rc == 0, err
    rc, _, err = run_cli(["--model", root / "export", "--dataset_root", eval_shards / "shards", "--task",
                          "zeroshot_retrieval", "--recall_k", "1", "5", "--output", theirs, "--batch_size", "16"],
                         capsys)
    assert rc == 0, err
    assert json.loads(ours.read_text()) == json.loads(theirs.read_text())
    result = json.loads(ours.read_text())
    assert result["clipforge"]["recall_k"] == [1, 5] and "image_retrieval_recall@5" in result["metrics"]
    assert "image_retrieval_recall@1 (text->image)" in stdout and "text_retrieval_recall@5 (image->text)" in stdout


def test_peer_argument_forms():
    args = parse_args(["--model", "m", "--dataset_root", "d", "--task", "zeroshot_classification",
                       "--num_workers", "3"])
    assert (args.data, args.task, args.workers, args.recall_k) == ("d", "classification", 3, [1, 5, 10])
    assert parse_args(["--model", "m", "--data", "d", "--task", "retrieval", "--recall-k", "10", "1,5"]).recall_k == \
        [1, 5, 10]


def test_classification_json_records_templates_classnames_and_label_key(eval_shards, tiny_model, tmp_path, capsys):
    root, _ = tiny_model
    out = tmp_path / "c.json"
    classnames = eval_shards / "shapes.txt"
    rc, _, err = run_cli(["--model", root / "export", "--data", eval_shards / "shards", "--task", "classification",
                          "--label-key", "shape", "--classnames", classnames, "--templates", "simple", "--out", out],
                         capsys)
    assert rc == 0, err
    recorded = json.loads(out.read_text())["clipforge"]
    assert recorded["templates"] == "simple" and recorded["prompts"] == load_templates("simple")
    assert recorded["classnames_file"] == str(classnames) and recorded["label_key"] == "shape"
    assert recorded["classnames"] == classnames.read_text().split()
