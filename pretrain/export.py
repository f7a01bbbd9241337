"""Export consolidated fp32 weights from a live engine at any ZeRO stage:

    RUN/model.pt                          open_clip state dict: open_clip.create_model(NAME, pretrained="model.pt")
                                          (custom JSON configs: open_clip.add_model_config(JSON) first; NAME = its stem)
    RUN/export/open_clip_config.json      {"model_cfg": ..., "preprocess_cfg": ...}
    RUN/export/open_clip_model.safetensors  -> open_clip.create_model_and_transforms("local-dir:RUN/export")

fp32 comes from the optimizer's master copy (bf16/fp16 runs train bf16 weights but keep fp32 masters):
ZeRO-1/2 and the bf16 optimizer through `safe_get_full_fp32_param`, ZeRO-3 gathered from all ranks.
Every rank must call `export_model` (ZeRO-3 gathers are collectives); rank 0 writes.
"""
import json
import os
from typing import Dict

import torch
import torch.distributed as dist

from clipforge.atomic import atomic_path, write_atomic

PREFIX = "clip."  # ContrastiveModel wraps the open_clip model as .clip


def _full_fp32(param: torch.nn.Parameter) -> torch.Tensor:
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    if param.requires_grad:
        full = safe_get_full_fp32_param(param)
        if full is not None:
            return full.detach().float().cpu()
    if hasattr(param, "ds_id"):  # ZeRO-3, frozen (LiT) or no optimizer mapping: gather the partition
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            return param.detach().float().cpu().clone()
    return param.detach().float().cpu().clone()  # ZeRO-0 fp32: the parameter is the master copy


def consolidated_state_dict(engine) -> Dict[str, torch.Tensor]:
    """open_clip key -> fp32 CPU tensor (same on every rank)."""
    module = engine.module
    state = {}
    for name, param in module.named_parameters():
        state[name] = _full_fp32(param)
    for name, buf in module.named_buffers():
        short = name.rsplit(".", 1)[-1]
        owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
        if short not in getattr(owner, "_non_persistent_buffers_set", set()):
            state[name] = buf.detach().cpu().clone()
    return {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}


def write_export(state: Dict[str, torch.Tensor], model_cfg: dict, preprocess_cfg: dict, run_dir: str,
                 folder: str = "export", model_pt: bool = True) -> str:
    """model.pt (unless model_pt=False) + RUN/<folder>/ (local-dir), each written to a temp name and renamed
    into place. The EMA weights go to RUN/export-ema/ alone."""
    from safetensors.torch import save_file

    os.makedirs(run_dir, exist_ok=True)
    if model_pt:
        with atomic_path(os.path.join(run_dir, "model.pt")) as tmp:
            torch.save(state, tmp)
    export_dir = os.path.join(run_dir, folder)
    os.makedirs(export_dir, exist_ok=True)
    with atomic_path(os.path.join(export_dir, "open_clip_model.safetensors")) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, tmp)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    write_atomic(os.path.join(export_dir, "open_clip_config.json"), json.dumps(config, indent=2))
    hf_dir = model_cfg["text_cfg"].get("hf_tokenizer_name")
    if hf_dir and os.path.isdir(hf_dir):
        # open_clip's get_tokenizer("local-dir:X") reads an HF tokenizer from X itself.
        from transformers import AutoTokenizer
        AutoTokenizer.from_pretrained(hf_dir).save_pretrained(export_dir)
    return export_dir


def frozen_fp32(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The frozen (locked-tower) parameters as they are before DeepSpeed casts the module to bf16/fp16:
    no optimizer keeps an fp32 master of a parameter it does not train, so without this copy the export
    would carry a pretrained tower rounded to 8 mantissa bits (call before build_engine)."""
    return {name[len(PREFIX):]: p.detach().float().cpu().clone() for name, p in model.named_parameters()
            if not p.requires_grad and name.startswith(PREFIX)}


def export_model(engine, model_cfg: dict, preprocess_cfg: dict, run_dir: str, folder: str = "export",
                 model_pt: bool = True, frozen: Dict[str, torch.Tensor] = None) -> None:
    """frozen: `frozen_fp32(model)` of a bf16/fp16 run: the locked tower's exact weights."""
    state = consolidated_state_dict(engine)
    state.update(frozen or {})
    if dist.get_rank() == 0:
        write_export(state, model_cfg, preprocess_cfg, run_dir, folder, model_pt)
    dist.barrier()
