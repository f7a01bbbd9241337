"""Model EMA (`model.ema_decay`): an exponential moving average of the fp32 master weights.

    ema = ModelEMA(engine, decay=0.999)       # after deepspeed.initialize (and after a resume)
    ema.update()                              # after every applied optimizer step
    with ema.swapped_in():                    # the masters hold the EMA weights (export)
        state = consolidated_state_dict(engine)

Kept where the masters are: each rank averages only the fp32 fragment of every parameter it owns
(ZeRO-1/2 and the bf16 optimizer: `_hp_mapping.hp_fragment`; ZeRO-3: its partition; ZeRO-0 fp32: the
parameter itself), so an update is one pass over 1/world of the weights with no communication, and
its precision is fp32 whatever the training precision (an EMA of bf16 weights at decay 0.999 would
round most updates away). Each rank saves its own shadow beside the checkpoint's DeepSpeed files
(checkpoint.py `per_rank`); a resumed run restores it exactly (tested at ZeRO-2 and ZeRO-3).

The decay warms up as (1 + n) / (10 + n), capped at `decay` (n = updates so far; timm's ModelEmaV2
scheme): a short run's EMA is not dominated by the random initial weights.

The periodic eval of the EMA weights (`eval.ema`) runs on `EMAEvalCopy`: a plain fp32 model filled from the
consolidated EMA state at every eval, the same gather the RUN/export-ema/ export does. Swapping the EMA into
the engine itself would not do: its forward reads the bf16 (ZeRO-1/2: also all-gathered) working copies,
which DeepSpeed refreshes from the masters only inside its optimizer step.
"""
import contextlib
from typing import Dict, List, Optional, Tuple

import torch

from clipforge.modeling.config import ConfigError
from clipforge.pretrain.export import consolidated_state_dict


def _master_view(param: torch.nn.Parameter) -> Optional[torch.Tensor]:
    """This rank's fp32 master fragment of `param` (a view DeepSpeed's optimizer updates in place), or None
    when this rank holds none of it."""
    if hasattr(param, "ds_id"):  # ZeRO-3
        from deepspeed.utils import safe_get_local_fp32_param
        return safe_get_local_fp32_param(param)
    mapping = getattr(param, "_hp_mapping", None)
    if mapping is not None:
        return mapping.hp_fragment
    if hasattr(param, "_hp_mapping"):  # mapped elsewhere: another rank owns every element
        return None
    return param.data  # ZeRO-0 fp32: DeepSpeed keeps no separate master


class ModelEMA:
    def __init__(self, engine, decay: float):
        self.engine, self.decay, self.updates = engine, decay, 0
        self.shadow: Dict[str, torch.Tensor] = {name: view.detach().float().clone() for name, view in self._views()}

    def _views(self) -> List[Tuple[str, torch.Tensor]]:
        # Looked up every time: a checkpoint load may rebuild DeepSpeed's flat buffers.
        out = []
        for name, param in self.engine.module.named_parameters():
            if param.requires_grad:
                view = _master_view(param)
                if view is not None and view.numel() > 0:
                    out.append((name, view))
        return out

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        decay = self.current_decay()
        for name, view in self._views():
            self.shadow[name].mul_(decay).add_(view.float(), alpha=1 - decay)
        self.updates += 1

    @contextlib.contextmanager
    def swapped_in(self):
        """The masters hold the EMA weights inside the block, their own values again after it."""
        saved = []
        with torch.no_grad():
            for name, view in self._views():
                saved.append((view, view.detach().clone()))
                view.copy_(self.shadow[name].to(view.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for view, value in saved:
                    view.copy_(value)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def full_state(self) -> dict:
        """The whole EMA, parameter by parameter (every rank calls it: gathers), for a checkpoint that resumes
        on another world size (pretrain/elastic.py), where this rank's fragments no longer fit."""
        from deepspeed.utils import safe_get_full_fp32_param

        with self.swapped_in():
            shadow = {name: safe_get_full_fp32_param(p).detach().float().cpu().clone()
                      for name, p in self.engine.module.named_parameters() if p.requires_grad}
        return {"decay": self.decay, "updates": self.updates, "shadow": shadow}

    def load_full_state(self, state: dict) -> None:
        """full_state()'s output, saved on any world size: the masters briefly hold it, so each rank keeps its
        own fragments of it as the shadow (the layout of this world size), then get their values back."""
        from clipforge.pretrain.elastic import set_full

        own = [(view, view.detach().clone()) for _, view in self._views()]
        with torch.no_grad():
            for name, param in self.engine.module.named_parameters():
                if param.requires_grad:
                    set_full(param, state["shadow"][name].to(param.device))
            self.shadow = {name: view.detach().float().clone() for name, view in self._views()}
            for view, value in own:
                view.copy_(value)
        self.updates = int(state["updates"])

    def load_state_dict(self, state: dict) -> None:
        if set(state["shadow"]) != set(self.shadow) or any(
                state["shadow"][k].shape != v.shape for k, v in self.shadow.items()):
            raise ConfigError("model EMA: the checkpoint's EMA fragments do not match this run's parameters "
                             "(another model, ZeRO stage or world size); resume with the saved settings")
        self.updates = int(state["updates"])
        self.shadow = {k: v.float().clone() for k, v in state["shadow"].items()}


class EMAEvalCopy:
    """A plain fp32 model on every rank holding the EMA weights, for the periodic eval (`eval.ema`).
    build() -> a fresh ContrastiveModel of the run's architecture (modeling.model.build_model(...).model);
    frozen: `pretrain.export.frozen_fp32` of a bf16/fp16 LiT run (the locked tower's exact fp32 weights)."""

    def __init__(self, ema: ModelEMA, build, device, frozen: Optional[Dict[str, torch.Tensor]] = None):
        self.ema, self.frozen = ema, frozen or {}
        # Its random init must not shift the training's RNG stream (dropout / patch-dropout masks).
        with torch.random.fork_rng(devices=[]):
            self.model = build().to(device).eval()

    def refresh(self) -> torch.nn.Module:
        """-> the copy, holding the current EMA weights. Every rank calls it (ZeRO-3 gathers are collectives)."""
        with self.ema.swapped_in():
            state = consolidated_state_dict(self.ema.engine)
        self.model.clip.load_state_dict({**state, **self.frozen})
        return self.model
