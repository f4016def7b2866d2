"""The genotype selection in a data-parallel job: every rank doing all of it vs the masks split over the ranks.

Run under ``torchrun`` (or alone, as the one-process reference): a short data-parallel cell search
on an ``.npz`` (``fnas search``'s cell defaults), then the perturbation selection on the searched
state twice, one thread per process: ``sync=None`` (every rank evaluates every mask, as before the
split) and ``sync=Sync()`` (the masks dealt over the ranks). Prints per rank the wall and CPU
seconds of each, and whether the ranks' genotypes agree.

    torchrun --standalone --nproc_per_node 2 bench/selection_dp.py my.npz
    python bench/selection_dp.py my.npz
"""

from __future__ import annotations

import os
import sys
import time
import zlib

import torch
import torch.distributed as dist

from fnas.core.collectives import Sync, default_sync
from fnas.data import load_dataset, make_loader
from fnas.search import SearchConfig, run_search
from fnas.search.loop import select_genotype
from fnas.spaces.cell.config import SpaceConfig


def main(path: str) -> None:
    torch.set_num_threads(1)
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    sync = default_sync()
    ds = load_dataset(path)
    gen = torch.Generator().manual_seed(0)
    train = make_loader(ds.train, 32, shuffle=True, gen=gen, drop_last=True)
    valid = make_loader(ds.valid, 32, shuffle=True, gen=gen, drop_last=True)
    space = SpaceConfig(C=8, layers=5, nodes=4, multiplier=4, stem_multiplier=3, in_channels=ds.train.x.shape[1],
                        input_shape=tuple(ds.train.x.shape[2:]), num_classes=ds.num_classes)
    result = run_search(SearchConfig(space=space), train, valid, epochs=1, gen=torch.Generator().manual_seed(0),
                        progress=False, selection="alphas", sync=sync)
    rows = {}
    for name, s in (("every rank all masks", None), ("masks split", sync))[: 1 if sync is None else 2]:
        if sync is not None:
            dist.barrier()
        t, c = time.perf_counter(), time.process_time()
        genotype = select_genotype(result.state, SearchConfig(space=space), valid, "perturbation", 256, "cpu", sync=s)[0]
        rows[name] = (time.perf_counter() - t, time.process_time() - c, genotype)
    rank = 0 if sync is None else sync.rank
    for name, (wall, cpu, genotype) in rows.items():
        same = ""
        if sync is not None:
            same = f", same genotype on every rank: {sync.same_on_all_ranks(torch.tensor([zlib.crc32(str(genotype).encode())]))}"
        print(f"rank {rank} of {1 if sync is None else sync.world_size}: {name}: {wall:.1f} s wall, {cpu:.1f} s CPU{same}",
              flush=True)
    if sync is not None:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
