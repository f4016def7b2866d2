"""``NetworkCnn``: the fixed network a genotype describes, as a ``torch.nn.Module``.

It runs on the same pure layer functions as the search network, so a supernet whose alphas pick
the genotype's ops (and ``none`` elsewhere) gives the same logits as a NetworkCnn holding the same
weights (see :meth:`NetworkCnn.load_supernet`). Cells use affine BatchNorm, as DARTS' evaluation
network does; the affine parameters start at (1, 0), which is what the search network implies.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from fnas.core import layers as L
from fnas.core import tree
from fnas.spaces import primitives as P
from fnas.spaces.cell.genotype import Genotype_CNN, validate_genotype
from fnas.spaces.cell.supernet import apply_preprocess, apply_stem
from fnas.spaces.cell.topology import check_preprocess, check_reductions, edge_key, plan_cells, preprocesses
from fnas.spaces.primitives.modules import OPS, FunctionalOp, ParamTree, is_builtin, split_tree

Tensor = torch.Tensor


def _write_back(old: dict, new: dict) -> None:
    """Copy updated running statistics into the module's buffers (nn.BatchNorm semantics)."""
    with torch.no_grad():
        for o, n in zip(tree.leaves(old), tree.leaves(new)):
            if o is not n:
                o.copy_(n)


def _kind_of(genotype: Genotype_CNN) -> str:
    """``"1d"``, ``"2d"``, or ``"any"`` when every op is layout-free (skip, none, ...)."""
    kinds = {P.get(op).kind for op, _ in list(genotype.normal) + list(genotype.reduce)}
    if "1d" in kinds and "2d" in kinds:
        raise ValueError("The genotype mixes kx1 and kxk primitives; a network is either kx1 or 2D")
    return "2d" if "2d" in kinds else "1d" if "1d" in kinds else "any"


class _Cell(nn.Module):
    def __init__(self, genotype_cell, concat, c_in: int, c: int, reduction: bool, *, preprocess: bool, gen):
        super().__init__()
        self.pre = None  # no preprocessing: state_0 is the cell input
        if preprocess:
            pre_p, pre_s = L.init_bn(c, affine=True)
            pre_p = {"conv": L.init_conv(gen, c_in, c, (1, 1)), "bn": pre_p}
            self.pre = ParamTree(pre_p, {"bn": pre_s})
        self.links = [(op, idx, 2 if reduction and idx == 0 else 1) for op, idx in genotype_cell]
        self.concat = list(concat)
        self.ops = nn.ModuleDict()
        for j, (op, idx, stride) in enumerate(self.links, start=1):
            if is_builtin(op):
                self.ops[f"n{j}"] = FunctionalOp(op, c, stride, True, gen=gen)
            else:
                self.ops[f"n{j}"] = OPS[op](c, stride, True)

    def forward(self, x: Tensor) -> Tensor:
        s0 = x
        if self.pre is not None:
            params, stats = split_tree(self.pre)
            s0, new = apply_preprocess(params, stats, x, train=self.training)
            if self.training:
                _write_back(stats, new)
        states = [s0]
        for j, (_, idx, _) in enumerate(self.links, start=1):
            states.append(self.ops[f"n{j}"](states[idx]))
        return torch.cat([states[k] for k in self.concat], dim=1)


class NetworkCnn(nn.Module):
    """The evaluation network built from a genotype (the seed's signature).

    Args:
        C: initial channels (``nas_init_channels``).
        num_classes: output classes.
        layers: number of cells; cells ``layers // 3`` and ``2 * layers // 3`` reduce unless
            ``reductions`` says otherwise.
        genotype: a :class:`Genotype_CNN`.
        in_channels: input channels.
        with_input_batchnorm: BatchNorm on the raw input.
        nodes_per_layer: nodes per cell (must match the genotype).
        multiplier: nodes concatenated into the cell output (must match the concat lists).
        stem_multiplier: the stem has ``stem_multiplier * C`` channels.
        gen: optional generator for a reproducible init.
        kx1: time series (``(N, C, T, 1)`` input, (k, 1) kernels) or 2D; default: inferred from
            the genotype's ops (kx1 unless it has a 2D op; pass it for genotypes of
            layout-free ops only, such as all ``skip_connect``).
        reductions: indices of the reduction cells; None: the seed's ``layers // 3`` and
            ``2 * layers // 3``; ``()``: none.
        preprocess: ``"always"`` (the seed: ReLU -> 1x1 conv -> BN on every cell input) or
            ``"when_needed"`` (only where the input's channels differ from the cell's width).

    Input: ``(N, in_channels, T, 1)`` for kx1 genotypes, ``(N, in_channels, H, W)`` for 2D ones.

    Raises:
        ValueError: an invalid genotype or arguments that do not fit it.
    """

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        genotype: Genotype_CNN,
        in_channels: int = 1,
        with_input_batchnorm: bool = True,
        nodes_per_layer: int = 4,
        multiplier: int = 4,
        stem_multiplier: int = 3,
        *,
        gen: torch.Generator | None = None,
        kx1: bool | None = None,
        reductions: Sequence[int] | None = None,
        preprocess: str = "always",
    ):
        super().__init__()
        for name, value in (("C", C), ("num_classes", num_classes), ("layers", layers), ("in_channels", in_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"NetworkCnn: {name} must be a positive int, got {value!r}")
        validate_genotype(genotype, nodes=nodes_per_layer, multiplier=multiplier)
        reductions = check_reductions(reductions, layers, "NetworkCnn")
        check_preprocess(preprocess, "NetworkCnn")
        if gen is None:
            gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
        self.genotype = genotype
        self.in_channels, self.num_classes = in_channels, num_classes
        self.with_input_batchnorm = with_input_batchnorm
        inferred = _kind_of(genotype)
        if kx1 is not None and kx1 != (inferred == "1d") and inferred != "any":
            raise ValueError(f"kx1={kx1} contradicts the genotype's {inferred} ops")
        self.kx1 = (inferred != "2d") if kx1 is None else bool(kx1)
        k3 = L.kernel_shape(3, self.kx1)
        if with_input_batchnorm:
            self.input_bn = ParamTree(*L.init_bn(in_channels, affine=True))
        c_stem = stem_multiplier * C
        bn_p, bn_s = L.init_bn(c_stem, affine=True)
        self.stem = ParamTree({"conv": L.init_conv(gen, in_channels, c_stem, k3), "bn": bn_p}, {"bn": bn_s})
        self.cells = nn.ModuleList()
        # validate_genotype checked that both concat lists have `multiplier` nodes
        for reduction, c_in, c in plan_cells(C, layers, stem_multiplier, multiplier, reductions):
            cell = genotype.reduce if reduction else genotype.normal
            concat = genotype.reduce_concat if reduction else genotype.normal_concat
            pre = preprocesses(preprocess, c_in, c)
            self.cells.append(_Cell(cell, concat, c_in, c, reduction, preprocess=pre, gen=gen))
        self.head = ParamTree(L.init_linear(gen, multiplier * c, num_classes), {})
        self.reductions = list(reductions)
        self.preprocess = preprocess

    def _stem_trees(self) -> tuple[dict, dict]:
        params, stats = split_tree(self.stem)
        params, stats = {"stem": params}, {"stem": stats}
        if self.with_input_batchnorm:
            params["input_bn"], stats["input_bn"] = split_tree(self.input_bn)
        return params, stats

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` for ``x`` of shape (N, C, T, 1) or (N, C, H, W)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"NetworkCnn expects (N, {self.in_channels}, T, 1) or (N, {self.in_channels}, H, W) input, "
                f"got {tuple(x.shape)}"
            )
        if self.kx1 and x.shape[-1] != 1:
            raise ValueError(f"NetworkCnn of a kx1 genotype expects (N, C, T, 1) input, got {tuple(x.shape)}")
        x = L.to_layout(x)
        params, stats = self._stem_trees()
        h, new = apply_stem(params, stats, x, train=self.training)
        if self.training:
            _write_back(stats, new)
        for cell in self.cells:
            h = cell(h)
        return L.apply_linear(split_tree(self.head)[0], L.global_avg_pool(h))

    @torch.no_grad()
    def load_supernet(self, weights: dict, stats: dict) -> None:
        """Copy the matching search-network weights and statistics into this network.

        Stem, input BN, cell preprocessing, the genotype's op on its edge, and the head are taken
        from the supernet pytrees; affine BN parameters absent from the search network stay as
        they are. Requires the network to have been built with the supernet's sizes.

        Raises:
            ValueError: shapes do not match (a different C, layers or space).
        """
        def copy(dst: dict, src: dict, where: str) -> None:
            flat_dst, flat_src = tree.flatten_dict(dst), tree.flatten_dict(src)
            for key, value in flat_src.items():
                if key not in flat_dst:
                    continue
                if flat_dst[key].shape != value.shape:
                    raise ValueError(
                        f"{where}.{key}: network has shape {tuple(flat_dst[key].shape)}, supernet "
                        f"{tuple(value.shape)}; build NetworkCnn with the search space's sizes"
                    )
                flat_dst[key].copy_(value)

        params, own_stats = self._stem_trees()
        copy(params, {k: weights[k] for k in params}, "stem")
        copy(own_stats, {k: stats[k] for k in own_stats}, "stem")
        for layer, cell in enumerate(self.cells):
            cw, cs = weights["cells"][f"c{layer}"], stats["cells"][f"c{layer}"]
            if (cell.pre is None) != ("pre" not in cw):
                raise ValueError(
                    f"cell {layer}: the network {'has no' if cell.pre is None else 'has a'} preprocessing, the "
                    "supernet the opposite; build NetworkCnn with the space's preprocess and reductions"
                )
            if cell.pre is not None:
                p, s = split_tree(cell.pre)
                copy(p, cw["pre"], "pre")
                copy(s, cs["pre"], "pre")
            for j, (op, idx, _) in enumerate(cell.links, start=1):
                module = cell.ops[f"n{j}"]
                edge = edge_key(idx, j)
                if op not in cw["edges"].get(edge, {}):
                    raise ValueError(
                        f"cell {layer}, node {j}: the supernet has no {op!r} on edge {idx}->{j}; load "
                        "weights from a supernet whose space contains the genotype's ops"
                    )
                src_p, src_s = cw["edges"][edge][op], cs["edges"][edge][op]
                if isinstance(module, FunctionalOp):
                    p, s = split_tree(module.tree)
                else:
                    p, s = dict(module.named_parameters()), dict(module.named_buffers())
                copy(p, src_p, f"cells.{layer}.{op}")
                copy(s, src_s, f"cells.{layer}.{op}")
        copy(split_tree(self.head)[0], weights["head"], "head")
