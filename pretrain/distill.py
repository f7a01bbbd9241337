"""Distillation in training (loss.distill): the teacher or its store, what the loader hands it, each step's teacher
features, and the loss around the contrastive one.

    distill = setup_distillation(cfg, device)      # None when loss.distill.teacher is null; every rank calls it
    bundle.teacher_inputs = distill.inputs          # the loader's TeacherInputs (pretrain/run.py's stream_loader)
    loss_fn = distill.loss(contrastive_loss_fn, rank, world)
    text.teacher = distill.features(batch, device)  # {"teacher_image_features", "teacher_text_features"}: the loss's

Live (loss.distill.stored=false): every rank holds a full fp32 copy of the teacher (no ZeRO partitioning: it has no
optimizer state) and encodes its share of each step once, before the micro-batches. Stored: the loader reads the
vectors `clipforge embed` wrote, checked against the teacher and the shards (one line naming the `clipforge embed`
command that writes them, when they are missing, partial or stale); the teacher is loaded at start only to
compute that identity, then dropped.
"""
import shlex
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch

from clipforge.data_pipeline.stream.teacher import TeacherInputs
from clipforge.pretrain.distill_loss import DistillLoss
from clipforge.pretrain.teacher import Teacher


def embed_command(teacher: str, sources: Sequence[str]) -> str:
    """The `clipforge embed` line that writes the teacher's store beside every source."""
    return f"run `clipforge embed --model {shlex.quote(teacher)} --data {' '.join(shlex.quote(s) for s in sources)}`"


@dataclass
class Distillation:
    cfg: object  # the run's LossConfig
    inputs: TeacherInputs
    teacher_scale: float  # the teacher's logits are cos x this
    teacher: Optional[Teacher] = None  # live only

    def loss(self, contrastive, rank: int, world_size: int) -> DistillLoss:
        return DistillLoss(contrastive, self.cfg, self.teacher_scale, rank, world_size)

    def features(self, batch: Dict, device: torch.device) -> Dict[str, torch.Tensor]:
        if self.teacher is None:
            return {"teacher_image_features": batch["teacher_image_features"].to(device),
                    "teacher_text_features": batch["teacher_text_features"].to(device)}
        image, text = self.teacher.encode(batch["teacher_images"], batch["teacher_tokens"])
        return {"teacher_image_features": image, "teacher_text_features": text}


def setup_distillation(cfg, device: torch.device) -> Optional[Distillation]:
    """cfg: the RunConfig. Loads the teacher (every rank): live, it stays; stored, only its identity does."""
    d = cfg.loss.distill
    if d.teacher is None:
        return None
    # Stored: only the identity is needed, so the teacher is loaded and hashed where its weights are read (the
    # hash reads every tensor on the CPU): a GPU copy would be made only to be copied back and dropped.
    teacher = Teacher.load(d.teacher, torch.device("cpu") if d.stored else device)
    scale = 1.0 / d.temperature if d.temperature is not None else teacher.identity["logit_scale"]
    if not d.stored:
        inputs = TeacherInputs(view=teacher.view, tokenizer=teacher.tokenizer, image_size=teacher.image_size)
        return Distillation(cfg.loss, inputs, scale, teacher)
    fix = embed_command(d.teacher, [s.path for s in cfg.data.sources])
    return Distillation(cfg.loss, TeacherInputs(store=(teacher.store_name, teacher.identity), fix=fix), scale)
