"""The perturbed optimizer under DistributedDataParallel: two real processes (gloo, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ablagen.perturb import PerturbedOptimizer

WORLD = 2


def _train_rank(rank: int, store: str, out: str, independent: bool | None) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)  # fmt: skip
    try:
        torch.manual_seed(0)  # the same initial weights on every rank
        model = nn.parallel.DistributedDataParallel(
            nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        )
        opt = PerturbedOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
            sigma=0.05,
            seed=1,
            **({} if independent is None else {"independent_ranks": independent}),
        )
        data = torch.Generator().manual_seed(100 + rank)  # each rank its own batches
        for _ in range(6):
            x, y = torch.randn(8, 6, generator=data), torch.randint(0, 3, (8,), generator=data)  # fmt: skip
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        torch.save([p.detach() for p in model.module.parameters()], f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _run(tmp_path: Path, independent: bool | None) -> list[list[torch.Tensor]]:
    out = tmp_path / f"params-{independent}"
    store = tmp_path / f"store-{independent}"
    mp.spawn(_train_rank, args=(str(store), str(out), independent), nprocs=WORLD)
    return [torch.load(f"{out}.{rank}") for rank in range(WORLD)]


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="no gloo"
)
@pytest.mark.timeout(120)
def test_ddp_replicas_stay_identical_and_independent_ranks_drift(
    tmp_path: Path,
) -> None:
    same = _run(tmp_path, independent=None)  # the default: the same noise everywhere
    assert all(torch.equal(a, b) for a, b in zip(*same, strict=True))
    apart = _run(tmp_path, independent=True)
    assert not all(torch.equal(a, b) for a, b in zip(*apart, strict=True))
    # the noise did reach the weights: the shared-noise run differs from the other
    assert not all(torch.equal(a, b) for a, b in zip(same[0], apart[0], strict=True))
