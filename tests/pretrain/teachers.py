"""Distillation teachers for the tests: a freshly initialised tiny open_clip model saved as a local-dir export (what
`clipforge eval --model local-dir:DIR` and loss.distill.teacher read), at its own image size."""
import json
from pathlib import Path

import torch

from clipforge.modeling.config import LossConfig, ModelConfig
from clipforge.modeling.model import build_model
from clipforge.pretrain.export import write_export

TINY = Path(__file__).resolve().parents[2] / "configs" / "models" / "tiny-vit.json"


def write_teacher(folder: Path, seed: int = 1, image_size: int = 48) -> str:
    """-> "local-dir:FOLDER/export": tiny-vit at image_size (48 px: not the student's 64, so the teacher's own
    preprocessing shows), weights drawn with `seed`."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(TINY.read_text())
    cfg["vision_cfg"]["image_size"] = image_size
    config = folder / "teacher.json"
    config.write_text(json.dumps(cfg))
    torch.manual_seed(seed)
    bundle = build_model(ModelConfig(name=str(config)), LossConfig())
    return "local-dir:" + write_export(bundle.clip.state_dict(), bundle.model_cfg, bundle.preprocess_cfg, str(folder),
                                       model_pt=False)
