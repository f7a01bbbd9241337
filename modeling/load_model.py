"""Load any model `clipforge eval --model` accepts, as an open_clip module + tokenizer + val transform.

    m = load_model("runs/demo")                 # RUN/export/ (local-dir), else RUN/model.pt, else latest checkpoint
    m = load_model("local-dir:runs/demo/export")  # or the bare export dir
    m = load_model("runs/demo/checkpoints")     # DeepSpeed checkpoint dir (any ZeRO stage), or one tag under it
    m = load_model("model.pt", model_config="configs/models/tiny-vit.json")
    m = load_model("ViT-B-32", pretrained="weights.pt")   # an open_clip name + a local weights file

The val transform is open_clip's own (image_transform_v2 of the model's preprocess_cfg), so the pixels are
the ones CLIP_benchmark feeds the same model. Weights load with torch.load(weights_only=True); DeepSpeed
checkpoints are consolidated with deepspeed.utils.zero_to_fp32. A run's model config comes from its
config.yaml via modeling.config / modeling.model (never pretrain).
"""
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import open_clip
import torch

from clipforge.errors import UserError
from clipforge.modeling.config import load_config
from clipforge.modeling.model import final_model_config, instantiate, open_clip_state_dict, resolve_model_config, tokenizer_for
from clipforge.modeling.preprocess import preprocess_config, val_transform


class ModelLoadError(UserError, ValueError):
    """The --model argument cannot be resolved or loaded; the message says what to give instead."""


@dataclass
class LoadedModel:
    model: torch.nn.Module  # open_clip CLIP / CustomTextCLIP, eval mode: encode_image, encode_text
    tokenizer: Callable
    transform: Callable  # PIL image -> float tensor [3, H, W]
    preprocess_cfg: Dict[str, Any]
    name: str  # for the JSON's "model"
    pretrained: str  # for the JSON's "pretrained": where the weights came from


def _export_dir(path: str) -> Optional[str]:
    return path if os.path.isfile(os.path.join(path, "open_clip_config.json")) else None


def _from_local_dir(path: str) -> LoadedModel:
    spec = f"local-dir:{path}"
    try:
        model, _, transform = open_clip.create_model_and_transforms(spec)
        tokenizer = open_clip.get_tokenizer(spec)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelLoadError(f"--model {path}: open_clip cannot load this export ({e})") from None
    return LoadedModel(model.eval(), tokenizer, transform, dict(model.visual.preprocess_cfg), path, "local-dir")


def _run_config_for(path: str):
    """The config.yaml of the run that owns `path` (it, or up to three folders above)."""
    here = os.path.abspath(path if os.path.isdir(path) else os.path.dirname(path))
    for _ in range(4):
        candidate = os.path.join(here, "config.yaml")
        if os.path.isfile(candidate):
            return load_config(candidate)
        here = os.path.dirname(here)
    return None


def _model_cfg(path: str, model_config: Optional[str]) -> Dict[str, Any]:
    """Model-config dict: --model-config (name or JSON), a sibling export/, or the run's config.yaml."""
    if model_config:
        return resolve_model_config(model_config)
    sibling = os.path.join(os.path.dirname(os.path.abspath(path)), "export", "open_clip_config.json")
    if os.path.isfile(sibling):
        return resolve_model_config(sibling)
    run_cfg = _run_config_for(path)
    if run_cfg is not None:
        return final_model_config(run_cfg.model, run_cfg.loss, run_cfg.train.stages)
    raise ModelLoadError(f"--model {path}: weights without a model config; pass --model-config NAME_OR_JSON "
                         "(e.g. ViT-B-32 or configs/models/tiny-vit.json) or keep the run's config.yaml / export/")


def _build(cfg: Dict[str, Any], state: Dict[str, torch.Tensor], name: str, source: str) -> LoadedModel:
    model = instantiate(cfg, hf_pretrained=False)
    missing, unexpected = model.load_state_dict(open_clip_state_dict(state), strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"--model {source}: weights do not fit the model config ({len(missing)} missing keys "
                             f"e.g. {missing[:3]}, {len(unexpected)} unexpected e.g. {unexpected[:3]}); "
                             "check --model-config")
    pp = preprocess_config(cfg)
    transform = val_transform(pp)
    return LoadedModel(model.eval(), tokenizer_for(cfg), transform, pp, name, source)


def _load_pt(path: str) -> Dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle payloads refused by weights_only, truncated files, ...
        raise ModelLoadError(f"--model {path}: not a loadable state dict ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"--model {path}: expected a dict of tensors (a state dict)")
    return state


def _deepspeed_dir(path: str):
    """(checkpoint dir, tag) when `path` is a DeepSpeed checkpoint folder or one tag inside it."""
    if os.path.isfile(os.path.join(path, "latest")):
        return path, None
    if any(n.endswith("model_states.pt") for n in os.listdir(path)):
        return os.path.dirname(os.path.abspath(path)), os.path.basename(os.path.abspath(path))
    return None


def _from_deepspeed(ckpt_dir: str, tag: Optional[str], model_config: Optional[str], source: str) -> LoadedModel:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    cfg = _model_cfg(ckpt_dir, model_config)
    try:
        state = get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=tag)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelLoadError(f"--model {source}: cannot consolidate this DeepSpeed checkpoint ({e})") from None
    return _build(cfg, state, source, f"deepspeed:{tag or 'latest'}")


def load_model(spec: str, model_config: Optional[str] = None, pretrained: Optional[str] = None) -> LoadedModel:
    if spec.startswith("local-dir:") and pretrained is None:
        return _from_local_dir(spec[len("local-dir:"):])
    if os.path.isdir(spec):
        if _export_dir(spec):
            return _from_local_dir(spec)
        if _export_dir(os.path.join(spec, "export")):
            return _from_local_dir(os.path.join(spec, "export"))
        if os.path.isfile(os.path.join(spec, "model.pt")):
            pt = os.path.join(spec, "model.pt")
            return _build(_model_cfg(pt, model_config), _load_pt(pt), spec, "model.pt")
        ds = _deepspeed_dir(spec) or (_deepspeed_dir(os.path.join(spec, "checkpoints"))
                                      if os.path.isdir(os.path.join(spec, "checkpoints")) else None)
        if ds:
            return _from_deepspeed(ds[0], ds[1], model_config, spec)
        raise ModelLoadError(f"--model {spec}: a folder with no export/ (open_clip_config.json), model.pt or "
                             "DeepSpeed checkpoint (checkpoints/latest); has the run saved anything yet?")
    if pretrained is not None:  # an open_clip model name (or model-config JSON) + a local weights file
        if not os.path.isfile(pretrained):
            raise ModelLoadError(f"--pretrained {pretrained}: no such file (hub tags need the network; give a file)")
        return _build(_model_cfg(spec, spec), _load_pt(pretrained), spec, pretrained)
    if os.path.isfile(spec):
        return _build(_model_cfg(spec, model_config), _load_pt(spec), spec, os.path.basename(spec))
    raise ModelLoadError(f"--model {spec}: not a run dir, export dir, checkpoint dir or file; an open_clip model "
                         "name needs --pretrained FILE")
