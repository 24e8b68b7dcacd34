"""Autograd-aware all-gather, used to take contrastive negatives from every data-parallel rank.

Convention (what the contrastive losses do with `gather=True`): every rank gathers the pooled text
and speech vectors of all ranks and computes the *same* loss over the global batch. Then

- the loss value on every rank equals the one-process loss over the concatenated batch;
- the backward pass of the gather sums the incoming gradient over ranks (all-reduce) and keeps the
  local slice. Since every rank holds the same loss, the gradient reaching a rank's local inputs is
  `world_size` times the slice of the one-process gradient. Data-parallel training (DDP, DeepSpeed)
  averages parameter gradients over ranks, so the averaged parameter gradient equals the one-process
  gradient of the global loss, on the same scale as a per-rank mean loss such as NWP.

The all-reduce in the backward pass is a collective: every rank must call backward through the same
gathers in the same order (the normal case in synchronous data-parallel training).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def data_parallel_world(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """(world size, rank) of the data-parallel processes actually running (1, 0 without a group).

    Taken from torch.distributed rather than TrainingArguments: with DeepSpeed on CPU the arguments
    report a single process while the engine averages gradients over all of them.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group), dist.get_rank(group)
    return 1, 0


def _gather_sizes(n: int, device: torch.device, group: dist.ProcessGroup | None) -> list[int]:
    # One host sync per gather (only with --contrastive_gather on several ranks): all_gather needs
    # every rank's batch size to pad and to cut the result.
    world = dist.get_world_size(group)
    local = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(sizes, local, group=group)
    return torch.cat(sizes).tolist()


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], rank: int, group) -> torch.Tensor:
        ctx.group = group
        ctx.start = sum(sizes[:rank])
        ctx.stop = ctx.start + sizes[rank]
        # all_gather needs equal shapes: pad every rank's slice to the largest local batch.
        longest = max(sizes)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous(), group=group)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.start : ctx.stop], None, None, None


def gather_with_grad(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> tuple[torch.Tensor, int]:
    """Concatenate `x` [b_r, ...] from all ranks along dim 0, keeping gradients to the local slice.

    Local batch sizes may differ between ranks (e.g. a short last batch). Without an initialised
    process group, or with a single rank, this is the identity.

    Returns:
        (global [sum_r b_r, ...], offset) where `offset` is the row of this rank's first element in
        the global tensor (rank * b with equal local batches).
    """
    world, rank = data_parallel_world(group)
    if world == 1:
        return x, 0
    sizes = _gather_sizes(x.shape[0], x.device, group)
    return _AllGatherWithGrad.apply(x, sizes, rank, group), sum(sizes[:rank])
