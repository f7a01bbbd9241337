"""Model factory: any open_clip model name, an open_clip model-config JSON, or an HF text tower from
a local directory, wrapped so that the engine's forward returns everything the loss needs.

    bundle = build_model(cfg.model, cfg.loss)
    image_features, text_features, logit_scale, logit_bias = bundle.model(images, tokens)

The full model-config dict we instantiate is kept in the bundle: the export writes it verbatim into
open_clip_config.json, so `open_clip.create_model("local-dir:RUN/export")` rebuilds the same network.
"""
import copy
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import open_clip
import torch
from open_clip.model import CLIP, CustomTextCLIP
from torch import nn
from torch.nn import functional as F

from clipforge.errors import UserError
from clipforge.modeling.config import LossConfig, ModelConfig
from clipforge.modeling.preprocess import preprocess_config
from clipforge.modeling.stages import resolve_stages, with_last_stage


class ModelConfigError(UserError, ValueError):
    """The model name / JSON / HF directory cannot be resolved; the message says what to do."""


class ContrastiveModel(nn.Module):
    """Wraps an open_clip model. forward(images, tokens) -> (image_features, text_features, logit_scale,
    logit_bias): L2-normalised fp32 features [b, d] and the exp'd temperature (the loss caps it).

    Why a wrapper: one fp32 output contract for every tower and precision, and calling `self.clip(...)` (its forward, not encode_text) lets ZeRO-3 gather the parameters that CLIP
    owns directly (positional_embedding, text_projection, logit_scale)."""

    def __init__(self, clip: nn.Module, frozen: Sequence[nn.Module] = ()):
        super().__init__()
        self.clip = clip
        # Locked towers stay in eval mode: a locked tower is then a fixed function (no dropout), so its
        # stored outputs (pretrain/text_cache.py) are exactly what it would compute live. A plain list,
        # not registered: the modules are already children of clip.
        self._frozen = list(frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    def forward(self, images: Optional[torch.Tensor] = None, tokens: Optional[torch.Tensor] = None,
                text_vectors: Optional[torch.Tensor] = None):
        """text_vectors [n, d_text]: the locked text tower's stored outputs (locked_text_vectors) instead of
        tokens: only its trainable head runs."""
        if text_vectors is not None:
            # clip(images, None) still runs CLIP's own forward: ZeRO-3 gathers logit_scale/bias there.
            out = self.clip(images, None)
            text = F.normalize(self.clip.text.proj(text_vectors), dim=-1)
            out = (out[0], text, *out[2:])
        else:
            out = self.clip(images, tokens)
        image_features, text_features, scale = out[0], out[1], out[2]
        bias = out[3].float() if len(out) > 3 else None
        # No clamp here: torch.clamp cuts the gradient at the cap, freezing the temperature; the loss
        # caps the value and keeps the gradient that lowers it (pretrain.loss._CapScale).
        scale = scale.float()
        image_features = image_features.float() if image_features is not None else None
        text_features = text_features.float() if text_features is not None else None
        return image_features, text_features, scale, bias


@dataclass
class ModelBundle:
    model: ContrastiveModel
    model_cfg: Dict[str, Any]  # the full open_clip model config (what open_clip_config.json holds)
    preprocess_cfg: Dict[str, Any]  # size, mean, std, interpolation, resize_mode
    tokenizer: Any  # callable: list[str] -> int64 [n, context_length]
    image_size: int
    # (name, identity) of the locked text tower's stored outputs the loader reads (pretrain/text_cache.py).
    text_store: Optional[tuple] = None
    # What the loader hands a distillation teacher (data_pipeline/stream/teacher.py TeacherInputs; pretrain/distill.py).
    teacher_inputs: Optional[Any] = None

    @property
    def clip(self) -> nn.Module:
        return self.model.clip


def embed_dim(clip: nn.Module) -> int:
    """Width d of the joint embedding of an open_clip model (what a rank with no eval samples sizes its
    [0, d] tensors by). ViT and ModifiedResNet towers carry it as `output_dim`; open_clip's TimmModel
    does not, its head's last Linear does (`out_features` survives ZeRO-3 partitioning, shapes do not)."""
    visual = clip.visual
    if hasattr(visual, "output_dim"):
        return visual.output_dim
    return [m for m in visual.head.modules() if isinstance(m, nn.Linear)][-1].out_features


def open_clip_module(model: nn.Module) -> nn.Module:
    """The open_clip model inside a DeepSpeed engine / DDP (.module) and the ContrastiveModel wrapper (.clip):
    what encode_image / encode_text are called on. An open_clip model is returned as it is."""
    while True:
        inner = getattr(model, "module", None)
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, ContrastiveModel):
            model = model.clip
        else:
            return model


def open_clip_state_dict(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A state dict of the engine / ContrastiveModel (module.clip.*) -> the bare keys open_clip loads."""
    for prefix in ("module.", "clip."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def resolve_model_config(name: str) -> Dict[str, Any]:
    """An open_clip built-in name or a path to a model-config JSON -> config dict (a copy)."""
    if name.endswith(".json") or os.path.sep in name:
        if not os.path.isfile(name):
            raise ModelConfigError(f"model.name={name!r}: no such model-config JSON file")
        try:
            with open(name, encoding="utf-8") as f:
                cfg = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise ModelConfigError(f"model.name={name!r}: not a readable JSON model config ({err})") from None
        cfg = cfg.get("model_cfg", cfg)  # also accept an open_clip_config.json (an export)
        if "vision_cfg" not in cfg or "text_cfg" not in cfg or "embed_dim" not in cfg:
            raise ModelConfigError(f"model.name={name!r}: an open_clip model config needs embed_dim, "
                                   "vision_cfg and text_cfg")
        return cfg
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ModelConfigError(f"model.name={name!r} is neither an open_clip model (see open_clip.list_models()) "
                               "nor a path to a model-config JSON")
    return copy.deepcopy(cfg)


def _hf_text_cfg(hf_dir: str, context_length: int) -> Dict[str, Any]:
    # open_clip's HF text tower conventions (as in its roberta-ViT-B-32.json): mean pooling + MLP head.
    hf_dir = os.path.abspath(hf_dir)
    return {"hf_model_name": hf_dir, "hf_tokenizer_name": hf_dir, "hf_proj_type": "mlp",
            "hf_pooler_type": "mean_pooler", "context_length": context_length}


def final_model_config(model_cfg: ModelConfig, loss_cfg: LossConfig, stages: Sequence = ()) -> Dict[str, Any]:
    """The exact dict the model is built from: base config + patch dropout, HF tower, loss parameters; with
    train.stages (`stages`), the last stage's image size, context length and patch dropout (modeling/stages.py)."""
    cfg = resolve_model_config(model_cfg.name)
    last = resolve_stages(stages, cfg, model_cfg)[-1] if stages else None
    if model_cfg.patch_dropout > 0:
        cfg["vision_cfg"]["patch_dropout"] = model_cfg.patch_dropout
    if model_cfg.hf_text_dir is not None:
        context = cfg["text_cfg"].get("context_length", 77)
        cfg["text_cfg"] = _hf_text_cfg(model_cfg.hf_text_dir, context)
    cfg["init_logit_scale"] = loss_cfg.init_logit_scale
    # SigLIP needs a learnable bias (open_clip #1076: dropping it trains a different loss).
    if loss_cfg.kind == "siglip":
        cfg["init_logit_bias"] = loss_cfg.init_logit_bias
    else:
        cfg.pop("init_logit_bias", None)
    return cfg if last is None else with_last_stage(cfg, last)


def instantiate(model_cfg: Dict[str, Any], hf_pretrained: bool = True) -> nn.Module:
    """open_clip's own class choice (factory.create_model): CustomTextCLIP for custom/HF text towers."""
    cfg = copy.deepcopy(model_cfg)
    is_hf = "hf_model_name" in cfg.get("text_cfg", {})
    if is_hf:
        cfg["text_cfg"]["hf_model_pretrained"] = hf_pretrained
    custom_text = cfg.pop("custom_text", False) or is_hf
    return (CustomTextCLIP if custom_text else CLIP)(**cfg)


def tokenizer_for(model_cfg: Dict[str, Any]):
    text_cfg = model_cfg["text_cfg"]
    context = text_cfg.get("context_length", 77)
    if text_cfg.get("hf_tokenizer_name"):
        return open_clip.tokenizer.HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context)
    return open_clip.tokenizer.SimpleTokenizer(context_length=context)


def apply_locking(clip: nn.Module, model_cfg: ModelConfig) -> List[nn.Module]:
    """LiT: freeze a tower (optionally keeping its last N layer groups trainable). -> the fully frozen
    modules, which the model keeps in eval mode."""
    if model_cfg.lock_image:
        clip.lock_image_tower(unlocked_groups=model_cfg.lock_image_unlocked_groups, freeze_bn_stats=False)
    if model_cfg.lock_text:
        try:
            clip.lock_text_tower(unlocked_layers=model_cfg.lock_text_unlocked_layers, freeze_layer_norm=True)
        except KeyError:  # open_clip 3.3.0 has no layer map for some HF architectures (e.g. BERT/MiniLM)
            _lock_hf_text(clip.text, model_cfg.lock_text_unlocked_layers)
    if text_is_cacheable(model_cfg):
        return [clip.text.transformer]
    return []


def text_is_cacheable(model_cfg: ModelConfig) -> bool:
    """An HF text tower locked whole: its pooled output is a fixed function of the tokens (stored once,
    pretrain/text_cache.py); only its projection head trains."""
    return model_cfg.hf_text_dir is not None and model_cfg.lock_text and model_cfg.lock_text_unlocked_layers == 0


@torch.no_grad()
def locked_text_vectors(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The locked HF tower's pooled output [n, d_text] -- open_clip's HFTextEncoder.forward up to its
    `proj` head, step for step (so head(vectors) is exactly the live text tower's output)."""
    text = clip.text
    attention_mask = (tokens != text.config.pad_token_id).long()
    return text.pooler(text.transformer(input_ids=tokens, attention_mask=attention_mask), attention_mask)


def _lock_hf_text(text: nn.Module, unlocked_layers: int) -> None:
    """Freeze an HF encoder (BERT-style `encoder.layer` list) except its last N layers; the projection
    head stays trainable, as in open_clip's own HF lock."""
    encoder = getattr(text.transformer, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None:
        raise ModelConfigError(f"model.lock_text: cannot find the layers of HF model {type(text.transformer).__name__} "
                               "(expected .encoder.layer); set model.lock_text=false")
    for param in text.transformer.parameters():
        param.requires_grad = False
    for layer in list(layers)[len(layers) - unlocked_layers:] if unlocked_layers > 0 else []:
        for param in layer.parameters():
            param.requires_grad = True


def build_model(model_cfg: ModelConfig, loss_cfg: LossConfig, stages: Sequence = ()) -> ModelBundle:
    """Seed torch before calling this for a reproducible initialisation (every rank must agree). stages:
    train.stages (the model is the last stage's)."""
    cfg = final_model_config(model_cfg, loss_cfg, stages)
    clip = instantiate(cfg)
    model = ContrastiveModel(clip, frozen=apply_locking(clip, model_cfg))
    size = cfg["vision_cfg"].get("image_size", 224)
    size = size if isinstance(size, int) else size[0]
    return ModelBundle(model=model, model_cfg=cfg, preprocess_cfg=preprocess_config(cfg),
                       tokenizer=tokenizer_for(cfg), image_size=size)

