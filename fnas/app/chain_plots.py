"""Pictures of a chain-space run: each block's op probabilities over the search, and the found chain as boxes."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from fnas.app.figures import int_locator, mark_picks, new_figure, pick_handles
from fnas.cost import genotype_cost
from fnas.spaces.chain import ChainGenotype, ChainSpaceConfig
from fnas.spaces.chain.spec import IDENTITY, parse_op

__all__ = ["CHAIN_PLOT_FILES", "chain_title", "op_label", "plot_chain", "plot_chain_alphas"]

CHAIN_PLOT_FILES = {
    "alphas_chain.png": "softmax(op alpha) of each chain block over the search epochs (its strongest ops)",
    "chain.png": "the found chain: one box per block (op, width, parameters)",
}


def op_label(op: str) -> str:
    """``"conv_k5_d2"`` -> ``"conv k5 d2"``; ``"identity"`` stays."""
    cand = parse_op(op)
    return IDENTITY if cand is None else f"{cand.op_type} k{cand.kernel} d{cand.dilation}"


def chain_title(space: ChainSpaceConfig, selection: str | None) -> str:
    """How the chain was read off the supernet: its ops by alphas or by perturbation; its widths."""
    ops = f"ops selected by {'perturbation' if selection == 'perturbation' else 'alphas'}"
    widths = "widths: the widest the budget allows" if space.width_policy == "fill" else "widths selected by alphas"
    return f"{ops}, {widths}"


def plot_chain_alphas(
    history: Sequence[Mapping[str, Any]],
    space: ChainSpaceConfig,
    *,
    genotype: ChainGenotype | None = None,
    warmup_epochs: int = 0,
    top: int = 4,
    selection: str | None = None,
):
    """Small multiples: per block, the softmax of its op alphas over the epochs (the ``top`` strongest ops).

    Ops outside the top are summed into one dashed grey "other ops" line (the kept op and the
    largest alpha are always drawn); the op the genotype keeps is named in the panel title and
    ringed at the last epoch, the largest alpha of the last epoch is starred, and named in its
    panel where the genotype keeps another op (perturbation selection, or a budget, can). Epochs
    before ``warmup_epochs`` (alphas frozen) are shaded.

    Args:
        history: per epoch ``{"b{b}_op": (n_ops,), ...}`` softmax weights (``alphas.pt``).
        space: the chain space (op names per block).
        genotype: the final genotype, to name the kept op and width.
        warmup_epochs: weight-only epochs at the start.
        top: how many ops per block to draw (by their largest weight over the epochs).
        selection: ``"alphas"`` or ``"perturbation"`` (for the title).

    Returns:
        A matplotlib ``Figure``.

    Raises:
        ValueError: empty history or a block whose weights do not fit ``space``.
    """
    if not history:
        raise ValueError("plot_chain_alphas needs at least one epoch of alphas")
    L = space.num_blocks
    cols = min(L, 3)
    rows = -(-L // cols)
    fig = new_figure(3.6 * cols + 0.4, 2.6 * rows + 0.9)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    epochs = len(history)
    x = np.arange(1, epochs + 1)
    marker = "o" if epochs <= 15 else None
    for b in range(L):
        ax = axes[b // cols][b % cols]
        names = space.candidates[b]
        w = np.stack([np.asarray(h[f"b{b}_op"], dtype=np.float64) for h in history])  # (epochs, n_ops)
        if w.shape[1] != len(names):
            raise ValueError(f"block {b}: alphas have {w.shape[1]} ops but the space has {len(names)}")
        kept_op = genotype.blocks[b][0] if genotype is not None else None
        kept = names.index(kept_op) if kept_op in names else None
        largest = int(np.argmax(w[-1]))
        order = [int(i) for i in np.argsort(-w.max(axis=0), kind="stable")[:top]]
        order += [i for i in dict.fromkeys((kept, largest)) if i is not None and i not in order]
        if warmup_epochs > 0:
            ax.axvspan(0.5, min(warmup_epochs, epochs) + 0.5, color="0.92", zorder=0, lw=0)
        for k, i in enumerate(order):
            ax.plot(x, w[:, i], color=f"C{k}", lw=1.6, marker=marker, ms=3, label=op_label(names[i]))
        if len(names) > len(order):
            rest = np.delete(w, order, axis=1).sum(axis=1)
            ax.plot(x, rest, color="0.55", lw=1.2, ls="--", label=f"other {len(names) - len(order)} ops")
        mark_picks(ax, epochs, None if kept is None else w[-1, kept], w[-1, largest])
        if kept is not None and largest != kept:
            ax.text(0.03, 0.96, f"largest alpha: {op_label(names[largest])}", transform=ax.transAxes, fontsize=7,
                    va="top", ha="left", bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="0.6", alpha=0.9),
                    zorder=8)
        title = f"block {b}"
        if genotype is not None:
            op, width = genotype.blocks[b]
            title += f"  (kept: {op_label(op)}" + (")" if op == IDENTITY else f", width {width})")
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0.0, 1.0)
        ax.set_xlim(0.5, epochs + 0.5)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, loc="best")
        ax.xaxis.set_major_locator(int_locator())
        if b % cols == 0:
            ax.set_ylabel("weight", fontsize=8)
        if b // cols == rows - 1:
            ax.set_xlabel("search epoch", fontsize=8)
    for b in range(L, rows * cols):
        axes[b // cols][b % cols].set_axis_off()
    shade = " (grey: warm-up, alphas frozen)" if warmup_epochs > 0 else ""
    fig.suptitle(f"chain blocks: softmax(op alpha) over the search{shade}\n{chain_title(space, selection)}",
                 fontsize=10)
    picks = pick_handles(selection) if genotype is not None else pick_handles(selection)[1:]
    fig.legend(handles=picks, loc="lower center", ncol=len(picks), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 0.93))
    return fig


def plot_chain(genotype: ChainGenotype, space: ChainSpaceConfig, *, selection: str | None = None):
    """The found chain as a row of boxes: input, one box per block (op, width, stride, params), head.

    Identity blocks (skipped: the search chose a shallower network) are drawn dotted.

    Args:
        genotype: a member of ``space``.
        space: the chain space (strides, input and classes).
        selection: ``"alphas"`` or ``"perturbation"`` (for the title).

    Returns:
        A matplotlib ``Figure``.
    """
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    cost = genotype_cost(genotype, space)
    T = space.input_shape[0]
    boxes = [(f"input\n{space.in_channels} x {T}", "#dbe9f6", "-")]
    for b, ((op, width), stride) in enumerate(zip(genotype.blocks, space.strides)):
        params = cost.parts[f"blocks.{b}.{op}"][0]
        if op == IDENTITY:
            boxes.append((f"block {b}\nidentity\n(skipped)", "white", ":"))
            continue
        text = f"block {b}\n{op_label(op)}\nwidth {width}" + (f"\nstride {stride}" if stride > 1 else "")
        boxes.append((text + f"\n{params:,} params", "#fdf0d5", "-"))
    boxes.append((f"pool + linear\n{space.num_classes} classes\n{cost.parts['head'][0]:,} params", "#dcefd9", "-"))
    dx, w, h = 1.6, 1.3, 1.1
    fig = new_figure(max(6.0, dx * len(boxes) + 0.4), 2.4)
    ax = fig.add_subplot()
    patches = []
    for i, (text, face, ls) in enumerate(boxes):
        patch = FancyBboxPatch((i * dx - w / 2, -h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                               fc=face, ec="0.2", lw=1.2, ls=ls, zorder=3)
        ax.add_patch(patch)
        ax.text(i * dx, 0, text, ha="center", va="center", fontsize=8, zorder=4)
        patches.append(patch)
    for i in range(len(boxes) - 1):
        ax.add_patch(FancyArrowPatch((i * dx, 0), ((i + 1) * dx, 0), patchA=patches[i], patchB=patches[i + 1],
                                     arrowstyle="-|>", mutation_scale=12, color="0.3", lw=1.4, zorder=2))
    ax.set_xlim(-w / 2 - 0.2, (len(boxes) - 1) * dx + w / 2 + 0.2)
    ax.set_ylim(-h / 2 - 0.15, h / 2 + 0.15)
    ax.set_aspect("equal")
    ax.set_axis_off()
    fig.suptitle(f"found chain: {cost.params:,} parameters, {cost.macs:,} MACs\n{chain_title(space, selection)}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.86))
    return fig
