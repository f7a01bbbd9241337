"""Preprocessing both sides share: the model's preprocess_cfg (what the export's open_clip_config.json holds),
open_clip's val transform of it (eval: the pixels CLIP_benchmark feeds the same model), and the on-device
normalisation of the loader's uint8 batches (training: 4x less to copy than float32).

    pp = preprocess_config(model_cfg)          # {"size", "mean", "std", "interpolation", "resize_mode"}
    transform = val_transform(pp)              # PIL image -> float [3, H, W]
    x = images_to_input(uint8_images, pp["mean"], pp["std"], engine)
"""
from dataclasses import asdict
from typing import Any, Dict

import torch
from open_clip.transform import PreprocessCfg, image_transform_v2

PREPROCESS_KEYS = ("size", "mean", "std", "interpolation", "resize_mode")


def preprocess_config(model_cfg: Dict[str, Any]) -> Dict[str, Any]:
    size = model_cfg["vision_cfg"].get("image_size", 224)
    base = asdict(PreprocessCfg())
    return {"size": size, "mean": list(base["mean"]), "std": list(base["std"]),
            "interpolation": base["interpolation"], "resize_mode": base["resize_mode"]}


def val_transform(preprocess_cfg: Dict[str, Any]):
    """open_clip's own val transform (image_transform_v2) of a preprocess_cfg dict (extra keys ignored)."""
    return image_transform_v2(PreprocessCfg(**{k: preprocess_cfg[k] for k in PREPROCESS_KEYS if k in preprocess_cfg}),
                              is_train=False)


def images_to_input(images: torch.Tensor, mean, std, engine) -> torch.Tensor:
    """uint8 [b,3,H,W] -> normalised float in the engine's dtype, on its device (4x less to copy than
    float32; bf16 on CPU is not cast by DeepSpeed, so we cast here)."""
    dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float16 if engine.fp16_enabled() else torch.float32
    x = images.to(engine.device, non_blocking=True).float().div_(255.0)
    mean_t = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return ((x - mean_t) / std_t).to(dtype)
