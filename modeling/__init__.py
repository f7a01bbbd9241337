"""The layer below pretrain and eval: the torch-free run config (modeling.config), the model factory
(modeling.model) and preprocessing / input normalisation (modeling.preprocess). Empty on purpose:
importing modeling.config must not import torch (launch validates configs on login nodes)."""
