"""`clipforge eval` end to end on real shards and a real (tiny, random) open_clip model: the JSON numbers
equal a direct CLIP_benchmark-style computation; every model form gives the same numbers; bad input
gives one clear line and exit code 2."""
import io
import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipforge.data_pipeline.shards import iter_samples
from clipforge.eval.cli import main
from clipforge.eval.templates import load_templates


def run_cli(args, capsys):
    rc = main([str(a) for a in args] + ["--quiet", "--batch-size", "16"])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def direct_embeddings(export_dir, shards):
    """What CLIP_benchmark does: open_clip's own model + val transform, batches of 16, normalised features."""
    model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{export_dir}")
    tok = open_clip.get_tokenizer(f"local-dir:{export_dir}")
    samples = list(iter_samples(str(shards)))
    images, texts, owner, labels = [], [], [], []
    with torch.no_grad():
        for a in range(0, len(samples), 16):
            batch = samples[a:a + 16]
            pix = torch.stack([transform(Image.open(io.BytesIO(s["image_bytes"])).convert("RGB")) for s in batch])
            images.append(F.normalize(model.encode_image(pix), dim=-1))
            caps = [c for s in batch for c in s["captions"]]
            texts.append(F.normalize(model.encode_text(tok(caps)), dim=-1))
            owner += [a + i for i, s in enumerate(batch) for _ in s["captions"]]
            labels += [s["meta"]["shape"] for s in batch]
    return model, tok, torch.cat(images), torch.cat(texts), torch.tensor(owner), labels


def clip_benchmark_recall(scores, positive, k):
    topk = torch.topk(scores, k, dim=1)[1]
    hits = (F.one_hot(topk, scores.shape[1]) * positive[:, None, :]).sum((1, 2))
    return (hits > 0).float().mean().item()


def test_retrieval_json_equals_direct_computation(eval_shards, tiny_model, tmp_path, capsys):
    root, _ = tiny_model
    out = tmp_path / "r.json"
    rc, stdout, _ = run_cli(["--model", root / "export", "--data", eval_shards / "shards", "--task", "retrieval",
                             "--out", out, "--recall-k", "1,5,10"], capsys)
    assert rc == 0
    result = json.loads(out.read_text())
    assert {k: result[k] for k in ("dataset", "pretrained", "task", "language")} == {
        "dataset": "shards", "pretrained": "local-dir", "task": "zeroshot_retrieval", "language": "en"}
    assert result["clipforge"]["counts"] == {"images": 40, "captions": 80}
    _, _, images, texts, owner, _ = direct_embeddings(root / "export", eval_shards / "shards")
    scores = texts @ images.T
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(owner)), owner] = True
    for k in (1, 5, 10):
        assert result["metrics"][f"image_retrieval_recall@{k}"] == clip_benchmark_recall(scores, positive, k)
        assert result["metrics"][f"text_retrieval_recall@{k}"] == clip_benchmark_recall(scores.T, positive.T, k)
    assert "image_retrieval_recall@5" in stdout and "chance %" in stdout


def test_every_model_form_gives_the_same_numbers(eval_shards, tiny_model, tmp_path, capsys):
    root, _ = tiny_model
    data = ["--data", eval_shards / "shards", "--task", "retrieval"]
    forms = {"export": ["--model", root / "export"], "local-dir": ["--model", f"local-dir:{root / 'export'}"],
             "run dir": ["--model", root],
             "model.pt": ["--model", root / "model.pt", "--model-config", "configs/models/tiny-vit.json"],
             "name+pretrained": ["--model", "configs/models/tiny-vit.json", "--pretrained", root / "model.pt"]}
    metrics = {}
    for name, args in forms.items():
        rc, _, err = run_cli(args + data + ["--out", tmp_path / f"{len(metrics)}.json"], capsys)
        assert rc == 0, (name, err)
        metrics[name] = json.loads((tmp_path / f"{len(metrics)}.json").read_text())["metrics"]
    assert all(m == metrics["export"] for m in metrics.values())


def test_classification_equals_direct_computation(eval_shards, tiny_model, tmp_path, capsys):
    root, _ = tiny_model
    out = tmp_path / "c.json"
    rc, stdout, err = run_cli(["--model", root / "export", "--data", eval_shards / "shards", "--task",
                               "classification", "--label-key", "shape", "--classnames", eval_shards / "shapes.txt",
                               "--templates", "simple", "--out", out], capsys)
    assert rc == 0, err
    result = json.loads(out.read_text())
    assert result["task"] == "zeroshot_classification"
    assert result["metrics"]["acc5"] is None  # 4 classes: CLIP_benchmark's NaN, written as null
    model, tok, images, _, _, labels = direct_embeddings(root / "export", eval_shards / "shards")
    names = (eval_shards / "shapes.txt").read_text().split()
    with torch.no_grad():
        W = F.normalize(model.encode_text(tok([t.format(c=n) for n in names for t in load_templates("simple")])), dim=-1)
    y = torch.tensor([names.index(v) for v in labels])
    pred = (100.0 * images @ W.T).argmax(1)
    assert result["metrics"]["acc1"] == float((pred == y).sum()) / len(y)
    per_class = [float((pred[y == c] == c).float().mean()) for c in y.unique()]
    assert result["metrics"]["mean_per_class_recall"] == pytest.approx(sum(per_class) / len(per_class), rel=1e-12)


def test_classnames_derived_from_string_labels_and_report(eval_shards, tiny_model, tmp_path, capsys):
    root, _ = tiny_model
    report = tmp_path / "cls.html"
    rc, stdout, err = run_cli(["--model", root / "export", "--data", eval_shards / "shards", "--task",
                               "classification", "--label-key", "color", "--report", report], capsys)
    assert rc == 0, err
    assert "6 classes" in stdout  # the synthetic set's 6 colours, sorted
    html = report.read_text()
    assert html.count("data:image/jpeg;base64") == 8 and "<b>" in html


def test_retrieval_report_marks_hits(eval_shards, tiny_model, tmp_path, capsys):
    root, _ = tiny_model
    report = tmp_path / "r.md"
    rc, _, err = run_cli(["--model", root / "export", "--data", eval_shards / "shards", "--task", "retrieval",
                          "--report", report, "--report-examples", "3"], capsys)
    assert rc == 0, err
    text = report.read_text()
    assert text.count("## ") == 2 and (tmp_path / "r_assets").is_dir()
    assert len(list((tmp_path / "r_assets").glob("*.jpg"))) >= 3


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/run", "--task", "retrieval"], "/nonexistent/run"),
    (["--task", "classification", "--label-key", "nope"], "'nope'"),
    (["--task", "classification", "--label-key", "shape", "--classnames", "/missing.txt"], "/missing.txt"),
    (["--task", "retrieval", "--data", "/nonexistent/shards"], "/nonexistent/shards"),
])
def test_bad_input_gives_one_clear_line(eval_shards, tiny_model, capsys, args, message):
    root, _ = tiny_model
    base = {"--model": str(root / "export"), "--data": str(eval_shards / "shards")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    rc, _, err = run_cli([x for kv in base.items() for x in kv], capsys)
    assert rc == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_decode_workers_give_the_same_numbers(eval_shards, tiny_model, tmp_path, capsys):
    root, _ = tiny_model
    base = ["--model", root / "export", "--data", eval_shards / "shards", "--task", "retrieval"]
    assert run_cli(base + ["--out", tmp_path / "w0.json"], capsys)[0] == 0
    assert run_cli(base + ["--out", tmp_path / "w2.json", "--workers", "2"], capsys)[0] == 0
    assert json.loads((tmp_path / "w0.json").read_text()) == json.loads((tmp_path / "w2.json").read_text())


def test_unusable_samples_are_counted_by_reason_not_lost(eval_shards, tiny_model, tmp_path, capsys):
    """A tar with a JPEG that does not decode, a sample without caption and one without image: each is
    reported with its reason and an example key; the rest is evaluated."""
    import tarfile
    root, _ = tiny_model
    good = list(iter_samples(str(eval_shards / "shards")))[:6]
    members = []
    for s in good:
        members += [(f"{s['key']}.jpg", s["image_bytes"]), (f"{s['key']}.txt", "\n".join(s["captions"]).encode())]
    members += [("broken.jpg", b"\xff\xd8 not a jpeg"), ("broken.txt", b"a caption")]
    members += [("mute.jpg", good[0]["image_bytes"])]
    members += [("blind.txt", b"a caption without an image")]
    shard = tmp_path / "bad" / "shard-000000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (shard.parent / "sizes.json").write_text(json.dumps({"shard-000000.tar": 9}))
    rc, stdout, err = run_cli(["--model", root / "export", "--data", shard.parent, "--task", "retrieval",
                               "--out", tmp_path / "bad.json"], capsys)
    assert rc == 0, err
    result = json.loads((tmp_path / "bad.json").read_text())
    assert result["clipforge"]["counts"] == {"images": 6, "captions": 12}
    assert result["clipforge"]["skipped"] == {"image does not decode (UnidentifiedImageError)": 1,
                                             "no caption": 1, "no image member": 1}
    assert "shard-000000.tar:broken" in stdout


def test_label_indices_beyond_the_class_names_are_refused(eval_shards, tiny_model, tmp_path, capsys):
    root, _ = tiny_model
    (tmp_path / "two.txt").write_text("circle\nsquare\n")  # the set has 4 shapes: names 'triangle', 'cross' unknown
    rc, _, err = run_cli(["--model", root / "export", "--data", eval_shards / "shards", "--task", "classification",
                          "--label-key", "shape", "--classnames", tmp_path / "two.txt"], capsys)
    assert rc == 2 and "is not among the 2 class names" in err


def test_library_call_equals_the_cli_and_needs_shards(eval_shards, tiny_model, tmp_path, capsys):
    """evaluate_retrieval (the trainer's periodic eval) gives the CLI's numbers, and never converts raw data
    (on every rank) behind the caller's back."""
    from clipforge.eval.api import evaluate_retrieval
    from clipforge.eval.datasets import EvalDataError
    root, model = tiny_model
    with pytest.raises(EvalDataError, match="not a shard dataset"):
        evaluate_retrieval(model, open_clip.get_tokenizer("tiny-vit"), {"size": 64}, str(eval_shards / "raw"))
    metrics = evaluate_retrieval(model, open_clip.get_tokenizer("tiny-vit"), {"size": 64}, str(eval_shards / "shards"),
                                 batch_size=16)
    assert run_cli(["--model", root / "export", "--data", eval_shards / "shards", "--task", "retrieval",
                    "--out", tmp_path / "cli.json"], capsys)[0] == 0
    assert metrics == json.loads((tmp_path / "cli.json").read_text())["metrics"]
