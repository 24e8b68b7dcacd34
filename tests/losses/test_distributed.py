"""The autograd-aware all-gather and the data-parallel world, on one process and on two gloo ranks."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# The spawned ranks import this module: it imports the package only inside the tests, so a rank
# starts with torch alone (seconds less per rank) and loads the module under test by path.

_SIZES = (3, 2)  # uneven local batches: the gather pads to the longest and cuts the padding off


def _rows(n: int) -> torch.Tensor:
    return torch.arange(n * 2 * 3, dtype=torch.float32).view(n, 2, 3)  # [n, 2, 3]: rows carry their index


def _weights(n: int) -> torch.Tensor:
    return torch.linspace(-1.0, 2.0, n * 2 * 3).view(n, 2, 3)


def test_one_process_is_the_identity():
    from llava.losses.distributed import data_parallel_world, gather_with_grad

    assert data_parallel_world() == (1, 0)
    x = _rows(3).requires_grad_()
    out, offset = gather_with_grad(x)
    assert out is x and offset == 0


def _worker(rank: int, world: int, init_file: str, module_path: str, out_dir: str) -> None:
    spec = importlib.util.spec_from_file_location("distributed_under_test", module_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        start = sum(_SIZES[:rank])
        local = _rows(sum(_SIZES))[start : start + _SIZES[rank]].clone().requires_grad_()
        gathered, offset = mod.gather_with_grad(local)
        (gathered * _weights(sum(_SIZES))).sum().backward()
        torch.save(
            {
                "world": mod.data_parallel_world(),
                "gathered": gathered.detach(),
                "offset": offset,
                "grad": local.grad,
            },
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_gather_uneven_batches_and_sum_gradients(tmp_path):
    from llava.losses import distributed

    world = len(_SIZES)
    args = (world, str(tmp_path / "init"), distributed.__file__, str(tmp_path))
    mp.spawn(_worker, args=args, nprocs=world, join=True)
    total = sum(_SIZES)
    for rank in range(world):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        start = sum(_SIZES[:rank])
        assert tuple(out["world"]) == (world, rank)
        assert out["offset"] == start
        torch.testing.assert_close(out["gathered"], _rows(total))  # every rank's rows, in rank order
        # Every rank's loss covers the global batch: the backward sums the gradient over ranks and keeps
        # this rank's slice, so world x the one-process gradient of those rows.
        torch.testing.assert_close(out["grad"], world * _weights(total)[start : start + _SIZES[rank]])
