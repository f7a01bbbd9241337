"""Model FLOPs of an open_clip ViT CLIP, from its config alone (no torch, no weights).

Counts multiply-adds of every matmul and counts each as 2 FLOPs; layer norms, softmax, GELU and
the token-embedding lookup are not counted (they are < 1% and not what tensor cores do). This
is the convention of open_clip's docs/model_profile.csv (fvcore), whose figures it reproduces:
ViT-B-32 image 8.82 GFLOPs, text 5.96; ViT-L-14 162.03 / 13.30 (tests/bench/test_flops.py).

Per transformer layer, per token, with width w, MLP hidden m and n tokens:
    q,k,v,out projections 4·w²   MLP 2·w·m   attention scores QKᵀ and P·V 2·n·w   (MACs)
Training = forward + backward ≈ 3× forward (backward computes grads of inputs and of weights).
"""
from typing import Dict, Union


def _pair(x) -> tuple:
    return tuple(x) if isinstance(x, (list, tuple)) else (x, x)


def transformer_macs(width: int, layers: int, tokens: int, mlp_hidden: int) -> int:
    """MACs of `layers` pre-norm transformer blocks over one sequence of `tokens` tokens."""
    per_token = 4 * width * width + 2 * width * mlp_hidden + 2 * tokens * width
    return layers * tokens * per_token


def vision_macs(vcfg: Dict, embed_dim: int) -> int:
    if "timm_model_name" in vcfg or not vcfg.get("patch_size"):
        raise ValueError("vision_cfg: only open_clip's own ViT towers are counted (no timm/ResNet)")
    h, w = _pair(vcfg.get("image_size", 224))
    ph, pw = _pair(vcfg["patch_size"])
    width, layers = vcfg["width"], vcfg["layers"]
    patches = (h // ph) * (w // pw)
    tokens = patches + (0 if vcfg.get("no_cls_token") else 1)
    mlp_hidden = int(width * vcfg.get("mlp_ratio", 4.0))
    patch_embed = patches * 3 * ph * pw * width          # conv1 as a matmul
    proj = width * embed_dim                              # pooled token -> embedding
    return patch_embed + transformer_macs(width, layers, tokens, mlp_hidden) + proj


def text_macs(tcfg: Dict, embed_dim: int) -> int:
    if "hf_model_name" in tcfg:
        raise ValueError("text_cfg: Hugging Face text towers are not counted; use open_clip's own")
    width, layers, tokens = tcfg["width"], tcfg["layers"], tcfg.get("context_length", 77)
    mlp_hidden = int(width * tcfg.get("mlp_ratio", 4.0))
    # the projection is applied to the one pooled (end-of-text) token only
    return transformer_macs(width, layers, tokens, mlp_hidden) + width * embed_dim


def clip_flops(cfg: Dict) -> Dict[str, float]:
    """FLOPs per sample (one image + one caption) of an open_clip model config dict."""
    image = 2 * vision_macs(cfg["vision_cfg"], cfg["embed_dim"])
    text = 2 * text_macs(cfg["text_cfg"], cfg["embed_dim"])
    return {"image_fwd": image, "text_fwd": text, "fwd": image + text, "train": 3 * (image + text)}


def loss_flops_per_sample(global_batch: int, embed_dim: int) -> float:
    """Training FLOPs per sample of the B×B logits (fwd matmul + 2 in backward); tiny next to the
    towers (B=32,768, d=512: 0.1 GFLOPs vs 44 GFLOPs for ViT-B/32), so MFU leaves it out."""
    return 3 * 2 * global_batch * embed_dim


def model_config(name_or_cfg: Union[str, Dict]) -> Dict:
    """An open_clip config dict from a built-in name ("ViT-B-32"), a JSON path, or a dict."""
    if isinstance(name_or_cfg, dict):
        return name_or_cfg
    if str(name_or_cfg).endswith(".json"):
        import json
        with open(name_or_cfg) as f:
            return json.load(f)
    import open_clip
    cfg = open_clip.get_model_config(name_or_cfg)
    if cfg is None:
        raise ValueError(f"model {name_or_cfg!r}: not an open_clip model name or a .json config")
    return cfg
