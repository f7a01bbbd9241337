"""bench.flops reproduces open_clip's published per-model GFLOPs (docs/model_profile.csv)."""
import pytest

from bench.flops import clip_flops, model_config, transformer_macs

# (model, image GFLOPs, text GFLOPs) from open_clip docs/model_profile.csv (fvcore, 2 FLOPs/MAC)
PUBLISHED = [("ViT-B-32", 8.82, 5.96), ("ViT-B-16", 35.13, 5.96), ("ViT-L-14", 162.03, 13.30),
             ("ViT-H-14", 334.59, 47.09), ("ViT-g-14", 534.06, 47.09), ("ViT-bigG-14", 967.5, 97.86)]


@pytest.mark.parametrize("name,image_g,text_g", PUBLISHED)
def test_matches_open_clip_profile(name, image_g, text_g):
    f = clip_flops(model_config(name))
    assert f["image_fwd"] / 1e9 == pytest.approx(image_g, rel=0.01)
    assert f["text_fwd"] / 1e9 == pytest.approx(text_g, rel=0.01)
    assert f["train"] == 3 * f["fwd"]


def test_hand_computed_tiny(tiny_model_config):
    # tiny-vit: 64 px / 16 = 16 patches + cls = 17 tokens, width 128, 2 layers, MLP 512.
    per_token = 4 * 128 * 128 + 2 * 128 * 512 + 2 * 17 * 128          # 65536+131072+4352
    image = 16 * 3 * 16 * 16 * 128 + 2 * 17 * per_token + 128 * 64     # patch embed + blocks + proj
    text = 2 * 32 * (4 * 128 * 128 + 2 * 128 * 512 + 2 * 32 * 128) + 128 * 64
    f = clip_flops(model_config(str(tiny_model_config)))
    assert f["image_fwd"] == 2 * image and f["text_fwd"] == 2 * text
    assert transformer_macs(128, 2, 17, 512) == 2 * 17 * per_token


def test_refuses_towers_it_cannot_count():
    with pytest.raises(ValueError, match="vision_cfg"):
        clip_flops({"embed_dim": 512, "vision_cfg": {"timm_model_name": "convnext_base"},
                    "text_cfg": {"width": 512, "layers": 12}})
    with pytest.raises(ValueError, match="not an open_clip model"):
        model_config("ViT-Nope-99")
