"""A distillation teacher (loss.distill.teacher): any model `clipforge eval --model` accepts, frozen, in eval mode.

    teacher = Teacher.load("local-dir:runs/lit/export", device)
    teacher.identity, teacher.store_name      # what its stored embeddings are valid for; "teacher-<16 hex>"
    pixels = teacher.view(image_bytes)        # float [3, S_t, S_t]: the pixels eval feeds this model
    image, text = teacher.encode(pixels_batch, teacher.tokenizer(captions))   # L2-normalised fp32 [n, D], [m, D]

`clipforge embed` (pretrain/embed.py) and the live teacher in training (pretrain/distill.py) both go through `view`
and `encode`, so a stored embedding is what the live teacher computes, up to the float rounding of another batch
composition (~1e-7). The teacher runs in fp32 under no_grad, whatever the run's precision.

The identity is the teacher's weights (sha256 of every tensor, name, dtype and shape: a run dir and its export are
the same teacher), its preprocessing and tokenizer settings, and its logit scale; the store's name is its hash, so
another teacher never reads this one's store, and the store's manifest must match it (data_pipeline/embeddings.py).
"""
import hashlib
import io
import json
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from PIL import Image

from clipforge.data_pipeline.stream.decode import DecodeError
from clipforge.modeling.load_model import LoadedModel, load_model
from clipforge.modeling.model import embed_dim


class TeacherView:
    """Image bytes -> the teacher's float [3, S_t, S_t]: eval's decode (Pillow, RGB) and the model's val transform.
    Its own small object, so loader workers get the transform without the model."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, data: bytes) -> torch.Tensor:
        try:
            with Image.open(io.BytesIO(data)) as im:
                return self.transform(im.convert("RGB"))
        except Exception as e:  # Pillow raises many types for corrupt data (OSError, SyntaxError, ...)
            raise DecodeError(f"{type(e).__name__}: {e}") from None


def _identity(loaded: LoadedModel) -> Dict:
    weights = hashlib.sha256()
    for name, tensor in sorted(loaded.model.state_dict().items()):
        weights.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        weights.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    settings = {"preprocess_cfg": loaded.preprocess_cfg, "model_class": type(loaded.model).__name__,
                "tokenizer": type(loaded.tokenizer).__name__,
                "context_length": getattr(loaded.tokenizer, "context_length", None)}
    config = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    return {"kind": "clip-teacher", "weights_sha256": weights.hexdigest(), "config_sha256": config,
            "logit_scale": float(loaded.model.logit_scale.detach().exp())}


class Teacher:
    def __init__(self, loaded: LoadedModel, device: torch.device):
        self.model = loaded.model.to(device).eval().requires_grad_(False)
        self.tokenizer = loaded.tokenizer
        self.view = TeacherView(loaded.transform)
        size = loaded.preprocess_cfg["size"]
        self.image_size = size if isinstance(size, int) else size[0]
        self.dim = embed_dim(self.model)
        self.device = device
        self.identity = _identity(loaded)
        digest = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()
        self.store_name = f"teacher-{digest[:16]}"

    @classmethod
    def load(cls, spec: str, device: torch.device) -> "Teacher":
        return cls(load_model(spec), device)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """images float [n, 3, S_t, S_t] (views), tokens int64 [m, L_t] -> L2-normalised fp32 [n, D], [m, D]
        (n or m may be 0: a rank whose batch lost every sample)."""
        empty = torch.zeros(0, self.dim, device=self.device)
        image = F.normalize(self.model.encode_image(images.to(self.device)).float(), dim=-1) if len(images) else empty
        text = F.normalize(self.model.encode_text(tokens.to(self.device)).float(), dim=-1) if len(tokens) else empty
        return image, text
