"""`clipforge eval --task linear_probe`: the JSON equals the probe run directly on open_clip's own features,
features are cached per model and dataset (a second run embeds nothing; another model gets its own), the
few-shot selection keeps k per class or refuses."""
import io
import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipforge.eval.probe import WD_GRID, ProbeConfig, fewshot_order, linear_probe

from .layouts import images, write_wds
from .test_cli import run_cli


@pytest.fixture(scope="module")
def wds(tmp_path_factory):
    root = tmp_path_factory.mktemp("lp")
    return write_wds(root / "wds_colours", {"test": images(24, seed=1), "train": images(36, seed=2)})


def direct_features(export_dir, items):
    """open_clip's model and val transform, normalised image features, batches of 16 (the CLI's batches)."""
    model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{export_dir}")
    feats = []
    with torch.no_grad():
        for a in range(0, len(items), 16):
            pix = torch.stack([transform(Image.open(io.BytesIO(d)).convert("RGB")) for _, _, d in items[a:a + 16]])
            feats.append(F.normalize(model.encode_image(pix), dim=-1))
    return torch.cat(feats), torch.tensor([label for label, _, _ in items])


def probe_cli(model, data, out, capsys, *extra):
    rc, stdout, err = run_cli(["--model", model, "--data", data, "--task", "linear_probe", "--out", out,
                               "--fewshot-epochs", "4", *extra], capsys)
    assert rc == 0, err
    return json.loads(out.read_text()), stdout


def test_cli_equals_the_probe_on_direct_features(wds, tiny_model, tmp_path, capsys):
    root, _ = tiny_model
    result, stdout = probe_cli(root / "export", wds, tmp_path / "lp.json", capsys, "--val-proportion", "0")
    train = direct_features(root / "export", images(36, seed=2))
    test = direct_features(root / "export", images(24, seed=1))
    want, _ = linear_probe(*train, *test, 6, cfg=ProbeConfig(epochs=4, batch_size=16))
    m = result["metrics"]
    assert result["task"] == "linear_probe" and result["dataset"] == "wds_colours"
    assert {k: m[k] for k in want} == want
    assert (m["lp_acc1"], m["lp_acc5"], m["weight_decay"], m["fewshot_k"]) == (m["acc1"], m["acc5"], 0.0, -1)
    assert result["clipforge"]["counts"] == {"train": 36, "val": 0, "test": 24, "classes": 6, "dim": 64}
    assert "acc1" in stdout and "lp_acc1" not in stdout


def test_val_share_sweeps_weight_decay_and_features_are_cached(wds, tiny_model, tmp_path, capsys, monkeypatch):
    root, _ = tiny_model
    first, _ = probe_cli(root / "export", wds, tmp_path / "a.json", capsys)
    assert first["clipforge"]["counts"]["train"] == 29 and first["clipforge"]["counts"]["val"] == 7
    assert first["metrics"]["weight_decay"] in WD_GRID and len(first["clipforge"]["val_acc1"]) >= 7
    cached = sorted(p.name for p in (tmp_path / "features").rglob("*.pt"))
    assert len(cached) == 2 and cached[0].startswith("wds_colours-test-")

    def no_embedding(*a, **k):
        raise AssertionError("embedded although the features are cached")
    monkeypatch.setattr("clipforge.eval.features.embed_share", no_embedding)
    again, _ = probe_cli(root / "export", wds, tmp_path / "b.json", capsys)
    assert again["metrics"] == first["metrics"]
    monkeypatch.undo()
    torch.manual_seed(5)  # another model (other weights, same config): its own cache entries
    other = open_clip.create_model("tiny-vit").eval()
    torch.save(other.state_dict(), tmp_path / "other.pt")
    probe_cli(tmp_path / "other.pt", wds, tmp_path / "c.json", capsys, "--model-config", root / "export" /
              "open_clip_config.json")
    assert len(list((tmp_path / "features").rglob("*.pt"))) == 4


def test_fewshot_keeps_k_per_class_in_seeded_order():
    y = torch.tensor([0, 1, 2] * 5)
    order = fewshot_order(y, 2, seed=0)
    assert sorted(torch.bincount(y[order]).tolist()) == [2, 2, 2]
    assert torch.equal(order, fewshot_order(y, 2, seed=0))
    assert torch.equal(fewshot_order(y, -1, seed=0), torch.randperm(15, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="fewshot_k=6: classes \\[0, 1, 2\\] have only 5"):
        fewshot_order(y, 6, seed=0)
