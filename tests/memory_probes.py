"""Deterministic CPU memory probes for the tests that check an algorithm never holds an N x M matrix:

- LargestAllocation: a TorchDispatchMode that records the largest storage (bytes) any aten op returns,
  forward and backward alike (views count their base's storage: a slice of a big matrix is still it);
- saved_bytes: the bytes autograd keeps for backward (torch.autograd.graph.saved_tensors_hooks, once per
  storage), custom autograd Functions' ctx.save_for_backward included.
"""
import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LargestAllocation(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.nbytes, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                n = t.untyped_storage().nbytes()
                if n > self.nbytes:
                    self.nbytes, self.op = n, str(func)
        return out


@contextlib.contextmanager
def saved_bytes():
    """with saved_bytes() as saved: ...; saved["bytes"] = bytes kept for backward by what ran inside."""
    storages, result = {}, {"bytes": 0}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield result
    result["bytes"] = sum(storages.values())
