"""bench.sizing_formulas: a few numbers of docs/scaling.md against hand computation, and the activation
constant against a measurement of real open_clip blocks; bench.sizing's --write."""
import pytest
import torch

from bench.model_configs import model_config
from bench.sizing import main
from bench.sizing_formulas import (ACT_B, activation_bytes_per_sample, loss_bytes, param_counts,
                                   shard_plan, zero_bytes)
from bench.sizing_tables import anchors_table, max_batch

GB = 1e9


def test_zero_bytes_by_hand():
    # 1e9 params on 8 GPUs: weights 2 GB, grads 2 GB, optimizer 12 GB, sharded per stage.
    assert zero_bytes(10 ** 9, 0, 8) == {"weights": 2e9, "grads": 2e9, "optim": 12e9, "total": 16e9}
    assert zero_bytes(10 ** 9, 1, 8)["total"] == 2e9 + 2e9 + 1.5e9
    assert zero_bytes(10 ** 9, 2, 8)["total"] == 2e9 + 0.25e9 + 1.5e9
    assert zero_bytes(10 ** 9, 3, 8)["total"] == 2e9
    with pytest.raises(ValueError, match="zero_stage=4"):
        zero_bytes(1, 4, 8)


def test_param_counts_match_open_clip_published():
    # open_clip docs/model_profile.csv: ViT-B-32 151.28 M (image 87.85), ViT-L-14 427.62 M
    b32, l14 = param_counts("ViT-B-32"), param_counts("ViT-L-14")
    assert b32 == {"total": 151_277_313, "image": 87_849_216, "text": 63_428_097}
    assert l14["total"] == 427_616_513


def test_activations_loss_and_shards_by_hand():
    # B/32: 32 B x (50 tokens x 768 x 12 layers + 77 x 512 x 12) = 29,884,416 B per sample
    assert activation_bytes_per_sample(model_config("ViT-B-32")) == 32 * (50 * 768 * 12 + 77 * 512 * 12)
    # with checkpointing: 2-byte block inputs + the largest block recomputed (text 77x512 > vision 50x768)
    assert activation_bytes_per_sample(model_config("ViT-B-32"), True) == \
        2 * (50 * 768 * 12 + 77 * 512 * 12) + 32 * 77 * 512
    # the figure: open_clip's global loss at B = 65,536 is ~68 GB per GPU
    assert loss_bytes(65_536, 8, 512, "naive-global") / GB == pytest.approx(68.7, abs=0.05)
    assert loss_bytes(65_536, 128, 512, "naive-local") == 16 * 512 * 65_536
    assert loss_bytes(65_536, 128, 512, "tiled") == 16 * 65_536 * 512 + 12 * 4096 ** 2
    plan = shard_plan(400_000_000, 128)
    assert (plan["workers"], plan["samples_per_shard"], plan["shards"]) == (1024, 10_000, 40_000)
    assert plan["shard_mb"] == 500 and plan["note"] == ""
    assert "fewer shards than workers" in shard_plan(3_000_000, 1024)["note"]


def test_max_batch_by_hand():
    # L/14 on 80 GB, ZeRO-1 over 128 GPUs: (80e9 - 3e9 reserve - 1.7506e9 states) / 225.4 MB
    states = 427_616_513 * (2 + 2 + 12 / 128)
    per = 32 * (257 * 1024 * 24 + 77 * 768 * 12)
    assert max_batch("ViT-L-14", 80 * GB, 1, 128, False) == int((80e9 - 3e9 - states) // per) == 334


def test_published_runs_fit_where_they_ran():
    table = anchors_table()
    assert table.count("| fits |") == 4 and "DOES NOT FIT" not in table


def _saved_bytes(layers: int) -> int:
    """Bytes autograd keeps for backward in one bf16 forward of a small open_clip CLIP."""
    import open_clip
    torch.manual_seed(0)
    cfg = {"embed_dim": 256, "vision_cfg": {"image_size": 64, "layers": layers, "width": 256, "patch_size": 8},
           "text_cfg": {"context_length": 32, "vocab_size": 1000, "width": 256, "heads": 4, "layers": layers}}
    model = open_clip.CLIP(**cfg).to(torch.bfloat16)
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()   # one count per storage: views share it
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(16, 3, 64, 64, dtype=torch.bfloat16), torch.randint(1, 1000, (16, 32)))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in storages.items() if ptr not in params)


def test_activation_constant_matches_measurement():
    # two extra layers per tower; 16 samples x (65 vision + 32 text tokens) x width 256
    per_layer = (_saved_bytes(4) - _saved_bytes(2)) / 2
    measured = per_layer / (16 * (65 + 32) * 256)
    assert measured == pytest.approx(ACT_B, rel=0.1)


def test_write_refreshes_sections(tmp_path):
    doc = tmp_path / "scaling.md"
    doc.write_text("# guide\n\n<!-- sizing-loss:begin -->\nstale\n<!-- sizing-loss:end -->\nprose\n")
    assert main(["--write", str(doc)]) == 0
    text = doc.read_text()
    assert "stale" not in text and "| 65,536 | 68.7 |" in text and "prose" in text
    assert text.index("prose") < text.index("sizing-zero:begin")  # missing sections are appended


def test_model_config_names_what_it_does_not_know():
    with pytest.raises(ValueError, match="not an open_clip model"):
        model_config("ViT-Nope-99")
