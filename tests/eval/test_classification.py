"""Zero-shot classification metrics: hand-made logits with known answers, CLIP_benchmark's formulas,
templates and class-name files."""
import json
import math

import numpy as np
import open_clip
import pytest
import torch

from clipforge.eval.classification import chance_levels, classification_metrics, zero_shot_classifier
from clipforge.eval.templates import TemplateError, load_classnames, load_templates, prompts_for


def from_logits(rows):
    """Image embeddings whose logits (100 * emb @ eye) are exactly 100 * rows (binary fractions)."""
    rows = torch.tensor(rows, dtype=torch.float32)
    return rows, torch.eye(rows.shape[1])


def test_hand_made_logits_with_ties_and_per_class_recall():
    images, classifier = from_logits([
        [0.5, 0.5, 0.0, 0.0, 0.0, 0.0],    # label 0: ties class 1, lower index first -> top-1
        [0.5, 0.5, 0.0, 0.0, 0.0, 0.0],    # label 1: tie, class 0 comes first -> rank 1
        [0.0, 0.0, 0.25, 0.5, 0.0, 0.0],   # label 2: rank 1
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],    # label 5: all tied -> rank 5 (miss even at 5)
    ])
    m = classification_metrics(images, torch.tensor([0, 1, 2, 5]), classifier)
    assert m["acc1"] == 1 / 4
    assert m["acc5"] == 3 / 4
    # classes present: 0 (1/1), 1 (0/1), 2 (0/1), 5 (0/1); absent classes 3, 4 do not count
    assert m["mean_per_class_recall"] == 0.25


def test_fewer_than_five_classes_gives_nan_acc5_like_clip_benchmark():
    images, classifier = from_logits([[0.5, 0.25, 0.0], [0.0, 0.25, 0.5]])
    m = classification_metrics(images, torch.tensor([0, 1]), classifier)
    assert m["acc1"] == 0.5 and math.isnan(m["acc5"])
    assert m["mean_per_class_recall"] == 0.5
    assert math.isnan(chance_levels(3)["acc5"]) and chance_levels(3)["acc1"] == 1 / 3


def test_matches_clip_benchmark_formulas_on_random_embeddings():
    g = torch.Generator().manual_seed(0)
    classifier = torch.nn.functional.normalize(torch.randn(20, 16, generator=g), dim=-1)
    labels = torch.randint(0, 20, (500,), generator=g)
    images = torch.nn.functional.normalize(classifier[labels] + 0.9 * torch.randn(500, 16, generator=g), dim=-1)
    m = classification_metrics(images, labels, classifier)
    logits = 100.0 * images @ classifier.T
    pred = logits.topk(5, 1, True, True)[1].t()
    correct = pred.eq(labels.view(1, -1).expand_as(pred))
    assert m["acc1"] == float(correct[:1].reshape(-1).float().sum()) / 500
    assert m["acc5"] == float(correct[:5].reshape(-1).float().sum()) / 500
    top1 = logits.argmax(1).numpy()
    y = labels.numpy()
    classes = np.unique(y)
    want = np.mean([np.mean(top1[y == c] == c) for c in classes])  # balanced accuracy
    assert m["mean_per_class_recall"] == pytest.approx(float(want), rel=1e-12)
    assert 0.1 < m["acc1"] < m["acc5"] < 1


def test_out_of_range_labels_are_refused():
    images, classifier = from_logits([[0.5, 0.25]])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        classification_metrics(images, torch.tensor([2]), classifier)


def test_class_embedding_is_normalised_mean_of_normalised_prompts(tiny_model_config):
    open_clip.add_model_config(str(tiny_model_config))
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-vit").eval()
    tok = open_clip.get_tokenizer("tiny-vit")
    templates = load_templates("imagenet7")
    W = zero_shot_classifier(model.encode_text, tok, ["cat", "red square"], templates, batch_size=5)
    for row, name in zip(W, ["cat", "red square"]):
        with torch.no_grad():
            each = [torch.nn.functional.normalize(model.encode_text(tok([p])), dim=-1)[0]
                    for p in prompts_for(name, templates)]
        mean = torch.stack(each).mean(0)
        assert torch.allclose(row, mean / mean.norm(), atol=1e-6)
    assert torch.allclose(W.norm(dim=1), torch.ones(2))


def test_template_and_classname_files(tmp_path):
    (tmp_path / "t.txt").write_text("a photo of a {}.\n# comment\nart of the {c}.\n")
    assert load_templates(str(tmp_path / "t.txt")) == ["a photo of a {c}.", "art of the {c}."]
    (tmp_path / "bad.txt").write_text("no placeholder\n")
    with pytest.raises(TemplateError, match="no \\{c\\}"):
        load_templates(str(tmp_path / "bad.txt"))
    (tmp_path / "cupl.json").write_text(json.dumps({"cat": ["a small cat"], "dog": ["a dog", "a puppy"]}))
    per_class = load_templates(str(tmp_path / "cupl.json"))
    assert prompts_for("dog", per_class) == ["a dog", "a puppy"]
    with pytest.raises(TemplateError, match="'bird'"):
        prompts_for("bird", per_class)
    (tmp_path / "c.json").write_text(json.dumps({"1": "dog", "0": "cat"}))
    assert load_classnames(str(tmp_path / "c.json")) == ["cat", "dog"]
    (tmp_path / "gap.json").write_text(json.dumps({"0": "cat", "2": "dog"}))
    with pytest.raises(TemplateError, match="without gaps"):
        load_classnames(str(tmp_path / "gap.json"))
    with pytest.raises(TemplateError, match="neither a built-in"):
        load_templates("nonexistent-set")
