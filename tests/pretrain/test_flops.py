"""modeling.flops against two independent counts: open_clip's published per-model GFLOPs
(docs/model_profile.csv) and torch's FlopCounterMode on the real open_clip modules."""
import open_clip
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from clipforge.modeling.flops import clip_flops, train_flops_per_sample, transformer_macs
from clipforge.modeling.model import resolve_model_config

# (model, image GFLOPs, text GFLOPs) from open_clip docs/model_profile.csv (fvcore, 2 FLOPs/MAC)
PUBLISHED = [("ViT-B-32", 8.82, 5.96), ("ViT-B-16", 35.13, 5.96), ("ViT-L-14", 162.03, 13.30),
             ("ViT-H-14", 334.59, 47.09), ("ViT-g-14", 534.06, 47.09), ("ViT-bigG-14", 967.5, 97.86)]


@pytest.mark.parametrize("name,image_g,text_g", PUBLISHED)
def test_matches_open_clip_profile(name, image_g, text_g):
    f = clip_flops(resolve_model_config(name))
    assert f["image_fwd"] / 1e9 == pytest.approx(image_g, rel=0.01)
    assert f["text_fwd"] / 1e9 == pytest.approx(text_g, rel=0.01)
    assert f["train"] == 3 * f["fwd"]


def _counted_flops(cfg: dict) -> dict:
    """FlopCounterMode's totals for one image + one caption through open_clip's CLIP: each tower's
    forward, and forward + backward of both. On the meta device (no memory, so ViT-B-32 costs nothing):
    there attention runs as bmm, which the counter knows; on a CPU it runs as
    _scaled_dot_product_flash_attention_for_cpu, which torch 2.14's counter does not count."""
    with torch.device("meta"):
        model = open_clip.CLIP(**cfg)
        image = torch.zeros(1, 3, cfg["vision_cfg"]["image_size"], cfg["vision_cfg"]["image_size"])
        text = torch.zeros(1, cfg["text_cfg"]["context_length"], dtype=torch.long)
    counted = {}
    for key, step in (("image_fwd", lambda: model.encode_image(image)),
                      ("text_fwd", lambda: model.encode_text(text)),
                      ("train", lambda: sum(f.sum() for f in model(image, text)[:2]).backward())):
        with FlopCounterMode(display=False) as counter:
            step()
        counted[key] = counter.get_total_flops()
    return counted


@pytest.mark.parametrize("name", ["tiny", "ViT-B-32"])
def test_matches_torchs_flop_counter(name, tiny_model_config):
    cfg = resolve_model_config(str(tiny_model_config) if name == "tiny" else name)
    counted, modelled = _counted_flops(cfg), clip_flops(cfg)
    assert modelled["image_fwd"] == pytest.approx(counted["image_fwd"], rel=0.01)
    assert modelled["text_fwd"] == pytest.approx(counted["text_fwd"], rel=0.01)
    # 3x forward over-counts the backward a little: the image has no gradient, so the patch embedding
    # computes only its weights' (tiny-vit: 2.4 % of the step; ViT-B-32: 0.5 %)
    assert modelled["train"] == pytest.approx(counted["train"], rel=0.03)


def test_hand_computed_tiny(tiny_model_config):
    # tiny-vit: 64 px / 16 = 16 patches + cls = 17 tokens, width 128, 2 layers, MLP 512.
    per_token = 4 * 128 * 128 + 2 * 128 * 512 + 2 * 17 * 128          # 65536+131072+4352
    image = 16 * 3 * 16 * 16 * 128 + 2 * 17 * per_token + 128 * 64     # patch embed + blocks + proj
    text = 2 * 32 * (4 * 128 * 128 + 2 * 128 * 512 + 2 * 32 * 128) + 128 * 64
    f = clip_flops(resolve_model_config(str(tiny_model_config)))
    assert f["image_fwd"] == 2 * image and f["text_fwd"] == 2 * text
    assert transformer_macs(128, 2, 17, 512) == 2 * 17 * per_token


def test_refuses_towers_it_cannot_count():
    timm_tower = {"embed_dim": 512, "vision_cfg": {"timm_model_name": "convnext_base"},
                  "text_cfg": {"width": 512, "layers": 12}}
    with pytest.raises(ValueError, match="vision_cfg"):
        clip_flops(timm_tower)
    # the trainer reports no MFU for them rather than failing
    assert train_flops_per_sample(timm_tower) is None
    assert train_flops_per_sample(resolve_model_config("RN50")) is None
