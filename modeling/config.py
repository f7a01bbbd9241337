"""The run config: typed dataclasses, loaded from YAML with dotted CLI overrides.

    cfg = load_config("configs/demo-cpu.yaml", ["optim.lr=1e-4", "deepspeed.zero_stage=3"])

Torch-free on purpose (launch validates on login nodes without torch). Every error is one
line naming the key and what is allowed, raised as ConfigError before any process starts.
"""
import math
import os
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import List, Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from clipforge.atomic import write_atomic
from clipforge.data_pipeline.config import DataConfig, SourceConfig  # noqa: F401  (re-exported for users)
from clipforge.modeling.config_checks import RUN_LENGTH_KEYS, ConfigError, validate
from clipforge.modeling.eval_options import EvalConfig


@dataclass
class ModelConfig:
    # An open_clip model name ("ViT-B-32"), or a path to an open_clip model-config JSON.
    name: str = "ViT-B-32"
    # Local directory of a Hugging Face text model (config + weights + tokenizer) used as the
    # text tower instead of open_clip's; loaded offline.
    hf_text_dir: Optional[str] = None
    # LiT: freeze the image tower, except its last N layer groups.
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    grad_checkpointing: bool = False
    patch_dropout: float = 0.0
    # A locked HF text tower's outputs are computed once over the training shards and stored beside
    # them (SHARDS/embeddings/text-<hash>/); the trainer reads them instead of running the tower.
    text_cache: bool = True
    # Model EMA of the fp32 master weights (pretrain/ema.py), e.g. 0.999; null = off. Exported as its own
    # open_clip local-dir, RUN/export-ema/.
    ema_decay: Optional[float] = None


@dataclass
class DistillConfig:
    # Contrastive knowledge distillation (MobileCLIP, TinyCLIP; pretrain/distill_loss.py): loss = (1 - weight) x InfoNCE
    # + weight x KD, KD = the KL between the teacher's and the student's similarity distributions over the global batch.
    # teacher: any model `clipforge eval --model` accepts (local-dir:DIR, an export dir, a run dir, ...); null = off.
    teacher: Optional[str] = None
    weight: float = 0.5  # in (0, 1]
    # The teacher's logits are cos / temperature; null = its own learned logit scale (MobileCLIP's choice).
    temperature: Optional[float] = None
    # Read the teacher's embeddings from SHARDS/embeddings/teacher-<hash>/, written once by `clipforge embed --model
    # TEACHER --data SHARDS`, instead of running it at every step; a missing or stale store is refused at start.
    stored: bool = False


@dataclass
class LossConfig:
    # Allowed values of the choice keys: modeling/config_checks.py (LOSS_KINDS, LOSS_IMPLS).
    kind: str = "infonce"
    # naive: materialise the B x B logits; tiled: O(B*d) memory, exact same gradients.
    impl: str = "naive"
    tile_size: int = 4096
    # local_loss: each rank computes loss rows of its own samples only against all gathered
    # features (less memory); only correct together with gather_with_grad.
    local_loss: bool = False
    gather_with_grad: bool = True
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = 100.0
    init_logit_bias: float = -10.0  # SigLIP only
    distill: DistillConfig = field(default_factory=DistillConfig)


@dataclass
class OptimConfig:
    lr: float = 5e-4
    # Per-tower learning rates; None = optim.lr.
    lr_image: Optional[float] = None
    lr_text: Optional[float] = None
    weight_decay: float = 0.2
    # Per-tower weight decay; None = optim.weight_decay (pretrain/param_groups.py).
    weight_decay_image: Optional[float] = None
    weight_decay_text: Optional[float] = None
    # Layer-wise lr decay (EVA-CLIP): a parameter of layer id i in a tower of L blocks (stem 0, block k -> k + 1,
    # head L + 1) trains at lr x decay ** (L + 1 - i); in (0, 1], e.g. 0.75. None = off. The per-tower keys
    # override the shared one for their tower.
    layer_decay: Optional[float] = None
    layer_decay_image: Optional[float] = None
    layer_decay_text: Optional[float] = None
    # Embeddings (token, positional, attention-pool) are not decayed by default; true decays them as
    # open_clip_train does (its rule leaves out only ndim < 2, bn, ln, bias and logit_scale parameters).
    decay_embeddings: bool = False
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    schedule: str = "cosine"  # cosine, constant or linear (config_checks.SCHEDULES)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    # Global grad-norm clip; 0 = off. Always applied explicitly (DeepSpeed's own default is 1.0).
    grad_clip: float = 1.0


@dataclass
class StageConfig:
    """One stage of a run in stages (train.stages: progressive resolution, CLIPA / FLIP; modeling/stages.py).
    A key left null is the run's: the model's image size and context length, model.patch_dropout."""
    steps: int = 0
    image_size: Optional[int] = None
    context_length: Optional[int] = None
    patch_dropout: Optional[float] = None


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    seed: int = 0
    global_batch_size: int = 256
    # Per-rank micro-batch; global_batch_size / (world * micro) micro-batches are accumulated
    # with feature caching, so the loss sees all global_batch_size negatives. None = no accumulation.
    micro_batch_size: Optional[int] = None
    # Run length: exactly one of steps / samples / epochs. A command-line override of one of them
    # replaces the file's (train.steps=50 on a config with train.epochs runs 50 steps).
    steps: Optional[int] = None
    samples: Optional[int] = None
    epochs: Optional[float] = None
    # Progressive resolution: [{steps, image_size, context_length, patch_dropout}, ...], e.g. low resolution and
    # short captions first, then a full-resolution fine-tune; the steps add up to train.steps. [] = one stage.
    stages: List[StageConfig] = field(default_factory=list)
    log_every: int = 10
    # Diverged after this many consecutive non-finite steps (each is skipped, weights untouched).
    max_nonfinite_steps: int = 5
    # Also diverged: a loss above spike_factor x the median of the last spike_window losses (null = off).
    spike_factor: Optional[float] = None
    spike_window: int = 100
    # On divergence, reload the last good checkpoint and skip the next skip_batches_after_rollback batches
    # (null: those since the checkpoint, through the one that diverged), at most max_rollbacks times;
    # then (and at 0) stop with exit 3 naming the checkpoint (pretrain/rollback.py).
    max_rollbacks: int = 0
    skip_batches_after_rollback: Optional[int] = None
    # auto: cuda when available, else cpu.
    device: str = "auto"
    # torch.compile (inductor) of the model inside the DeepSpeed engine, at any ZeRO stage, with or without
    # model.grad_checkpointing (pretrain/compile.py); the first step pays the compile time (logged, compile_s).
    compile: bool = False


# A section clipforge writes into RUN/config.yaml (version, git commit, overrides); ignored when read back,
# so a run's config.yaml is itself a valid --config.
RUN_INFO_KEY = "run_info"


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 2  # 0-3
    precision: str = "bf16"  # fp32, bf16, fp16 or auto (pretrain/precision.py: bf16 only where the device computes it)
    offload_optimizer: bool = False
    offload_param: bool = False
    reduce_bucket_size: int = 500_000_000
    allgather_bucket_size: int = 500_000_000
    # Extra keys merged verbatim into the generated DeepSpeed JSON (power users).
    extra: dict = field(default_factory=dict)


@dataclass
class CheckpointConfig:
    every_steps: int = 1000
    every_minutes: float = 60.0
    keep_last: int = 3
    # None: start fresh (or auto-resume "latest" if the run dir has one); "latest" or a path.
    resume: Optional[str] = None
    export_at_end: bool = True
    # ZeRO >= 1: each checkpoint also holds the consolidated weights, Adam moments and EMA, so it resumes on
    # another number of ranks (a requeued job with fewer nodes; pretrain/elastic.py). Costs a gather and a
    # file of 3x the fp32 weights per checkpoint.
    elastic: bool = True


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def check_batch_split(cfg: RunConfig, world_size: int) -> int:
    """Number of accumulated micro-batches per step; refuses sizes that do not divide."""
    micro = cfg.train.micro_batch_size or cfg.train.global_batch_size // world_size
    if micro < 1 or cfg.train.global_batch_size % (world_size * micro):
        raise ConfigError(f"train.global_batch_size={cfg.train.global_batch_size} is not a multiple of "
                          f"world size {world_size} x train.micro_batch_size {micro}")
    return cfg.train.global_batch_size // (world_size * micro)


def _one_line(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    msg = str(err).splitlines()[0]
    return f"{key}: {msg}" if key else msg


def config_keys(node=RunConfig, prefix: str = "") -> List[str]:
    """Every dotted key of the schema (optim.lr, train.steps, ...)."""
    keys = []
    for f in fields(node):
        if f.default_factory is not MISSING and is_dataclass(f.default_factory):
            keys += config_keys(f.default_factory, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def suggest_key(key: str, value: Optional[str] = None) -> Optional[str]:
    """'lr' (or 'optim.lrr' -> nothing) -> 'optim.lr=VALUE': the schema keys whose last part matches."""
    last = key.lstrip("-").replace("-", "_").split(".")[-1]
    matches = [k for k in config_keys() if k.split(".")[-1] == last and k != key]
    if not matches:
        return None
    return " or ".join(f"{k}={value}" if value is not None else k for k in matches)


def _override_error(item: str, err: OmegaConfBaseException) -> ConfigError:
    key, _, value = item.partition("=")
    hint = suggest_key(key, value)
    did_you_mean = f"; did you mean {hint}?" if hint else ""
    return ConfigError(f"override {item!r}: {_one_line(err)}{did_you_mean}")


def _run_length_overrides(overrides: Sequence[str]) -> List[str]:
    """The run-length keys the command line sets to a value (not to null)."""
    given = []
    for item in overrides:
        key, _, value = item.partition("=")
        if key in {f"train.{k}" for k in RUN_LENGTH_KEYS} and value.strip().lower() not in ("null", "none", "~"):
            given.append(key.split(".")[1])
    return given


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> RunConfig:
    """YAML file (optional) + dotted overrides -> validated RunConfig.

    A run-length override (train.steps / train.samples / train.epochs) replaces the run length of
    the file: the other two keys are set to null unless the command line gives them too.
    """
    merged = OmegaConf.structured(RunConfig)
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"config file {path!r} not found")
        try:
            loaded = OmegaConf.load(path)
            if not OmegaConf.is_dict(loaded):  # a list or a scalar: nothing to merge into the sections
                raise ConfigError(f"{path}: expected a mapping of config sections (model:, data:, train: ...)")
            if RUN_INFO_KEY in loaded:
                loaded.pop(RUN_INFO_KEY)
            merged = OmegaConf.merge(merged, loaded)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{path}: {_one_line(err)}") from None
        except yaml.YAMLError as err:  # syntax errors (OmegaConf.load parses with PyYAML)
            raise ConfigError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    given = _run_length_overrides(overrides)
    if given:
        for key in RUN_LENGTH_KEYS:
            if key not in given:
                merged.train[key] = None
    for item in overrides:
        if "=" not in item:
            example = suggest_key(item, "VALUE") or "optim.lr=1e-4"
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value (e.g. {example})")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as err:
            raise _override_error(item, err) from None
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path or 'config'}: {_one_line(err)}") from None
    validate(cfg)
    return cfg


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: RunConfig, path: str, run_info: Optional[dict] = None) -> None:
    """Write the resolved config atomically (a reader never sees half a file); run_info (clipforge
    version, git commit, command-line overrides) goes into its own section, ignored by load_config."""
    text = to_yaml(cfg)
    if run_info:
        text += OmegaConf.to_yaml(OmegaConf.create({RUN_INFO_KEY: run_info}))
    write_atomic(path, text)
