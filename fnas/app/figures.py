"""What every plot module shares: a pyplot-free Agg figure, atomic PNG writes, integer axis ticks, and the
markers of the kept op and of the largest alpha in the alpha plots."""

from __future__ import annotations

import io
import os
from pathlib import Path

from fnas.core.io import atomic_write_bytes

__all__ = ["DPI", "int_locator", "kept_label", "mark_picks", "new_figure", "pick_handles", "save_figure",
           "selection_text"]

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


def kept_label(selection: str | None) -> str:
    """The legend label of the kept op: ``"kept (perturbation)"``, ``"kept (alphas)"`` or ``"kept"``."""
    return f"kept ({selection})" if selection else "kept"


def selection_text(selection: str | None) -> str:
    """How the kept op was selected, for a title: the rule, and how it relates to the largest alpha."""
    if selection == "perturbation":
        return ("selected by perturbation (removing it raises the supernet's validation loss most), "
                "not by the largest alpha")
    if selection == "alphas":
        return "selected by the alphas: the largest alpha, unless a budget ruled it out"
    return "selected by a rule not recorded here"


def mark_picks(ax, x: float, kept: float | None, largest: float | None) -> None:
    """Mark, at epoch ``x``, the kept op's weight (a ring) and the largest alpha (a star) in one panel.

    Scatter points, not lines, so a panel's ``lines`` stay one per op.
    """
    if kept is not None:
        ax.scatter([x], [kept], s=110, facecolors="none", edgecolors="k", linewidths=1.6, zorder=6)
    if largest is not None:
        ax.scatter([x], [largest], s=70, marker="*", color="k", zorder=7)


def pick_handles(selection: str | None) -> list:
    """Legend entries for :func:`mark_picks`' markers."""
    from matplotlib.lines import Line2D

    return [Line2D([], [], ls="", marker="o", mfc="none", mec="k", mew=1.6, ms=9, label=kept_label(selection)),
            Line2D([], [], ls="", marker="*", color="k", ms=9, label="largest alpha (last epoch)")]
