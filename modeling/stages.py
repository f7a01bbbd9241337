"""A run in stages (progressive resolution, as CLIPA and FLIP train): `train.stages`, e.g. low resolution, short
captions and patch dropout first, then a full-resolution fine-tune:

    train:
      steps: 10000                 # the whole run: the stages' sum (the lr schedule spans every stage)
      stages:
        - {steps: 9000, image_size: 112, context_length: 32, patch_dropout: 0.5}
        - {steps: 1000}            # null keys are the run's: model.name's 224 px and 77 tokens, model.patch_dropout

Torch-free: the preflight resolves the stages before anything starts, the model factory builds the network of
the LAST stage (`with_last_stage`: that is what the run exports), and pretrain/stages.py runs the earlier
stages on those same parameters at their own image size and context length.
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence

from clipforge.modeling.config_checks import ConfigError

DEFAULT_IMAGE_SIZE, DEFAULT_CONTEXT, DEFAULT_PATCH = 224, 77, 16  # open_clip's CLIPVisionCfg / CLIPTextCfg defaults


@dataclass(frozen=True)
class Stage:
    index: int
    start: int  # steps done before it: the stage runs steps start+1 .. end (1-based, as metrics.jsonl counts them)
    end: int
    image_size: int
    context_length: int
    patch_dropout: float


def _image_size(vision_cfg: Dict) -> int:
    size = vision_cfg.get("image_size", DEFAULT_IMAGE_SIZE)
    return size if isinstance(size, int) else size[0]


def _is_vit(vision_cfg: Dict) -> bool:
    """open_clip's own VisionTransformer: `layers` an int (a list is a ModifiedResNet), no timm trunk."""
    return isinstance(vision_cfg.get("layers", 12), int) and not vision_cfg.get("timm_model_name")


def _text_takes_any_length(model_cfg: Dict, hf_text: bool) -> bool:
    """The built-in CLIP text tower (pretrain/stages.py reads the first L positions) and HF towers (their
    attention mask covers any length) run a shorter context; open_clip's custom TextTransformer does not."""
    return hf_text or "hf_model_name" in model_cfg["text_cfg"] or not model_cfg.get("custom_text", False)


def resolve_stages(stages: Sequence, model_cfg: Dict, model) -> List[Stage]:
    """stages: train.stages (StageConfig list, non-empty); model_cfg: model.name's open_clip config (before any
    stage is applied); model: the run's ModelConfig (patch_dropout, hf_text_dir). -> every stage with the run's
    values filled in. Raises ConfigError (one line) where the model cannot run a stage."""
    vision = model_cfg["vision_cfg"]
    size, context = _image_size(vision), model_cfg["text_cfg"].get("context_length", DEFAULT_CONTEXT)
    resolved, start = [], 0
    for i, s in enumerate(stages):
        resolved.append(Stage(i, start, start + s.steps, size if s.image_size is None else s.image_size,
                              context if s.context_length is None else s.context_length,
                              model.patch_dropout if s.patch_dropout is None else s.patch_dropout))
        start += s.steps
    last = resolved[-1]
    for stage in resolved:
        key = f"train.stages[{stage.index}]"
        if _is_vit(vision) and stage.image_size % vision.get("patch_size", DEFAULT_PATCH):
            raise ConfigError(f"{key}.image_size={stage.image_size}: not a multiple of {model.name}'s patch size "
                              f"{vision.get('patch_size', DEFAULT_PATCH)} (the last patches would be cut off)")
        if not _is_vit(vision) and stage.image_size != last.image_size:
            raise ConfigError(f"{key}.image_size={stage.image_size}: another image size than the last stage's "
                              f"{last.image_size} needs open_clip's ViT image tower (its positional embedding is "
                              f"resized), not {model.name}'s; give every stage the same image_size")
        if stage.context_length > last.context_length:
            raise ConfigError(f"{key}.context_length={stage.context_length}: longer than the last stage's "
                              f"{last.context_length} (the model is built with the last stage's positions and a "
                              "stage reads the first L of them)")
        if stage.context_length != last.context_length and not _text_takes_any_length(model_cfg, model.hf_text_dir
                                                                                        is not None):
            raise ConfigError(f"{key}.context_length={stage.context_length}: {model.name}'s custom text tower "
                              "runs one context length only; give every stage the same context_length")
    return resolved


def with_last_stage(model_cfg: Dict, last: Stage) -> Dict:
    """The model config of the run's network (in place): the last stage's image size, context length and patch
    dropout. The export carries it, so `clipforge eval` of the export sees the final resolution."""
    model_cfg["vision_cfg"]["image_size"] = last.image_size
    model_cfg["text_cfg"]["context_length"] = last.context_length
    if last.patch_dropout > 0:
        model_cfg["vision_cfg"]["patch_dropout"] = last.patch_dropout
    else:
        model_cfg["vision_cfg"].pop("patch_dropout", None)
    return model_cfg


def stage_at(stages: Sequence[Stage], done: int) -> Stage:
    """The stage of the next step when `done` steps are done (past the end: the last stage)."""
    return next((s for s in stages if done < s.end), stages[-1])
