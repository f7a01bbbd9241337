"""`clipforge export --interpolate / --soup` (modeling/soup.py): alpha 0 and 1 give A and B exactly, 0.5 the
hand-computed mean, the result loads into open_clip; different architectures are refused with one line."""
import json

import open_clip
import pytest
import torch
from safetensors.torch import load_file, save_file

from clipforge.launch import cli

TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
        "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}


def _export(folder, seed: int, model_cfg=TINY):
    """A local-dir export as clipforge writes it (pretrain/export.py): config + safetensors; a ResNet, so
    BatchNorm's integer num_batches_tracked is among the tensors."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    state = model.state_dict()
    state = {k: (v + seed if v.is_floating_point() else torch.full_like(v, seed)) for k, v in state.items()}
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    (folder / "vocab.txt").write_text("a tokenizer file travels with the weights\n")
    return state


def _weights(folder):
    return load_file(str(folder / "open_clip_model.safetensors"))


@pytest.fixture
def two(tmp_path):
    return tmp_path / "a", _export(tmp_path / "a", 1), tmp_path / "b" / "export", _export(tmp_path / "b" / "export", 2)


def test_alpha_0_and_1_reproduce_a_and_b_exactly(two, tmp_path):
    a, state_a, b, state_b = two
    for alpha, expected in ((0, state_a), (1, state_b)):
        out = tmp_path / f"wise-{alpha}"
        assert cli.main(["export", "--interpolate", str(a), str(b.parent), "--alpha", str(alpha), "--out", str(out)]) == 0
        got = _weights(out)
        assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)


def test_alpha_half_is_the_mean_and_loads_into_open_clip(two, tmp_path):
    a, state_a, b, state_b = two
    out = tmp_path / "wise"
    assert cli.main(["export", "--interpolate", str(a), str(b), "--alpha", "0.5", "--out", str(out)]) == 0
    got = _weights(out)
    for name, value in state_a.items():
        if value.is_floating_point():
            assert torch.equal(got[name], ((value.double() + state_b[name].double()) / 2).to(value.dtype)), name
        else:
            assert torch.equal(got[name], value), name  # integers: the heaviest (here the first of equals)
    assert (out / "vocab.txt").is_file()
    model = open_clip.create_model(f"local-dir:{out}")
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], got[k]) for k in got)


def test_soup_is_the_weighted_mean(two, tmp_path):
    a, state_a, b, state_b = two
    out = tmp_path / "soup"
    assert cli.main(["export", "--soup", f"{a}:3", f"{b}:1", "--out", str(out)]) == 0
    name = "visual.attnpool.c_proj.weight"
    expected = (0.75 * state_a[name].double() + 0.25 * state_b[name].double()).float()
    assert torch.equal(_weights(out)[name], expected)


def test_different_architectures_are_refused_with_one_line(two, tmp_path, capsys):
    a, *_ = two
    other = dict(TINY, embed_dim=24)
    _export(tmp_path / "c", 3, other)
    assert cli.main(["export", "--interpolate", str(a), str(tmp_path / "c"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("clipforge export: error: ") and "model_cfg differs" in err[0]
    assert not (tmp_path / "x").exists()
    assert cli.main(["export", "--interpolate", str(a), str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "no open_clip_config.json" in capsys.readouterr().err
