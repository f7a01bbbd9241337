"""The open_clip model config the bench scripts size and measure, from however it is named."""
import json
from typing import Dict, Union


def model_config(name_or_cfg: Union[str, Dict]) -> Dict:
    """An open_clip config dict from a built-in name ("ViT-B-32"), a JSON path, or a dict."""
    if isinstance(name_or_cfg, dict):
        return name_or_cfg
    if str(name_or_cfg).endswith(".json"):
        with open(name_or_cfg) as f:
            return json.load(f)
    import open_clip  # only for built-in names: the sizing arithmetic runs without torch
    cfg = open_clip.get_model_config(name_or_cfg)
    if cfg is None:
        raise ValueError(f"model {name_or_cfg!r}: not an open_clip model name or a .json config")
    return cfg
