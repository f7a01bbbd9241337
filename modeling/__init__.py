"""The layer below pretrain and eval: the torch-free run config (modeling.config), the model factory
(modeling.model), preprocessing / input normalisation (modeling.preprocess) and the torch-free FLOP model
(modeling.flops). Empty on purpose: importing modeling.config must not import torch (launch validates
configs on login nodes)."""
