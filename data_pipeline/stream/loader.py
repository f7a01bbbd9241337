"""build_train_loader: per-rank training batches from the sources of a DataConfig, exactly resumable.

    loader = build_train_loader(cfg.data, seed=0, global_batch_size=256, rank=r, world_size=w,
                                image_size=224, tokenizer=tok, state=ckpt.get("loader"))
    for batch in loader:          # the rest of the current epoch; a new `for` starts the next one
        batch["images"]           # uint8 [b, 3, 224, 224]   (b = B / world, fewer when samples were bad); on
                                  # `device` with data.decode=gpu (decoded there), else on the CPU (pinned for CUDA)
        batch["tokens"]           # int64 [b*K, L] (K = data.captions_per_sample; image-major)
        batch["text_vectors"]     # instead of tokens, with text_store: float32 [b*K, D] stored tower outputs
        batch["sample_ids"]       # int64 [b]: equal for the same image seen twice (the loss's positives)
        batch["caption_index"]    # int64 [b, K]: which lines of KEY.txt (of the visit's caption source)
        batch["neg_tokens"]       # data.hard_negatives H > 0: int64 [b, H, L], each image's KEY.neg.txt lines
        batch["teacher_*"]        # with teacher: a distillation teacher's inputs or stored outputs (stream/teacher.py)
        loader.negatives_padded   # samples whose KEY.neg.txt had fewer than H lines (cycled)
        loader.counters, loader.caption_fallbacks   # skipped samples per reason; KEY.txt read instead of a source
        loader.failed_reads       # {"URL@BYTE": samples skipped}: remote reads that failed after their retries
        batch["keys"]             # list[str]
        ckpt["loader"] = loader.state_dict()   # the state after the batch just yielded

The main process walks the global sample plan (data_pipeline.stream.plan) and hands each step's
slice for this rank to a torch DataLoader, which round-robins them over its workers and returns
them in order: the batch sequence is deterministic for any worker count.
"""
import os
import signal
import sys
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch

from clipforge.errors import UserError
from clipforge.data_pipeline import embeddings
from clipforge.data_pipeline.config import DataConfig, DataConfigError
from clipforge.data_pipeline.shards import ShardError, open_shards, txt_holds_first_caption
from clipforge.data_pipeline.stream import caption_sources, hard_negatives
from clipforge.data_pipeline.stream.dataset import CORRUPT_IMAGE, BatchDataset
from clipforge.data_pipeline.stream.device_decode import ENCODED, decode_on_device
from clipforge.data_pipeline.stream.plan import SamplePlan
from clipforge.data_pipeline.stream.teacher import TeacherInputs, TeacherReader

STATE_FORMAT = "clipforge-loader"


class LoaderStateError(UserError, ValueError):
    """A saved loader state does not fit this run (other data, seed or global batch size)."""


class _PlanSampler(torch.utils.data.Sampler):
    """The DataLoader's sampler: yields the BatchRequests the TrainLoader set for this pass."""

    def __init__(self):
        self.requests: Iterator = iter(())

    def __iter__(self):
        return self.requests


def _passthrough(batch):
    return batch  # the dataset already returns a collated batch


class TrainLoader:
    def __init__(self, plan: SamplePlan, dataset: BatchDataset, data_cfg: DataConfig, *, rank: int,
                 world_size: int, identity: Dict, device: torch.device = torch.device("cpu")):
        self.plan, self.rank, self.world_size, self.device = plan, rank, world_size, device
        self._identity = identity  # what a saved state must match to be resumable here
        self._state = plan.initial_state()
        self.counters: Dict[str, int] = {}  # skipped samples per reason: the trainer logs them, checkpoints keep them
        # Visits that asked for a caption source the sample lacks and read KEY.txt instead, per asked source
        # (not skips: those samples were trained on). Kept in checkpoints when data.caption_weights is set.
        self.caption_fallbacks: Dict[str, int] = {}
        # Remote reads that still failed after their retries: "URL@BYTE" (shard and first byte not read) ->
        # samples skipped for it (also in counters, as read_error / unreadable_shard). Kept in checkpoints.
        self.failed_reads: Dict[str, int] = {}
        self._weighted = data_cfg.caption_weights is not None
        # Samples whose KEY.neg.txt held fewer than data.hard_negatives lines (cycled: hard_negatives.pick).
        self.negatives_padded = 0
        self._negatives = data_cfg.hard_negatives > 0
        self._sampler = _PlanSampler()
        workers = data_cfg.workers
        # Each pass draws its workers' base seed from `generator` (unused: a sample's randomness is keyed by its
        # position), not from torch's global RNG: the trainer's dropout / patch-dropout masks come from that one
        # and are checkpointed, and a resumed run starts a pass where the uninterrupted run was mid-pass.
        self._loader = torch.utils.data.DataLoader(
            dataset, sampler=self._sampler, batch_size=None, collate_fn=_passthrough, num_workers=workers,
            persistent_workers=workers > 0, prefetch_factor=data_cfg.prefetch if workers > 0 else None,
            worker_init_fn=_detach_from_stop_signals, generator=torch.Generator().manual_seed(0),
            pin_memory=device.type == "cuda")  # page-locked batches: the trainer's non_blocking copies overlap

    @property
    def samples_per_epoch(self) -> int:
        return self.plan.samples_per_epoch

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    @property
    def epoch(self) -> int:
        return self._state["step"] // self.plan.steps_per_epoch

    @property
    def step(self) -> int:
        return self._state["step"]

    def __len__(self) -> int:
        """Steps left in the current epoch (what one `for batch in loader` pass yields)."""
        return self.plan.steps_per_epoch - self._state["step"] % self.plan.steps_per_epoch

    def __iter__(self):
        self._sampler.requests = self.plan.requests(dict(self._state), self.rank, self.world_size)
        for out in self._loader:
            for reason, n in out["skipped"].items():
                self.counters[reason] = self.counters.get(reason, 0) + n
            for source, n in out["caption_fallbacks"].items():
                self.caption_fallbacks[source] = self.caption_fallbacks.get(source, 0) + n
            for where, n in out["failed_reads"].items():
                if where not in self.failed_reads:  # said once per failed read, not once per sample it costs
                    print(f"clipforge loader: skipping samples of {where.rsplit('@', 1)[0]}: the read at byte "
                          f"{where.rsplit('@', 1)[1]} failed after its retries", file=sys.stderr)
                self.failed_reads[where] = self.failed_reads.get(where, 0) + n
            self.negatives_padded += out.get("negatives_padded", 0)
            self._state = out["request"].state_after
            batch = {k: v for k, v in out.items()
                     if k not in ("skipped", "caption_fallbacks", "failed_reads", "request", "negatives_padded")}
            if ENCODED in batch:  # data.decode=gpu: decoded here, on the device, in one batch
                batch, unreadable = decode_on_device(batch, self.device)
                if unreadable:
                    self.counters[CORRUPT_IMAGE] = self.counters.get(CORRUPT_IMAGE, 0) + unreadable
            yield batch

    def state_dict(self) -> Dict:
        state = {"format": STATE_FORMAT, "version": 1, **self._identity, "epoch": self.epoch,
                 "step": self._state["step"], "position": self._state["position"],
                 "consumed": list(self._state["consumed"]), "cursors": [list(c) for c in self._state["cursors"]],
                 "counters": dict(self.counters)}
        if self._weighted:
            state["caption_fallbacks"] = dict(self.caption_fallbacks)
        if self._negatives:
            state["negatives_padded"] = self.negatives_padded
        if self.failed_reads:  # absent when nothing failed: the states of local runs stay as they were
            state["failed_reads"] = dict(self.failed_reads)
        return state

    def load_state_dict(self, state: Dict) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise LoaderStateError("loader state: not a clipforge loader state dict (missing format marker)")
        for key, value in self._identity.items():
            if state.get(key) != value:
                raise LoaderStateError(
                    f"loader state: {key}={state.get(key)!r} in the checkpoint but {value!r} in this run; exact "
                    f"resume needs the same data, seed, mode and global batch size (start a new run to change them)")
        self._state = {"step": int(state["step"]), "position": int(state["position"]),
                       "consumed": [int(c) for c in state["consumed"]],
                       "cursors": [[int(e), int(o)] for e, o in state["cursors"]]}
        self.counters = {str(k): int(v) for k, v in state.get("counters", {}).items()}
        self.caption_fallbacks = {str(k): int(v) for k, v in state.get("caption_fallbacks", {}).items()}
        self.failed_reads = {str(k): int(v) for k, v in state.get("failed_reads", {}).items()}
        self.negatives_padded = int(state.get("negatives_padded", 0))


def build_train_loader(data_cfg: DataConfig, *, seed: int, global_batch_size: int, rank: int, world_size: int,
                       image_size: int, tokenizer: Callable[[List[str]], torch.Tensor], state: Optional[Dict] = None,
                       drop_last: bool = True, text_store: Optional[Tuple[str, Dict]] = None,
                       teacher: Optional[TeacherInputs] = None, device: Union[str, torch.device] = "cpu") -> TrainLoader:
    """The train loader of one rank. Opens (and checks) every shard path before starting anything.
    text_store: (name, model identity) of stored text embeddings beside every source (checked against
    the shards and the model: embeddings.StaleEmbeddings), read instead of tokenising the captions.
    teacher: what a distillation teacher needs per sample (its store is checked like text_store's).
    device: where the trainer takes the batches: a CUDA device pins them (non-blocking copies), and with
    data.decode=gpu the images are decoded there (any device: "cpu" runs the same device code, for tests)."""
    data_cfg.validate()
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is outside world_size={world_size}")
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size={global_batch_size}: must be >= 1")
    shard_sets = [open_shards(source.path) for source in data_cfg.sources]
    for source, shard_set in zip(data_cfg.sources, shard_sets):
        if shard_set.num_samples == 0:
            raise ShardError(f"data.sources: {source.path} holds 0 samples")
    caption_sources.check_known(data_cfg.caption_weights, [s.path for s in data_cfg.sources], shard_sets)
    caption_sources.check_text_store(data_cfg.caption_weights, text_store)
    hard_negatives.check_sources(data_cfg.hard_negatives, [s.path for s in data_cfg.sources], shard_sets, text_store)
    sizes = [[s.samples for s in shard_set.shards] for shard_set in shard_sets]
    plan = SamplePlan(sizes, [s.weight for s in data_cfg.sources], mode=data_cfg.mode, seed=seed,
                      window=data_cfg.shuffle_window, global_batch_size=global_batch_size, drop_last=drop_last)
    if plan.steps_per_epoch == 0:
        raise DataConfigError(f"global batch size {global_batch_size} is larger than the {plan.samples_per_epoch} samples "
                         f"of an epoch of data.sources; lower the batch size or pass drop_last=False")
    vector_paths, vector_dim = None, 0
    if text_store is not None:
        name, model = text_store
        vector_paths = []
        for source, shard_set in zip(data_cfg.sources, shard_sets):
            tars = [s.name for s in shard_set.shards]
            vector_dim = embeddings.check_store(source.path, name, model, tars)["dim"]
            vector_paths.append(embeddings.shard_files(source.path, name, tars))
    dataset = BatchDataset([[s.path for s in shard_set.shards] for shard_set in shard_sets], seed=seed,
                           teacher=_teacher_reader(teacher, data_cfg, shard_sets),
                           image_size=image_size, tokenizer=tokenizer,
                           source_roots=[embeddings.dataset_root(s.path) for s in data_cfg.sources],
                           captions_per_sample=data_cfg.captions_per_sample, vector_paths=vector_paths, vector_dim=vector_dim,
                           json_caption_sources=[i for i, s in enumerate(shard_sets) if txt_holds_first_caption(s)],
                           crop_scale=data_cfg.crop_scale, hflip=data_cfg.hflip,
                           caption_weights=caption_sources.CaptionWeights.of(data_cfg.caption_weights),
                           hard_negatives=data_cfg.hard_negatives, decode=data_cfg.decode)
    identity = {"mode": data_cfg.mode, "seed": seed, "global_batch_size": global_batch_size,
                "drop_last": drop_last, "shuffle_window": data_cfg.shuffle_window,
                "samples_per_source": [shard_set.num_samples for shard_set in shard_sets],
                "weights": [float(s.weight) for s in data_cfg.sources]}
    if data_cfg.captions_per_sample > 1:  # absent at 1: states saved before the option existed still resume
        identity["captions_per_sample"] = data_cfg.captions_per_sample
    if data_cfg.hard_negatives > 0:  # absent at 0, for the same reason
        identity["hard_negatives"] = data_cfg.hard_negatives
    if data_cfg.caption_weights is not None:  # absent when unset, for the same reason
        identity["caption_weights"] = {name: float(w) for name, w in sorted(data_cfg.caption_weights.items())}
    loader = TrainLoader(plan, dataset, data_cfg, rank=rank, world_size=world_size, identity=identity,
                         device=torch.device(device))
    if state is not None:
        loader.load_state_dict(state)
    return loader


def _teacher_reader(teacher: Optional[TeacherInputs], data_cfg: DataConfig, shard_sets) -> Optional[TeacherReader]:
    """The loader workers' TeacherReader; a stored teacher's store is checked against every source first."""
    if teacher is None or teacher.store is None:
        return None if teacher is None else TeacherReader(teacher)
    name, model = teacher.store
    paths, dim = [], 0
    for source, shard_set in zip(data_cfg.sources, shard_sets):
        tars = [s.name for s in shard_set.shards]
        dim = embeddings.check_store(source.path, name, model, tars, fix=teacher.fix)["dim"]
        paths.append(embeddings.shard_files(source.path, name, tars))
    return TeacherReader(teacher, paths, dim)


def _detach_from_stop_signals(worker_id: int) -> None:
    """torchrun (and a shell's Ctrl-C) signal the trainer's whole process group; a loader worker that
    dies of SIGTERM makes the trainer fail with "DataLoader worker exited unexpectedly" instead of
    checkpointing. A process group of its own keeps group signals away from the worker, while the
    DataLoader's own shutdown (SIGTERM to the worker's pid) and its parent-death watchdog still work.
    Ignoring SIGTERM instead would hang that shutdown. SIGUSR1 (slurm's pre-timeout warning, sent to
    every process of the step) means nothing to a worker: ignored."""
    os.setpgrp()
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
