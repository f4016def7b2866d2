"""Pictures of a run (PNG, matplotlib's Agg canvas): edge weights over the search, cell diagrams, curves;
the chain space's pictures are :mod:`fnas.app.chain_plots`'s.

Figures are built on ``matplotlib.figure.Figure`` with an explicit Agg canvas, never through
``pyplot``: no global backend switch, no GUI, safe to call from any process. Files are written
atomically, so a crash never leaves a half-written PNG.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from fnas.app.chain_plots import CHAIN_PLOT_FILES, plot_chain, plot_chain_alphas
from fnas.app.figures import int_locator, mark_picks, new_figure, pick_handles, save_figure, selection_text
from fnas.spaces.cell.genotype import pick_nodes
from fnas.spaces.cell.supernet import edge_row
from fnas.spaces.chain import ChainSpaceConfig

__all__ = [
    "ALL_PLOT_FILES", "PLOT_FILES", "plot_alphas", "plot_cells", "plot_curves", "save_figure", "write_plots",
]

# file name -> what it shows (the CLI lists these)
PLOT_FILES = {
    "alphas_normal.png": "softmax(alpha) of every normal-cell edge over the search epochs",
    "alphas_reduce.png": "softmax(alpha) of every reduction-cell edge over the search epochs",
    "cells.png": "the final normal and reduction cells",
    "curves.png": "loss and accuracy per epoch (search and training)",
}
ALL_PLOT_FILES = {**PLOT_FILES, **CHAIN_PLOT_FILES}  # the cell space's, then the chain's


def _state_name(i: int) -> str:
    return "in" if i == 0 else f"n{i}"


def _op_colors(primitives: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    colors, k = {}, 0
    for name in primitives:
        if name == "none":
            colors[name] = "0.55"
        else:
            colors[name] = cmap(k % 10)
            k += 1
    return colors


def plot_alphas(
    history: Sequence[Mapping[str, Any]],
    primitives: Sequence[str],
    *,
    kind: str = "normal",
    genotype=None,
    warmup_epochs: int = 0,
    selection: str | None = None,
):
    """Small multiples of one cell type's edge weights over the epochs.

    Panel (row ``j``, column ``i``) is the edge from state ``i`` to node ``j`` (``in`` is the cell
    input); it has one line per primitive. The panel of the edge the genotype keeps is framed, its
    title names the kept op, and a ring marks that op's last weight; a star marks, per node, the
    largest alpha of the last epoch (DARTS' pick), named in its panel where it is not the kept op:
    perturbation selection (and a budget) often keep another one. The title says how the genotype
    was selected. Epochs before ``warmup_epochs`` (alphas frozen) are shaded.

    Args:
        history: per epoch ``{"normal": (E, P), "reduce": (E, P)}`` softmax weights (``alphas.pt``).
        primitives: the P primitive names, in column order.
        kind: ``"normal"`` or ``"reduce"``.
        genotype: optional final ``Genotype_CNN`` to highlight the kept edges.
        warmup_epochs: weight-only epochs at the start.
        selection: how the genotype was selected (``"perturbation"``, ``"alphas"``), for the title and legend.

    Returns:
        A matplotlib ``Figure``.

    Raises:
        ValueError: empty history or weights whose shape does not fit ``primitives``.
    """
    if not history:
        raise ValueError("plot_alphas needs at least one epoch of alphas")
    w = np.stack([np.asarray(h[kind], dtype=np.float64) for h in history])  # (epochs, E, P)
    epochs, n_edges, n_prims = w.shape
    if n_prims != len(primitives):
        raise ValueError(f"alphas have {n_prims} primitives but {len(primitives)} names were given")
    nodes = int(round((math.sqrt(8 * n_edges + 1) - 1) / 2))
    if nodes * (nodes + 1) // 2 != n_edges:
        raise ValueError(f"{n_edges} edges is not n (n + 1) / 2 for any node count n")
    kept = {}
    if genotype is not None:
        for j, (op, i) in enumerate(getattr(genotype, kind), start=1):
            kept[(i, j)] = op
    largest = {}  # per node, the strongest non-none (edge, op) of the last epoch: what the alphas would keep
    if any(name != "none" for name in primitives):
        for j, (op, i) in enumerate(pick_nodes(torch.as_tensor(w[-1]), primitives, nodes), start=1):
            largest[(i, j)] = op
    colors = _op_colors(primitives)
    x = np.arange(1, epochs + 1)
    lo, hi = float(w.min()), float(w.max())
    pad = max(0.02, 0.08 * (hi - lo))
    ylim = (max(0.0, lo - pad), min(1.0, hi + pad))
    cols = max(nodes, 2)
    # n >= 4: the legend fits in the empty upper triangle of the grid; else it gets a right margin
    margin = 0.0 if nodes >= 4 else 2.3
    width = 2.5 * cols + 0.6 + margin
    fig = new_figure(width, 1.9 * nodes + 1.5)
    axes = fig.subplots(nodes, cols, squeeze=False, sharex=True, sharey=True)
    marker = "o" if epochs <= 15 else None
    for j in range(1, nodes + 1):
        for i in range(cols):
            ax = axes[j - 1][i]
            if i >= j:
                ax.set_axis_off()
                continue
            row = edge_row(i, j)
            if warmup_epochs > 0:
                ax.axvspan(0.5, min(warmup_epochs, epochs) + 0.5, color="0.92", zorder=0, lw=0)
            for k, name in enumerate(primitives):
                ax.plot(x, w[:, row, k], color=colors[name], lw=1.6, marker=marker, ms=3,
                        ls="--" if name == "none" else "-", label=name)
            ring, star = kept.get((i, j)), largest.get((i, j))
            mark_picks(ax, epochs, None if ring is None else w[-1, row, primitives.index(ring)],
                       None if star is None else w[-1, row, primitives.index(star)])
            if star is not None and genotype is not None and star != ring:
                ax.text(0.03, 0.96, f"largest alpha: {star}", transform=ax.transAxes, fontsize=7, va="top",
                        ha="left", bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="0.6", alpha=0.9), zorder=8)
            title = f"{_state_name(i)} \u2192 n{j}"
            if (i, j) in kept:
                title += f"  (kept: {kept[(i, j)]})"
                for side in ax.spines.values():
                    side.set_edgecolor(colors.get(kept[(i, j)], "k"))
                    side.set_linewidth(2.2)
            ax.set_title(title, fontsize=9, fontweight="bold" if (i, j) in kept else "normal")
            ax.set_ylim(*ylim)
            ax.set_xlim(0.5, epochs + 0.5)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
            if i == 0:
                ax.set_ylabel("weight", fontsize=8)
            if j == nodes:
                ax.set_xlabel("search epoch", fontsize=8)
            ax.xaxis.set_major_locator(int_locator())
    handles, labels = axes[-1][0].get_legend_handles_labels()
    if warmup_epochs > 0:
        from matplotlib.patches import Patch

        handles.append(Patch(color="0.92", label="warm-up (alphas frozen)"))
        labels.append("warm-up (alphas frozen)")
    picks = pick_handles(selection) if genotype is not None else pick_handles(selection)[1:]
    handles += picks
    labels += [h.get_label() for h in picks]
    right = 1 - margin / width
    if margin:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(right + 0.01, 0.5), fontsize=8,
                   title="primitive", title_fontsize=8)
    else:
        fig.legend(handles, labels, loc="upper right", bbox_to_anchor=(0.99, 0.93), fontsize=8,
                   title="primitive", title_fontsize=8)
    if genotype is not None:
        why = f"framed and ringed: the edge and op the genotype keeps, {selection_text(selection)}"
    else:
        why = "starred: the largest alpha per node (last epoch)"
    why = textwrap.fill(why, width=int(11 * width))
    fig.suptitle(f"{kind} cell: softmax(alpha) per edge over the search\n{why}", fontsize=10)
    fig.tight_layout(rect=(0, 0, right, 0.97 - 0.035 * (why.count("\n") + 1)))
    return fig


_DX, _DY = 2.2, 0.62  # column and row spacing of the cell diagrams (data units)


def _layout(cell: Sequence[tuple[str, int]]) -> tuple[dict[int, tuple[float, float]], int]:
    """Positions of states 0..n: x = depth in the cell's tree, one row per node (node 1 on top).

    Every node has its own row, so the horizontal concat arrows into the output never cross a box,
    and op edges only join adjacent columns.
    """
    depth = {0: 0}
    for j, (_, i) in enumerate(cell, start=1):
        depth[j] = depth[i] + 1
    n = len(cell)
    pos = {0: (0.0, 0.0)}
    for j in range(1, n + 1):
        pos[j] = (_DX * depth[j], _DY * ((n + 1) / 2 - j))
    return pos, max(depth.values())


def _draw_cell(ax, cell, concat, *, reduction: bool, colors: Mapping[str, Any]) -> None:
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    pos, max_depth = _layout(cell)
    concat = [k for k in concat if k in pos]
    x_out = _DX * (max_depth + 1)
    ys = [pos[k][1] for k in concat] or [0.0]

    def box(x, y, text, face, w=0.55, h=0.36, ls="-"):
        patch = FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                               fc=face, ec="0.2", lw=1.2, ls=ls, zorder=3)
        ax.add_patch(patch)
        ax.text(x, y, text, ha="center", va="center", fontsize=9, zorder=4)
        return patch

    boxes = {0: box(*pos[0], "in\n(cell input)", "#dbe9f6", w=0.8, h=0.5)}
    for j in range(1, len(cell) + 1):
        in_out = j in concat
        boxes[j] = box(*pos[j], f"n{j}", "#fdf0d5" if in_out else "white", ls="-" if in_out else ":")
    # the output spans the rows of the concatenated nodes, so each concat arrow is horizontal
    out_h = max(ys) - min(ys) + 0.5
    out_patch = box(x_out, (max(ys) + min(ys)) / 2, "out\n(concat)", "#dcefd9", w=0.8, h=out_h)

    def arrow(a, b, pa, pb, *, color, style="-", lw=1.6):
        ax.add_patch(FancyArrowPatch(a, b, patchA=pa, patchB=pb, arrowstyle="-|>", mutation_scale=12,
                                     color=color, lw=lw, ls=style, zorder=2, shrinkA=1, shrinkB=1))

    for j, (op, i) in enumerate(cell, start=1):
        color = colors.get(op, "0.2")
        arrow(pos[i], pos[j], boxes[i], boxes[j], color=color)
        label = op + ("\nstride 2" if reduction and i == 0 else "")
        # 55% of the way: edges fanning out of one state are further apart near their targets, and
        # two edges that cross at their middles keep separate labels
        t = 0.55
        lx, ly = pos[i][0] + t * (pos[j][0] - pos[i][0]), pos[i][1] + t * (pos[j][1] - pos[i][1])
        ax.text(lx, ly, label, ha="center", va="center", fontsize=7.5, color="0.1", zorder=5,
                bbox=dict(boxstyle="round,pad=0.2", fc="white", ec=color, lw=1.0, alpha=0.95))
    for k in concat:
        arrow(pos[k], (x_out, pos[k][1]), boxes[k], out_patch, color="0.55", style="--", lw=1.1)
    all_y = [p[1] for p in pos.values()]
    ax.set_xlim(-0.5, x_out + 0.5)
    ax.set_ylim(min(all_y) - 0.45, max(all_y) + 0.45)
    ax.set_aspect("equal")
    ax.set_axis_off()


def plot_cells(genotype, *, title: str | None = None, primitives: Sequence[str] | None = None):
    """The genotype's normal and reduction cells as box-and-arrow diagrams (plain matplotlib).

    Each node ``n_j`` has one incoming edge labelled with its op (edges leaving a reduction cell's
    input have stride 2); dashed grey arrows collect the concatenated nodes into the cell output.
    Nodes drawn dotted are not part of the output.

    Args:
        genotype: a ``Genotype_CNN``.
        title: optional figure title.
        primitives: the space's primitives, to keep op colours the same as in :func:`plot_alphas`.

    Returns:
        A matplotlib ``Figure``.
    """
    ops = list(primitives) if primitives else sorted({op for op, _ in list(genotype.normal) + list(genotype.reduce)})
    colors = _op_colors(ops)
    widths, heights = [], []
    for kind in ("normal", "reduce"):
        cell = list(getattr(genotype, kind))
        _, d = _layout(cell)
        widths.append(_DX * (d + 1) + 1.0)
        heights.append(_DY * max(len(cell) - 1, 1) + 0.9)
    inch = 1.0  # inches per data unit
    fig = new_figure(max(6.0, inch * sum(widths) + 0.6), inch * max(heights) + 0.8)
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": widths})
    for ax, kind in zip(axes, ("normal", "reduce"), strict=True):
        _draw_cell(ax, list(getattr(genotype, kind)), list(getattr(genotype, f"{kind}_concat")),
                   reduction=kind == "reduce", colors=colors)
        ax.set_title(f"{kind} cell", fontsize=11)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _by_epoch(records: Sequence[Mapping[str, Any]], phase: str) -> list[Mapping[str, Any]]:
    """The phase's records, one per epoch (the last one wins: a resumed run may repeat epochs)."""
    out: dict[int, Mapping[str, Any]] = {}
    for i, r in enumerate(records):
        if r.get("phase") == phase:
            if phase == "train" and r.get("epoch") == 0:
                out = {}  # a new training run starts over
            out[int(r.get("epoch", i))] = r
    return [out[k] for k in sorted(out)]


def _series(recs, key):
    y = np.array([float(r[key]) if isinstance(r.get(key), (int, float)) else np.nan for r in recs])
    x = np.array([int(r.get("epoch", i)) + 1 for i, r in enumerate(recs)])
    return x, y


def plot_curves(
    records: Sequence[Mapping[str, Any]], *, test_acc: float | None = None, warmup_epochs: int = 0
):
    """Loss and accuracy per epoch from ``metrics.jsonl`` records, one row per phase.

    The search row shows the supernet's training loss/accuracy and, once the alphas are trained,
    its validation loss/accuracy (and the expected cost of the alphas when a resource penalty
    is on); the training row shows the final network's, with the held-out test accuracy as a
    dashed line.

    Args:
        records: dicts with ``phase`` (``"search"``/``"train"``), ``epoch`` and metrics.
        test_acc: held-out accuracy of the trained network, if known.
        warmup_epochs: weight-only search epochs to shade.

    Returns:
        A matplotlib ``Figure``.

    Raises:
        ValueError: no search or train records.
    """
    phases = [(p, _by_epoch(records, p)) for p in ("search", "train")]
    phases = [(p, recs) for p, recs in phases if recs]
    if not phases:
        raise ValueError("plot_curves needs metrics records with phase 'search' or 'train'")
    cost_keys = sorted({k for p, recs in phases if p == "search" for r in recs for k in r if k.startswith("expected_")})
    ncols = 3 if cost_keys else 2
    fig = new_figure(4.2 * ncols, 3.1 * len(phases) + 0.4)
    axes = fig.subplots(len(phases), ncols, squeeze=False)
    for row, (phase, recs) in enumerate(phases):
        ax_loss, ax_acc = axes[row][0], axes[row][1]
        last = max(int(r.get("epoch", i)) + 1 for i, r in enumerate(recs))
        for ax in axes[row]:
            ax.set_xlim(0.5, last + 0.5)
        what = "supernet" if phase == "search" else "final network"
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
            for split, style in (("train", "-"), ("valid", "--")):
                x, y = _series(recs, f"{split}_{metric}")
                if np.isfinite(y).any():
                    ax.plot(x, y, ls=style, marker="o" if len(x) <= 30 else None, ms=3, label=f"{split}")
            if phase == "search" and warmup_epochs > 0:
                ax.axvspan(0.5, warmup_epochs + 0.5, color="0.92", zorder=0, lw=0, label="warm-up")
            ax.set_title(f"{phase}: {what} {'loss' if metric == 'loss' else 'accuracy'}", fontsize=10)
            ax.set_xlabel(f"{phase} epoch", fontsize=9)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(int_locator())
        if phase == "train" and test_acc is not None:
            ax_acc.axhline(test_acc, color="C3", ls=":", lw=1.5, label=f"held-out test {test_acc:.3f}")
        ax_loss.set_ylabel("cross-entropy", fontsize=9)
        ax_acc.set_ylabel("accuracy", fontsize=9)
        for ax in (ax_loss, ax_acc):
            ax.legend(fontsize=8)
        if ncols == 3:
            ax_cost = axes[row][2]
            if phase != "search":
                ax_cost.set_axis_off()
                continue
            for key in cost_keys:
                x, y = _series(recs, key)
                ax_cost.plot(x, y, marker="o" if len(x) <= 30 else None, ms=3, label=key[len("expected_"):])
            ax_cost.set_title("search: expected cost of the alphas", fontsize=10)
            ax_cost.set_xlabel("search epoch", fontsize=9)
            ax_cost.grid(alpha=0.3)
            ax_cost.legend(fontsize=8)
            ax_cost.xaxis.set_major_locator(int_locator())
    fig.tight_layout()
    return fig


def write_plots(
    folder: str | os.PathLike,
    *,
    genotype=None,
    primitives: Sequence[str] | None = None,
    alpha_history: Sequence[Mapping[str, Any]] | None = None,
    records: Sequence[Mapping[str, Any]] | None = None,
    test_acc: float | None = None,
    warmup_epochs: int = 0,
    missing_only: bool = False,
    redraw: Sequence[str] = (),
    chain: ChainSpaceConfig | None = None,
    selection: str | None = None,
) -> list[Path]:
    """Write every plot the given data allows into ``folder`` (created if needed).

    Args:
        folder: where the PNGs go (a run's ``plots/``).
        genotype: the final genotype (``cells.png`` or ``chain.png``; highlights in the alpha plots).
        primitives: the cell space's primitives (needed for its alpha plots).
        alpha_history: per-epoch softmax weights (``alphas_normal.png``, ``alphas_reduce.png``; for a
            chain ``alphas_chain.png``).
        records: ``metrics.jsonl`` records (``curves.png``).
        test_acc: held-out accuracy to mark on the training curves.
        warmup_epochs: weight-only search epochs to shade.
        missing_only: keep existing PNGs, write only absent ones.
        redraw: file names to write even with ``missing_only`` (plots whose data changed).
        chain: the chain space of a chain genotype (its plots replace the cell plots).
        selection: how the genotype was read off the supernet (``"alphas"``, ``"perturbation"``), for titles.

    Returns:
        The paths of all plots of ``folder`` that exist afterwards, among :data:`ALL_PLOT_FILES`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    jobs = {}
    if chain is not None:
        if alpha_history:
            jobs["alphas_chain.png"] = lambda: plot_chain_alphas(
                alpha_history, chain, genotype=genotype, warmup_epochs=warmup_epochs, selection=selection
            )
        if genotype is not None:
            jobs["chain.png"] = lambda: plot_chain(genotype, chain, selection=selection)
    elif alpha_history and primitives:
        for kind in ("normal", "reduce"):
            jobs[f"alphas_{kind}.png"] = lambda kind=kind: plot_alphas(
                alpha_history, primitives, kind=kind, genotype=genotype, warmup_epochs=warmup_epochs,
                selection=selection,
            )
    if genotype is not None and chain is None:
        title = textwrap.fill(f"ops {selection_text(selection)}", 80) if selection else None
        jobs["cells.png"] = lambda: plot_cells(genotype, primitives=primitives, title=title)
    if records and any(r.get("phase") in ("search", "train") for r in records):
        jobs["curves.png"] = lambda: plot_curves(records, test_acc=test_acc, warmup_epochs=warmup_epochs)
    for name, make in jobs.items():
        path = folder / name
        if missing_only and path.is_file() and name not in redraw:
            continue
        save_figure(make(), path)
    return [folder / name for name in ALL_PLOT_FILES if (folder / name).is_file()]
