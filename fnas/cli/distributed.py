"""``fnas search`` under torchrun: read the job's rank and size, join and leave its process group."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

TIMEOUT_MINUTES = 30  # a rank that waits this long for the others fails instead of hanging


def dist_env() -> tuple[int, int]:
    """``(rank, world_size)`` of a torchrun job from its environment; ``(0, 1)`` outside torchrun.

    Raises:
        ValueError: RANK or WORLD_SIZE is set but not an integer.
    """
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as err:
        raise ValueError(f"RANK / WORLD_SIZE must be integers (set by torchrun): {err}") from err


def init_distributed(device: torch.device) -> torch.device:
    """Join the torchrun job's process group: gloo on CPU, NCCL on CUDA (one GPU per process).

    Returns:
        The device of this process: ``cuda:LOCAL_RANK`` for CUDA, else ``device``.

    Raises:
        ValueError: no torch.distributed in this build, or more processes than CUDA devices.
    """
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 (torchrun) but this torch build has no torch.distributed")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices; start at most "
                             "that many processes per machine (--nproc_per_node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=TIMEOUT_MINUTES))
    return device


def close_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
