"""The optimizer's parameter groups: per tower (image, text, temperature) a learning rate and a weight decay,
no decay on biases / norms / logit scale (and embeddings), and EVA-CLIP's layer-wise lr decay.

Layer-wise decay (optim.layer_decay, or per tower optim.layer_decay_image / _text): in a tower of L blocks
each parameter gets a layer id -- the stem / embeddings 0, block i (transformer.resblocks.i, ResNet stage
layer{i+1}, HF encoder.layer.i) i + 1, everything after the blocks (final norm, projection, pooling) L + 1 --
and trains at the tower's lr x decay ** (L + 1 - id): the head at the tower's lr, the stem at decay^(L+1) of
it (ViT-B/32, L = 12, decay 0.65: 0.0037). L counts the frozen blocks of a partly locked tower too.

    groups, base_lrs = param_groups(model, cfg)    # AdamW's groups; base lr = tower lr x lr scale
    print(group_table(model, cfg))                 # name, lr scale, weight decay, tensors, parameters
"""
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from clipforge.modeling.config import ConfigError, OptimConfig, RunConfig

# A block of each supported tower, by its name inside the tower (open_clip ViT and text transformers, an
# HF BERT-style encoder) -> its 0-based index; open_clip's ModifiedResNet names its 4 stages layer1..layer4.
BLOCK = re.compile(r"^(?:transformer\.resblocks|transformer\.encoder\.layer)\.(\d+)\.")
RESNET_STAGE = re.compile(r"^layer(\d+)\.")
# Before the first block: ViT patch embedding, class / positional embeddings and ln_pre; the text towers'
# token / positional tables; the ResNet stem's three convs and norms; an HF model's embeddings.
STEM = re.compile(r"^(?:conv[123]|bn[123]|class_embedding|positional_embedding|token_embedding|ln_pre)(?:\.|$)"
                  r"|^transformer\.embeddings\.")


def _tower(name: str) -> str:
    if name.startswith("clip.visual."):
        return "image"
    if name.startswith("clip.logit_"):
        return "temperature"
    return "text"  # clip.text.* (custom text) or CLIP's top-level text parameters


def _no_decay(name: str, param: torch.nn.Parameter, decay_embeddings: bool) -> bool:
    # Biases, norms (1-d) and logit_scale/bias (0-d) are never decayed; embeddings unless optim.decay_embeddings
    # (open_clip_train decays them: a 2-d token table is a matrix to its ndim rule).
    embedding = "embedding" in name and not decay_embeddings
    return param.ndim < 2 or embedding or "logit_" in name or ".ln_" in name or "norm" in name


def _in_tower(name: str) -> str:
    """The name inside its tower: clip.visual.X / clip.text.X -> X; CLIP's built-in text tower lives at the top."""
    for root in ("clip.visual.", "clip.text.", "clip."):
        if name.startswith(root):
            return name[len(root):]
    return name


def _block(name: str, tower: str) -> Optional[int]:
    """1-based block number (= layer id) of a parameter, None outside the blocks."""
    inner = _in_tower(name)
    match = BLOCK.match(inner)
    if match:
        return int(match.group(1)) + 1
    match = RESNET_STAGE.match(inner) if tower == "image" else None
    return int(match.group(1)) if match else None


def _layer_decay(tower: str, optim: OptimConfig):
    """-> (decay or None (off), the key that set it, for messages)."""
    own = {"image": optim.layer_decay_image, "text": optim.layer_decay_text}.get(tower)
    if own is not None:
        return own, f"optim.layer_decay_{tower}"
    return (optim.layer_decay, "optim.layer_decay") if tower != "temperature" else (None, None)


def _weight_decay(tower: str, optim: OptimConfig) -> float:
    own = {"image": optim.weight_decay_image, "text": optim.weight_decay_text}.get(tower)
    return optim.weight_decay if own is None else own


def _layer_counts(model: torch.nn.Module) -> Dict[str, int]:
    """Blocks per tower, frozen ones included (a partly locked tower keeps its depth)."""
    counts = {}
    for name, _ in model.named_parameters():
        tower = _tower(name)
        counts[tower] = max(counts.get(tower, 0), _block(name, tower) or 0)
    return counts


def _layer_id(name: str, tower: str, layers: int) -> int:
    block = _block(name, tower)
    if block is not None:
        return block
    return 0 if STEM.match(_in_tower(name)) else layers + 1


@dataclass
class ParamGroup:
    name: str  # tower[.layerN].wd|no_wd, e.g. image.layer3.wd
    lr: float  # the tower's lr x lr_scale: the base lr the schedule multiplies
    lr_scale: float
    weight_decay: float
    params: List[torch.nn.Parameter] = field(default_factory=list)


def _group_key(name: str, param: torch.nn.Parameter, cfg: RunConfig, counts: Dict[str, int]):
    """-> (tower, decay exponent, no weight decay, layer id or None): sorted, the keys give the group order;
    without layer decay every exponent is 0, so the order is (tower, no_decay) as before layer decay."""
    tower = _tower(name)
    decay, key = _layer_decay(tower, cfg.optim)
    no_wd = _no_decay(name, param, cfg.optim.decay_embeddings)
    if decay is None:
        return tower, 0, no_wd, None
    if counts.get(tower, 0) == 0:
        raise ConfigError(f"{key}: cannot find the layers of the {tower} tower (none of its parameters, e.g. "
                          f"{name}, is in transformer.resblocks.N, a ResNet's layerN or an HF encoder.layer.N); "
                          f"set {key}=null for this model")
    layer = _layer_id(name, tower, counts[tower])
    return tower, counts[tower] + 1 - layer, no_wd, layer


def _new_group(key, lrs: Dict[str, float], optim: OptimConfig) -> ParamGroup:
    tower, exponent, no_wd, layer = key
    decay = _layer_decay(tower, optim)[0]
    scale = decay ** exponent if decay is not None else 1.0
    name = ".".join([tower] + ([f"layer{layer}"] if layer is not None else []) + ["no_wd" if no_wd else "wd"])
    return ParamGroup(name, lrs[tower] * scale, scale, 0.0 if no_wd else _weight_decay(tower, optim))


def plan_groups(model: torch.nn.Module, cfg: RunConfig) -> List[ParamGroup]:
    """The trainable parameters in groups, in the optimizer's order. Frozen parameters are left out."""
    optim = cfg.optim
    lrs = {"image": optim.lr_image or optim.lr, "text": optim.lr_text or optim.lr, "temperature": optim.lr}
    counts = _layer_counts(model)
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = _group_key(name, param, cfg, counts)
        if key not in groups:
            groups[key] = _new_group(key, lrs, optim)
        groups[key].params.append(param)
    return [groups[key] for key in sorted(groups)]


def param_groups(model: torch.nn.Module, cfg: RunConfig):
    """-> (groups for the optimizer, base lr of each group)."""
    plan = plan_groups(model, cfg)
    groups = [{"params": g.params, "lr": g.lr, "weight_decay": g.weight_decay} for g in plan]
    return groups, [g.lr for g in plan]


def group_table(model: torch.nn.Module, cfg: RunConfig) -> str:
    """The groups as a small table (printed once at start on rank 0); its parameter column sums to the
    trainable parameter count, given in the total row."""
    plan = plan_groups(model, cfg)
    rows = [(g.name, f"{g.lr_scale:.6g}", f"{g.weight_decay:g}", str(len(g.params)),
             f"{sum(p.numel() for p in g.params):,}") for g in plan]
    rows.append(("total", "", "", str(sum(len(g.params) for g in plan)),
                 f"{sum(p.numel() for g in plan for p in g.params):,}"))
    header = ("group", "lr scale", "weight decay", "tensors", "parameters")
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header] + rows]
    return "parameter groups:\n" + "\n".join(lines)
