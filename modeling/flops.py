"""Model FLOPs of an open_clip ViT CLIP, from its config alone (no torch, no weights), and the GPUs' peak FLOP/s:
the one count and the one peak table behind the trainer's MFU (pretrain/metrics.py) and the benchmarks'
(bench/gpu.py, bench/sizing_tables.py).

Counts multiply-adds of every matmul and counts each as 2 FLOPs; layer norms, softmax, GELU and
the token-embedding lookup are not counted (they are < 1% and not what tensor cores do). This
is the convention of open_clip's docs/model_profile.csv (fvcore), whose figures it reproduces:
ViT-B-32 image 8.82 GFLOPs, text 5.96; ViT-L-14 162.03 / 13.30 (tests/pretrain/test_flops.py, which
also checks it against torch's own FlopCounterMode).

Per transformer layer, per token, with width w, MLP hidden m and n tokens:
    q,k,v,out projections 4·w²   MLP 2·w·m   attention scores QKᵀ and P·V 2·n·w   (MACs)
Training = forward + backward ≈ 3× forward (backward computes grads of inputs and of weights).
The B×B logits of the loss are left out: 3·2·B·d FLOPs per sample, 0.1 GFLOPs at B=32,768 and d=512
next to 44 GFLOPs for ViT-B/32's towers.
"""
from typing import Dict, Optional

# Dense bf16 tensor-core peak FLOP/s per GPU (NVIDIA's datasheets, SXM parts), the MFU denominator. Matched by
# substring of the device name in this order, so "A100" is found before "A10".
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}

# open_clip's CLIPTextCfg defaults, for configs that leave them out
TEXT_DEFAULTS = {"context_length": 77, "width": 512, "layers": 12, "mlp_ratio": 4.0}


def peak_bf16_flops(device_name: str) -> Optional[float]:
    """The datasheet peak of a GPU named like torch.cuda.get_device_name ("NVIDIA H100 80GB HBM3"); None for others."""
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in device_name), None)


def _pair(x) -> tuple:
    return tuple(x) if isinstance(x, (list, tuple)) else (x, x)


def uncounted_reason(cfg: Dict) -> Optional[str]:
    """Why this model's FLOPs are not counted here (a timm, ResNet or Hugging Face tower), or None."""
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    if "timm_model_name" in v or not v.get("patch_size") or isinstance(v.get("layers"), (list, tuple)):
        return "vision_cfg: only open_clip's own ViT towers are counted (no timm/ResNet)"
    if "hf_model_name" in t:
        return "text_cfg: Hugging Face text towers are not counted; use open_clip's own"
    return None


def vision_patches(vcfg: Dict) -> int:
    h, w = _pair(vcfg.get("image_size", 224))
    ph, pw = _pair(vcfg["patch_size"])
    return (h // ph) * (w // pw)


def vision_tokens(vcfg: Dict) -> int:
    """Sequence length of a ViT tower: its patches, plus the class token unless the config drops it."""
    return vision_patches(vcfg) + (0 if vcfg.get("no_cls_token") else 1)


def transformer_macs(width: int, layers: int, tokens: int, mlp_hidden: int) -> int:
    """MACs of `layers` pre-norm transformer blocks over one sequence of `tokens` tokens."""
    per_token = 4 * width * width + 2 * width * mlp_hidden + 2 * tokens * width
    return layers * tokens * per_token


def vision_macs(vcfg: Dict, embed_dim: int) -> int:
    ph, pw = _pair(vcfg["patch_size"])
    width, layers = vcfg["width"], vcfg["layers"]
    mlp_hidden = int(width * vcfg.get("mlp_ratio", 4.0))
    patch_embed = vision_patches(vcfg) * 3 * ph * pw * width   # conv1 as a matmul
    proj = width * embed_dim                                    # pooled token -> embedding
    return patch_embed + transformer_macs(width, layers, vision_tokens(vcfg), mlp_hidden) + proj


def text_macs(tcfg: Dict, embed_dim: int) -> int:
    t = {**TEXT_DEFAULTS, **tcfg}
    mlp_hidden = int(t["width"] * t["mlp_ratio"])
    # the projection is applied to the one pooled (end-of-text) token only
    return transformer_macs(t["width"], t["layers"], t["context_length"], mlp_hidden) + t["width"] * embed_dim


def clip_flops(cfg: Dict) -> Dict[str, float]:
    """FLOPs per sample (one image + one caption) of an open_clip model config dict; ValueError for
    towers this model does not count (see uncounted_reason)."""
    reason = uncounted_reason(cfg)
    if reason:
        raise ValueError(reason)
    image = 2 * vision_macs(cfg["vision_cfg"], cfg["embed_dim"])
    text = 2 * text_macs(cfg["text_cfg"], cfg["embed_dim"])
    return {"image_fwd": image, "text_fwd": text, "fwd": image + text, "train": 3 * (image + text)}


def train_flops_per_sample(cfg: Dict) -> Optional[float]:
    """Training FLOPs of one image-text pair, or None for towers not counted (MFU is then not reported)."""
    return None if uncounted_reason(cfg) else clip_flops(cfg)["train"]
