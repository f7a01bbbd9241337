"""all_gather_with_grad on 2 real gloo processes: unequal local sizes, values and reduce-scatter gradient.

Also holds `spawn_gloo`, the helper the other multi-process loss tests use.
"""
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clipforge.pretrain.distributed import all_gather_no_grad, all_gather_with_grad, gather_sizes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn, world: int, port: int, args: tuple) -> None:
    # pytest's -W filters do not reach spawned children: deprecated collectives must fail here too.
    warnings.simplefilter("error", FutureWarning)
    warnings.simplefilter("error", DeprecationWarning)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def spawn_gloo(fn, world: int = 2, *args) -> None:
    """Run fn(rank, world, *args) on `world` fresh gloo processes; a failed assert in any fails the test."""
    mp.spawn(_entry, args=(fn, world, _free_port(), args), nprocs=world, join=True)


def _rows(rank: int, n: int) -> torch.Tensor:
    # Rank-identifiable values: row i of rank r is [r*100 + i, -(r*100 + i)].
    base = torch.arange(n, dtype=torch.float64) + 100 * rank
    return torch.stack([base, -base], dim=1)


def _gather_worker(rank: int, world: int) -> None:
    sizes = [3, 5, 0][:world]  # unequal, and a rank may have lost every sample (0 rows)
    assert gather_sizes(sizes[rank], torch.device("cpu")) == sizes
    x = _rows(rank, sizes[rank]).requires_grad_()
    gathered = all_gather_with_grad(x)
    expected = torch.cat([_rows(r, n) for r, n in enumerate(sizes)])
    assert torch.equal(gathered, expected)
    # Rank s weights the gathered rows by (s+1) * (row index + 1): the gradient of rank r's rows
    # must be the SUM over ranks of those weights (reduce-scatter), not one rank's share.
    weights = (torch.arange(sum(sizes), dtype=torch.float64) + 1)[:, None] * (rank + 1)
    (gathered * weights).sum().backward()
    start = sum(sizes[:rank])
    own = (torch.arange(start, start + sizes[rank], dtype=torch.float64) + 1)[:, None]
    total_factor = sum(s + 1 for s in range(world))
    assert torch.equal(x.grad, (own * total_factor).expand(-1, 2))

    # gather_with_grad=False (open_clip's default): same values, only the local slice is live.
    y = _rows(rank, sizes[rank]).requires_grad_()
    plain = all_gather_no_grad(y)
    assert torch.equal(plain, expected)
    (plain * weights).sum().backward()
    assert torch.equal(y.grad, (own * (rank + 1)).expand(-1, 2))


@pytest.mark.multiprocess
@pytest.mark.parametrize("world", [2, 3])
def test_gather_unequal_sizes_and_reduce_scatter_gradient(world):
    spawn_gloo(_gather_worker, world)


def test_not_distributed_is_identity():
    x = torch.randn(4, 3, requires_grad=True)
    assert all_gather_with_grad(x) is x
    assert all_gather_no_grad(x) is x
    assert gather_sizes(4, torch.device("cpu")) == [4]
