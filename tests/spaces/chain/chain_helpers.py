"""Shared helpers of the chain-space tests: a tiny space, one-hot alphas, every member of a space."""

from __future__ import annotations

import itertools

import torch

from fnas.spaces.chain import IDENTITY, ChainGenotype, ChainSpaceConfig

# 3 blocks: 2 -> 4 channels, 4 -> 4 (identity allowed), 4 -> 6 at stride 2; 8 ops x 2 widths each
TINY = dict(in_channels=2, num_classes=3, input_shape=(16, 1), widths=(4, 4, 6), width_fractions=(0.5, 1.0),
            kernels=(3, 5), dilations=(1, 2), strides=(1, 1, 2), width_policy="alphas")  # fmt: skip


def tiny(**changes) -> ChainSpaceConfig:
    return ChainSpaceConfig(**{**TINY, **changes})


def onehot_alphas(cfg, genotype, hot=0.0, cold=-1e4, dtype=torch.float64) -> dict:
    """Alphas whose softmax is exactly one-hot (in float64) at ``genotype``'s op and width."""
    alphas = {}
    for b, (op, width) in enumerate(genotype.blocks):
        alphas[f"b{b}_op"] = torch.full((len(cfg.candidates[b]),), cold, dtype=dtype)
        alphas[f"b{b}_op"][cfg.candidates[b].index(op)] = hot
        alphas[f"b{b}_width"] = torch.full((len(cfg.width_choices[b]),), cold, dtype=dtype)
        if op != IDENTITY:
            alphas[f"b{b}_width"][cfg.width_choices[b].index(width)] = hot
    return alphas


def all_genotypes(cfg) -> list[ChainGenotype]:
    """Every member of ``cfg``, enumerated without the cost module's DP."""
    per_block = [[(op, w) for op in cfg.candidates[b] for w in cfg.width_choices[b]] for b in range(cfg.num_blocks)]
    out = []
    for choice in itertools.product(*per_block):
        blocks, c_in, seen_identity = [], cfg.in_channels, False
        for op, w in choice:
            if op == IDENTITY:  # one member per identity, whatever width was drawn
                if w != cfg.width_choices[len(blocks)][0]:
                    break
                w = c_in
            blocks.append((op, w))
            c_in = w
        else:
            out.append(ChainGenotype(tuple(blocks)))
    return out
