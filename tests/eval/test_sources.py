"""Eval datasets in the layouts users have: CLIP_benchmark's published webdataset dirs (class names and
templates picked up from the dataset), torchvision ImageFolder dirs, clipforge shards with a label field.
The same images in every layout give the same numbers, equal to a direct computation."""
import io
import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.datasets import ImageFolder

from clipforge.eval.classification import classification_metrics, zero_shot_classifier
from clipforge.eval.datasets import EvalDataError
from clipforge.eval.sources import open_source

from .layouts import CLASSES, images, write_image_folder, write_labelled_shards, write_wds
from .test_cli import run_cli

TEMPLATES = ["a photo of a {c} square.", "a {c} thing."]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    test, train = images(24, seed=1), images(36, seed=2)
    return {"items": test,
            "wds": write_wds(root / "wds_colours", {"test": test, "train": train}),
            "wds_retrieval": write_wds(root / "wds_colours_ret", {"test": test}, retrieval=True),
            "folder": write_image_folder(root / "folder" / "test", test).parent,
            "shards": write_labelled_shards(root / "shards", test)}


def test_wds_layout_brings_classnames_templates_and_type(layouts):
    src = open_source(str(layouts["wds"]), "test", labels=True)
    assert (src.layout, src.dataset_type, src.classnames, src.templates) == (
        "clip_benchmark-wds", "classification", CLASSES, TEMPLATES)
    assert [s.name for s in src.data.shards] == ["0.tar", "1.tar", "2.tar"]
    assert [s.samples for s in src.data.shards] == [10, 10, 4]
    train = open_source(str(layouts["wds"] / "train"), "test", labels=True)  # a split dir names its split
    assert train.data.num_samples == 36
    assert open_source(str(layouts["wds_retrieval"]), "test").dataset_type == "retrieval"
    with pytest.raises(EvalDataError, match=r"no split 'val' \(has: test, train\)"):
        open_source(str(layouts["wds"]), "val")


def test_wds_missing_shard_is_one_clear_error(layouts, tmp_path):
    root = write_wds(tmp_path / "w", {"test": layouts["items"]})
    (root / "test" / "1.tar").unlink()
    with pytest.raises(EvalDataError, match="nshards.txt says 3 shards but 1 are missing"):
        open_source(str(root), "test")


def test_image_folder_is_torchvisions(layouts):
    src = open_source(str(layouts["folder"]), "test", labels=True)
    tv = ImageFolder(str(layouts["folder"] / "test"))
    assert src.layout == "image-folder"
    assert src.classnames == tv.classes == sorted(CLASSES)
    assert src.data.samples == tv.samples
    assert open_source(str(layouts["folder"]), "test") is None  # without labels wanted: raw data to convert


def direct_accuracy(export_dir, items, classnames):
    """What CLIP_benchmark computes: open_clip's model + val transform on the decoded files."""
    model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{export_dir}")
    tok = open_clip.get_tokenizer(f"local-dir:{export_dir}")
    with torch.no_grad():
        pix = torch.stack([transform(Image.open(io.BytesIO(data)).convert("RGB")) for _, _, data in items])
        emb = F.normalize(model.encode_image(pix), dim=-1)
        W = zero_shot_classifier(model.encode_text, tok, classnames, TEMPLATES)
    labels = torch.tensor([classnames.index(CLASSES[label]) for label, _, _ in items])
    return classification_metrics(emb, labels, W)


def test_the_same_images_in_every_layout_give_the_same_numbers(layouts, tiny_model, tmp_path, capsys):
    root, _ = tiny_model
    want = direct_accuracy(root / "export", layouts["items"], CLASSES)
    results = {}
    for layout, extra in (("wds", []), ("folder", ["--templates", str(tmp_path / "t.txt")]),
                          ("shards", ["--label-key", "colour", "--templates", str(tmp_path / "t.txt")])):
        (tmp_path / "t.txt").write_text("\n".join(TEMPLATES) + "\n")
        out = tmp_path / f"{layout}.json"
        rc, _, err = run_cli(["--model", root / "export", "--data", layouts[layout], "--task",
                              "zeroshot_classification", "--out", out, *extra], capsys)
        assert rc == 0, err
        results[layout] = json.loads(out.read_text())
    wds = results["wds"]["clipforge"]
    assert (wds["templates"], wds["prompts"], wds["classnames"]) == ("dataset", TEMPLATES, CLASSES)
    assert results["wds"]["clipforge"]["counts"] == {"images": 24, "classes": 6}
    for layout, result in results.items():  # acc1/acc5/recall are counts: order and class order do not matter
        assert result["metrics"] == want, layout


def test_wds_retrieval_reads_txt_lines_as_captions(layouts, tiny_model, tmp_path, capsys):
    root, _ = tiny_model
    out = tmp_path / "r.json"
    rc, _, err = run_cli(["--model", root / "export", "--data", layouts["wds_retrieval"], "--task", "retrieval",
                          "--out", out], capsys)
    assert rc == 0, err
    assert json.loads(out.read_text())["clipforge"]["counts"] == {"images": 24, "captions": 48}
