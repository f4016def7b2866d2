"""Search checkpoints: the file format, saving and loading, and where each loader stood (for bitwise resumes)."""

from __future__ import annotations

from typing import Any

import torch

from fnas.core import tree
from fnas.core.io import atomic_torch_save, safe_torch_load
from fnas.search.state import insane_leaves, SearchState, state_to_dict

Tensor = torch.Tensor

CHECKPOINT_FORMAT = "fnas-search-checkpoint/1"
# Fields of the search config a checkpoint must share with the run that resumes it: the space and
# the schedule's length. Optimiser settings may change (e.g. a lower lr after a divergence).
RESUME_FIELDS = ("space", "total_steps")


class LoaderPosition:
    """Where a loader's iteration stands: the state of its ``generator`` when its current pass
    began, and how many batches of that pass were taken. Restoring both replays the pass exactly.
    A loader without a generator (a list, or a DataLoader shuffling from torch's global RNG, which
    the library never reseeds) resumes at the right batch count but with fresh shuffles."""

    def __init__(self, loader):
        self.loader = loader
        gen = getattr(loader, "generator", None)
        self.gen = gen if isinstance(gen, torch.Generator) else None
        self.start_state: Tensor | None = None
        self.taken = 0
        self.it = None

    def begin(self) -> None:
        """Start a new pass."""
        self.start_state = self.gen.get_state() if self.gen is not None else None
        self.it = iter(self.loader)
        self.taken = 0

    def take(self):
        """The next batch of the current pass (``StopIteration`` at its end)."""
        batch = next(self.it)
        self.taken += 1
        return batch

    def cycle(self):
        """The next batch, starting a new pass when the current one is exhausted."""
        if self.it is None:
            self.begin()
        try:
            return self.take()
        except StopIteration:
            self.begin()
            try:
                return self.take()
            except StopIteration:
                raise ValueError("The validation loader is empty; give it at least one batch") from None

    def save(self) -> dict:
        """A plain dict for the checkpoint."""
        now = self.gen.get_state() if self.gen is not None else None
        return {"rng": self.start_state, "taken": self.taken, "rng_now": now}

    def restore(self, saved: dict) -> None:
        """Replay the current pass up to where it stood, then put the generator where it was (a
        pass that had just ended must leave the next pass's shuffle to the same generator state)."""
        if saved["rng"] is not None and self.gen is not None:
            self.gen.set_state(saved["rng"])
        self.begin()
        for _ in range(saved["taken"]):
            self.take()
        if saved["rng_now"] is not None and self.gen is not None:
            self.gen.set_state(saved["rng_now"])


def save_checkpoint(
    path,
    state: SearchState,
    *,
    cfg_record: dict,
    epoch: int,
    batch: int,
    train_pos: LoaderPosition,
    valid_pos: LoaderPosition,
    gen: torch.Generator,
    log: dict[str, Any],
    elapsed_seconds: float = 0.0,
) -> None:
    """Write a checkpoint atomically (a crash mid-write leaves the previous one intact).

    A state with non-finite or exploded leaves (:func:`fnas.search.state.insane_leaves`) is never
    written: the previous checkpoint stays the one to resume from.

    Args:
        path: the file.
        state: the search state (copied to the CPU).
        cfg_record: ``dataclasses.asdict`` of the search config.
        epoch, batch: where the search resumes (``batch`` 0: at the start of ``epoch``).
        train_pos, valid_pos: the loaders' positions.
        gen: the search's generator (it builds the final model).
        log: ``history``, ``alpha_history``, and the running ``sums`` / ``counts`` of the epoch's metrics.
        elapsed_seconds: the search's wall time so far, the runs it resumed from included (a resume
            adds its own time to it; checkpoints without it read as 0).
    """
    insane = insane_leaves(state)
    if insane:
        raise FloatingPointError(f"Refusing to checkpoint a diverged state ({', '.join(insane[:4])}); the last "
                                 "checkpoint is kept")
    atomic_torch_save(path, {
        "format": CHECKPOINT_FORMAT,
        "cfg": cfg_record,
        "state": tree.map(lambda t: t.detach().cpu(), state_to_dict(state)),
        "epoch": epoch,
        "batch": batch,
        "train_pos": train_pos.save(),
        "valid_pos": valid_pos.save(),
        "gen": gen.get_state(),
        "elapsed_seconds": float(elapsed_seconds),
        **log,
    })


def load_checkpoint(path) -> dict:
    """Read a search checkpoint written by :func:`fnas.search.loop.run_search` (``torch.load(weights_only=True)``).

    Raises:
        ValueError: missing, truncated or foreign file.
    """
    data = safe_torch_load(path)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not an fnas search checkpoint (expected format {CHECKPOINT_FORMAT})")
    return data


def check_resumable(saved: dict, cfg_record: dict, path) -> None:
    """Raise unless the checkpoint ``saved`` (read from ``path``) was written for this space and schedule.

    Raises:
        ValueError: a field of :data:`RESUME_FIELDS` differs.
    """
    diff = [k for k in RESUME_FIELDS if saved["cfg"].get(k) != cfg_record[k]]
    if diff:
        raise ValueError(f"Checkpoint {str(path)!r} was written for a different search space or schedule "
                         f"(fields {diff}); resume with the run's own space, data and epochs")
