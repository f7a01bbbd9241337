"""A run in stages in the trainer (train.stages; the schedule is modeling/stages.py's): the model runs any stage's
image size and context length, and the loop enters each stage at its first step.

Why the parameters never change shape. The model is built at the LAST stage's size (a [g*g + 1, w] image
positional embedding, g = its grid); an earlier stage runs those same parameters at its own size, resized in the
forward (as FlexiViT and open_clip's dynamic image size do). Replacing the parameter at the boundary instead
would mean a new DeepSpeed engine (ZeRO partitions flat buffers laid out by parameter shapes), Adam moments of
the old grid that fit no new one, and checkpoints whose shapes depend on the stage they were written in. Resized
in the forward, every stage trains one set of parameters: the optimizer state is kept exactly across the
boundary at every ZeRO stage (-3 included: the parameter is gathered in its module's forward, where the resize
runs), a checkpoint of any stage resumes into the same engine, and the export is the parameters as they are, at
the final resolution. An earlier stage trains the embedding through the resize (its gradient is the resize's
adjoint of the low-resolution one).

Image tower: the grid comes from the input (conv1's output) and the positional embedding is resized with
open_clip's `resize_pos_embed` math (class token kept, bicubic, antialiased, align_corners=False), so the
embedding a stage sees is exactly open_clip's interpolation of the current parameter; at the last stage's grid
it is the parameter itself. Text: the first L positions and the [L, L] corner of the causal mask (open_clip's own
TextTransformer slices the same way), the tokenizer truncating to L (its last token stays end-of-text). Patch
dropout: the rate of the stage, set on the one PatchDropout module (no parameters).
"""
import copy
import sys
import types
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from open_clip.model import CLIP, text_global_pool
from open_clip.transformer import PatchDropout, _expand_token
from torch.nn import functional as F

from clipforge.modeling.model import ModelBundle, resolve_model_config, tokenizer_for
from clipforge.modeling.stages import Stage, resolve_stages, stage_at


def resized_pos_embed(pos: torch.Tensor, grid: Tuple[int, int], new_grid: Tuple[int, int]) -> torch.Tensor:
    """[1 + g0*g1, w] -> [1 + n0*n1, w]: open_clip.model.resize_pos_embed's math, differentiable (computed in
    fp32: CPU bicubic has no bf16 kernel everywhere). The same tensor when the grid does not change."""
    if tuple(grid) == tuple(new_grid):
        return pos
    cls, patches = pos[:1], pos[1:].float()
    patches = patches.reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=tuple(new_grid), mode="bicubic", antialias=True, align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(pos.dtype)
    return torch.cat([cls, patches])


def _embeds_at_input_grid(self, x: torch.Tensor) -> torch.Tensor:
    """open_clip 3.3.0's VisionTransformer._embeds with the positional embedding resized to the input's grid."""
    x = self.conv1(x)  # [b, width, n0, n1]
    grid = tuple(x.shape[-2:])
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [b, n0*n1, width]
    x = torch.cat([_expand_token(self.class_embedding, x.shape[0]).to(x.dtype), x], dim=1)
    x = x + resized_pos_embed(self.positional_embedding, self.grid_size, grid).to(x.dtype)
    x = self.patch_dropout(x)
    return self.ln_pre(x)


def _encode_text_first_positions(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """open_clip 3.3.0's CLIP.encode_text for tokens [b, L], L <= context_length: the first L positions and
    the [L, L] corner of the causal mask (at L = context_length the very same values as open_clip's)."""
    length = text.shape[1]
    cast_dtype = self.transformer.get_cast_dtype()
    x = self.token_embedding(text).to(cast_dtype)  # [b, L, width]
    x = x + self.positional_embedding[:length].to(cast_dtype)
    mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
    x = self.ln_final(self.transformer(x, attn_mask=mask))
    x = text_global_pool(x, text, self.text_pool_type, eos_token_id=getattr(self, "text_eos_id", None))
    if self.text_projection is not None:
        x = self.text_projection(x) if isinstance(self.text_projection, torch.nn.Linear) else x @ self.text_projection
    return F.normalize(x, dim=-1) if normalize else x


def run_at_any_size(clip: torch.nn.Module, stages: Sequence[Stage]) -> None:
    """Let the open_clip model run every stage (call before the engine is built): the image tower at the input's
    grid, the built-in text tower at the input's length (HF towers take any length as they are), a PatchDropout
    module when a stage drops patches (modeling/stages.py refused what a tower cannot run)."""
    last = stages[-1]
    if any(s.image_size != last.image_size for s in stages):
        clip.visual._embeds = types.MethodType(_embeds_at_input_grid, clip.visual)
    if any(s.context_length != last.context_length for s in stages) and isinstance(clip, CLIP):
        clip.encode_text = types.MethodType(_encode_text_first_positions, clip)
    if any(s.patch_dropout > 0 for s in stages) and isinstance(getattr(clip.visual, "patch_dropout", None),
                                                               torch.nn.Identity):
        clip.visual.patch_dropout = PatchDropout(0.0)  # off until a stage sets its rate


def set_patch_dropout(clip: torch.nn.Module, rate: float) -> None:
    module = getattr(clip.visual, "patch_dropout", None)
    if isinstance(module, PatchDropout):
        module.prob = rate


def _with_context(model_cfg: Dict, context_length: int) -> Dict:
    cfg = copy.deepcopy(model_cfg)
    cfg["text_cfg"]["context_length"] = context_length
    return cfg


class StageSwitch:
    """Which stage the loop is in. The loader is built for the stage of the next step (`loader_bundle`: the
    stage's image size and tokenizer); `enter`, before every step, sets the stage's patch dropout and, at the
    first step of a stage, restarts the loader at its position with the stage's transform: the data position
    continues (the global sample index keeps counting), as a resume at that step builds it. A rollback restarts
    the loader before it winds the step back: `enter` then rebuilds it for the stage it went back to."""

    def __init__(self, stages: List[Stage], bundle: ModelBundle, rank: int):
        self.stages, self.bundle, self.rank = stages, bundle, rank
        self._tokenizers = {stages[-1].context_length: bundle.tokenizer}
        for stage in stages:
            if stage.context_length not in self._tokenizers:
                self._tokenizers[stage.context_length] = tokenizer_for(_with_context(bundle.model_cfg,
                                                                                     stage.context_length))
        self.loader_stage: Optional[Stage] = None
        self.model_stage: Optional[Stage] = None

    @classmethod
    def install(cls, cfg, bundle: ModelBundle, rank: int) -> Optional["StageSwitch"]:
        """None without train.stages; else the switch, with the model made to run every stage."""
        if not cfg.train.stages:
            return None
        stages = resolve_stages(cfg.train.stages, resolve_model_config(cfg.model.name), cfg.model)
        run_at_any_size(bundle.clip, stages)
        return cls(stages, bundle, rank)

    def loader_bundle(self, done: int) -> ModelBundle:
        """The bundle as the loader of the next step's stage sees it (`done` steps done)."""
        self.loader_stage = stage = stage_at(self.stages, done)
        view = copy.copy(self.bundle)  # a shallow copy keeps what others attached to the bundle
        view.image_size, view.tokenizer = stage.image_size, self._tokenizers[stage.context_length]
        return view

    def enter(self, done: int, feed) -> None:
        """Before the step after `done`: that step's stage for the model and the loader (a pretrain.feed.DataFeed)."""
        stage = stage_at(self.stages, done)
        if stage != self.model_stage:
            set_patch_dropout(self.bundle.clip, stage.patch_dropout)
            self.model_stage = stage
            if self.rank == 0:
                print(f"stage {stage.index + 1}/{len(self.stages)}, steps {stage.start + 1}-{stage.end}: images "
                      f"{stage.image_size} px, context {stage.context_length} tokens, patch dropout "
                      f"{stage.patch_dropout:g}", file=sys.stderr)
        if stage != self.loader_stage:
            feed.restart(feed.state_dict())
