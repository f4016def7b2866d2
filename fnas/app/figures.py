"""What every plot module shares: a pyplot-free Agg figure, atomic PNG writes, integer axis ticks."""

from __future__ import annotations

import io
import os
from pathlib import Path

from fnas.core.io import atomic_write_bytes

__all__ = ["DPI", "int_locator", "new_figure", "save_figure"]

DPI = 110


def new_figure(width: float, height: float):
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches on its own Agg canvas (no pyplot, no GUI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Render ``fig`` to PNG and write it atomically; returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def int_locator():
    """At most 5 integer ticks (epochs)."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True, nbins=5)
