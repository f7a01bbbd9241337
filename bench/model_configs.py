"""The open_clip model config the bench scripts size and measure: modeling.model.resolve_model_config's, the one
resolution of a model name, imported when called so that importing the sizing arithmetic imports no torch."""
from typing import Dict


def model_config(name: str) -> Dict:
    """An open_clip config dict from a built-in name ("ViT-B-32") or a model-config JSON path."""
    from clipforge.modeling.model import ModelConfigError, resolve_model_config
    try:
        return resolve_model_config(name)
    except ModelConfigError as err:
        # the bench scripts take a model name, not the trainer's config key model.name that err names
        raise ValueError(f"model {name!r}: not an open_clip model name or a .json config ({err})") from None
