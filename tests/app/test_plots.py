"""Plots: valid PNGs, one panel per edge, labelled cell diagrams, curves per phase, no rewrites."""

from __future__ import annotations

import struct

import pytest
import torch

from fnas.app import plots
from fnas.app.chain_plots import op_label, plot_chain, plot_chain_alphas
from fnas.spaces import primitives as P
from fnas.spaces.cell.genotype import MY_CUSTOM_GENOTYPE, Genotype_CNN
from fnas.spaces.chain import ChainSpaceConfig

PRIMS = list(P.SEED_KX1)


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG file; fails if it is not one."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def history(nodes: int, epochs: int, prims=PRIMS, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    edges = nodes * (nodes + 1) // 2
    a = {k: torch.zeros(edges, len(prims)) for k in ("normal", "reduce")}
    out = []
    for _ in range(epochs):
        a = {k: v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in a.items()}
        out.append({k: torch.softmax(v, -1) for k, v in a.items()})
    return out


def records(search: int, train: int, *, cost: bool = False, warmup: int = 0):
    out = []
    for e in range(search):
        r = {"phase": "search", "epoch": e, "train_loss": 2 - 0.1 * e, "train_acc": 0.3 + 0.02 * e}
        if e >= warmup:  # warm-up epochs have no validation (architecture) metrics
            r.update(valid_loss=2.1 - 0.1 * e, valid_acc=0.25 + 0.02 * e)
            if cost:
                r["expected_params"] = 5000 - 50 * e
        out.append(r)
    out += [{"phase": "train", "epoch": e, "train_loss": 1 - 0.05 * e, "train_acc": 0.5 + 0.02 * e}
            for e in range(train)]
    return out


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.axison]


def all_text(fig) -> str:
    return " ".join(t.get_text() for ax in fig.axes for t in ax.texts + [ax.title])


@pytest.mark.parametrize("nodes", [1, 2, 4], ids=lambda n: f"{n}nodes")
def test_alphas_has_one_panel_per_edge(tmp_path, nodes):
    fig = plots.plot_alphas(history(nodes, 3), PRIMS, kind="reduce", warmup_epochs=1)
    panels = visible_axes(fig)
    assert len(panels) == nodes * (nodes + 1) // 2
    assert all(len(ax.lines) == len(PRIMS) for ax in panels)
    assert [t.get_text() for t in fig.legends[0].get_texts()][: len(PRIMS)] == PRIMS
    width, height = png_size(plots.save_figure(fig, tmp_path / "a.png"))
    assert width >= 500 and height >= 300


def test_alphas_frames_the_kept_edges():
    fig = plots.plot_alphas(history(4, 2), PRIMS, kind="normal", genotype=MY_CUSTOM_GENOTYPE)
    titles = [ax.get_title() for ax in visible_axes(fig)]
    assert "in \u2192 n1  (kept: conv_bn_relu_3x1)" in titles
    assert "n1 \u2192 n4  (kept: conv_bn_relu_5x1)" in titles
    assert sum("kept" in t for t in titles) == 4


@pytest.mark.parametrize("bad, message", [([], "at least one epoch"), ("prims", "7 primitives")],
                         ids=["empty", "names"])
def test_alphas_rejects_bad_input(bad, message):
    hist = history(2, 1) if bad == "prims" else bad
    with pytest.raises(ValueError, match=message):
        plots.plot_alphas(hist, PRIMS[:3])


def test_cell_layout_gives_every_node_its_row_and_joins_adjacent_columns():
    for genotype in (MY_CUSTOM_GENOTYPE,):
        for cell in (genotype.normal, genotype.reduce):
            pos, depth = plots._layout(cell)
            rows = [pos[j][1] for j in range(1, len(cell) + 1)]
            assert len(set(rows)) == len(rows)
            for j, (_, i) in enumerate(cell, start=1):
                assert pos[j][0] - pos[i][0] == pytest.approx(plots._DX)


@pytest.mark.parametrize("genotype", [
    MY_CUSTOM_GENOTYPE,
    Genotype_CNN([("sep_conv_3x3", 0)], range(1, 2), [("max_pool_3x3", 0)], range(1, 2)),
    Genotype_CNN([("dil_conv_5x5", 0), ("skip_connect", 1), ("avg_pool_3x3", 2)], [3],
                 [("skip_connect", 0), ("sep_conv_5x5", 0), ("max_pool_3x3", 1)], [2, 3]),
], ids=["seed", "one_node", "2d_partial_concat"])
def test_cells_label_every_edge(tmp_path, genotype):
    fig = plots.plot_cells(genotype, title="found cells")
    text = all_text(fig)
    for op, _ in list(genotype.normal) + list(genotype.reduce):
        assert op in text
    reduce_from_input = sum(i == 0 for _, i in genotype.reduce)
    assert text.count("stride 2") == reduce_from_input
    assert "normal cell" in text and "reduce cell" in text
    png_size(plots.save_figure(fig, tmp_path / "c.png"))


@pytest.mark.parametrize("search, train, cost, panels", [
    (4, 0, False, 2), (0, 3, False, 2), (4, 3, False, 4), (4, 3, True, 5),
], ids=["search", "train", "both", "both_with_cost"])
def test_curves_have_a_row_per_phase(tmp_path, search, train, cost, panels):
    fig = plots.plot_curves(records(search, train, cost=cost, warmup=2), test_acc=0.8 if train else None,
                            warmup_epochs=2)
    assert len(visible_axes(fig)) == panels
    if train:
        acc = [ax for ax in visible_axes(fig) if ax.get_title() == "train: final network accuracy"][0]
        assert any("held-out test 0.800" in t.get_text() for t in acc.get_legend().get_texts())
    png_size(plots.save_figure(fig, tmp_path / "curves.png"))


def test_curves_keep_the_last_record_of_a_repeated_epoch():
    recs = records(3, 0) + [{"phase": "search", "epoch": 2, "train_loss": 9.0, "train_acc": 0.1}]
    fig = plots.plot_curves(recs)
    train_line = visible_axes(fig)[0].lines[0]
    assert list(train_line.get_ydata()) == pytest.approx([2.0, 1.9, 9.0])


def test_curves_need_records():
    with pytest.raises(ValueError, match="phase 'search' or 'train'"):
        plots.plot_curves([{"phase": "other"}])


def test_write_plots_writes_what_the_data_allows_and_keeps_existing_files(tmp_path):
    folder = tmp_path / "plots"
    genotype = Genotype_CNN([("conv_bn_relu_3x1", 0), ("skip_connect", 1)], range(1, 3),
                            [("max_pool_3x1", 0), ("conv_bn_relu_5x1", 0)], range(1, 3))
    written = plots.write_plots(folder, genotype=genotype, records=records(2, 2))
    assert [p.name for p in written] == ["cells.png", "curves.png"]  # no alphas: no alpha plots
    before = {p.name: p.read_bytes() for p in written}
    written = plots.write_plots(folder, genotype=genotype, primitives=PRIMS, alpha_history=history(2, 2),
                                records=records(3, 2), missing_only=True, redraw=["curves.png"])
    assert [p.name for p in written] == list(plots.PLOT_FILES)
    assert (folder / "cells.png").read_bytes() == before["cells.png"]  # kept
    assert (folder / "curves.png").read_bytes() != before["curves.png"]  # redrawn: new data
    assert not list(folder.glob(".*tmp*"))  # atomic writes leave no temporary files


# --- the chain space -------------------------------------------------------------------------------

CHAIN = ChainSpaceConfig(in_channels=2, num_classes=3, input_shape=(16, 1), widths=(8, 8, 16, 8), kernels=(3, 5))


def chain_history(epochs: int, space=CHAIN, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    sizes = {f"b{b}_op": len(space.candidates[b]) for b in range(space.num_blocks)}
    sizes.update({f"b{b}_width": len(space.width_choices[b]) for b in range(space.num_blocks)})
    a = {k: torch.zeros(n) for k, n in sizes.items()}
    out = []
    for _ in range(epochs):
        a = {k: v + 0.5 * torch.randn(v.shape, generator=gen) for k, v in a.items()}
        out.append({k: torch.softmax(v, -1) for k, v in a.items()})
    return out


def test_chain_alphas_has_a_panel_per_block_with_the_top_ops(tmp_path):
    genotype = CHAIN.derive({k: torch.log(v) for k, v in chain_history(3)[-1].items()})
    fig = plot_chain_alphas(chain_history(3), CHAIN, genotype=genotype, warmup_epochs=1, top=3,
                            selection="perturbation")
    panels = visible_axes(fig)
    assert len(panels) == CHAIN.num_blocks
    assert all(len(ax.lines) == 4 for ax in panels)  # 3 ops and "other ops"
    assert "ops selected by perturbation" in fig._suptitle.get_text()
    for b, ax in enumerate(panels):
        assert ax.get_title().startswith(f"block {b}  (kept: {op_label(genotype.blocks[b][0])}")
    png_size(plots.save_figure(fig, tmp_path / "a.png"))


def test_chain_diagram_has_a_box_per_block():
    genotype = CHAIN.fcn_genotype(8)
    fig = plot_chain(genotype, CHAIN, selection="alphas")
    text = all_text(fig)
    assert text.count("block ") == CHAIN.num_blocks and "identity" in text and "conv k5 d1" in text
    assert "ops selected by alphas" in fig._suptitle.get_text()


def test_write_plots_draws_chain_plots_for_a_chain(tmp_path):
    genotype = CHAIN.fcn_genotype(8)
    written = plots.write_plots(tmp_path, genotype=genotype, alpha_history=chain_history(2), records=records(2, 1),
                                chain=CHAIN, selection="alphas")
    assert [p.name for p in written] == ["curves.png", "alphas_chain.png", "chain.png"]


# --- what was kept, and why (issue 16) --------------------------------------------------------------


def legend_labels(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def panel_texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_alphas_mark_the_kept_op_and_the_largest_alpha_where_they_differ():
    # one node, one edge (in -> n1): conv_bn_relu_3x1 has the largest alpha, the genotype keeps max_pool_3x1
    prims = ["none", "max_pool_3x1", "conv_bn_relu_3x1"]
    hist = [{k: torch.tensor([[0.1, 0.2, 0.7]]) for k in ("normal", "reduce")}]
    genotype = Genotype_CNN([("max_pool_3x1", 0)], range(1, 2), [("conv_bn_relu_3x1", 0)], range(1, 2))
    fig = plots.plot_alphas(hist, prims, kind="normal", genotype=genotype, selection="perturbation")
    assert "kept (perturbation)" in legend_labels(fig) and "largest alpha (last epoch)" in legend_labels(fig)
    assert "largest alpha: conv_bn_relu_3x1" in panel_texts(fig)
    assert "selected by perturbation" in fig._suptitle.get_text()
    assert "not by the largest alpha" in fig._suptitle.get_text()
    (panel,) = visible_axes(fig)
    assert len(panel.lines) == len(prims)  # the marks are points, not more lines
    marks = [c.get_offsets()[0].tolist() for c in panel.collections if len(c.get_offsets()) == 1]
    assert marks == [pytest.approx([1, 0.2]), pytest.approx([1, 0.7])]  # ring on the kept op, star on the largest
    # where the genotype keeps the largest alpha, nothing extra is named
    fig = plots.plot_alphas(hist, prims, kind="reduce", genotype=genotype, selection="alphas")
    assert not any(t.startswith("largest alpha") for t in panel_texts(fig))
    assert "kept (alphas)" in legend_labels(fig) and "selected by the alphas" in fig._suptitle.get_text()


def test_chain_alphas_mark_the_kept_op_and_the_largest_alpha_where_they_differ():
    hist = chain_history(2)
    genotype = CHAIN.derive({k: torch.log(v) for k, v in hist[-1].items()})
    # block 0 keeps the weakest op of the last epoch instead
    weakest = CHAIN.candidates[0][int(torch.argmin(hist[-1]["b0_op"]))]
    genotype = genotype._replace(blocks=((weakest, genotype.blocks[0][1]), *genotype.blocks[1:]))
    fig = plot_chain_alphas(hist, CHAIN, genotype=genotype, top=2, selection="perturbation")
    assert legend_labels(fig)[-2:] == ["kept (perturbation)", "largest alpha (last epoch)"]
    strongest = CHAIN.candidates[0][int(torch.argmax(hist[-1]["b0_op"]))]
    assert panel_texts(fig) == [f"largest alpha: {op_label(strongest)}"]  # block 0 only
    first = visible_axes(fig)[0]
    assert op_label(weakest) in [t.get_text() for t in first.get_legend().get_texts()]  # drawn though not in the top 2


def test_write_plots_titles_the_cells_with_the_selection(tmp_path, monkeypatch):
    titles = []
    real = plots.plot_cells
    monkeypatch.setattr(plots, "plot_cells", lambda g, **kw: titles.append(kw.get("title")) or real(g, **kw))
    plots.write_plots(tmp_path, genotype=MY_CUSTOM_GENOTYPE, primitives=PRIMS, selection="perturbation")
    assert "selected by perturbation" in titles[0]
