"""The chain supernet as pure functions: ``init_supernet`` and ``apply_supernet`` over pytrees.

Block b holds ONE weight per op type over the largest receptive field's taps (PIT): candidate
``(k, d)`` is a fixed 0/1 tap mask, so a block runs one convolution per op type however many
kernels and dilations it searches. With ``p = softmax(b{b}_op)``, per type ``t``:
``P_t = sum_{(k,d) in t} p_{t,k,d}``, ``m_t = sum_{k,d} (p_{t,k,d} / P_t) M_{k,d}`` and
``y_t = ReLU(BN(conv(x, W_t * m_t)))`` (sep: depthwise with the masked taps, pointwise, BN, ReLU).
The width mask (FBNetV2) ``m_w = sum_w q_w [c < w]`` with ``q = softmax(b{b}_width)`` scales the
ops' output, and identity bypasses it::

    y = m_w * sum_t P_t y_t + p_identity * x

(identity carries the input's width, which the previous block's mask already set; masking it
again with this block's width would make a one-hot identity differ from the network's).

References:
    Risso et al. Lightweight Neural Architecture Search for Temporal Convolutional Networks at the
    Edge (PIT). IEEE Transactions on Computers 2022.
    Wan et al. FBNetV2: Differentiable Neural Architecture Search for Spatial and Channel Dimensions. CVPR 2020.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fnas.core import layers as L
from fnas.spaces.chain.spec import IDENTITY, ChainSpec

__all__ = ["apply_block", "apply_bn", "apply_supernet", "init_supernet", "tap_index", "tap_masks", "width_masks"]

Tensor = torch.Tensor


def tap_index(taps: int, kernel: int, dilation: int) -> list[int]:
    """Indices into a centred ``taps``-tap kernel of a ``kernel``-tap kernel at ``dilation``."""
    centre = taps // 2
    return [centre + dilation * (j - kernel // 2) for j in range(kernel)]


def tap_masks(cfg: ChainSpec, op_type: str, *, like: Tensor | None = None) -> Tensor:
    """``(n_t, taps)`` 0/1 masks of op type ``op_type``'s candidates, in alphas order.

    Built from Python constants on each call (no cache: ``torch.compile`` folds them; an
    ``lru_cache`` would be traced through with a warning). Dtype and device of ``like`` (float64 CPU).
    """
    rows = [c for c in cfg.op_candidates if c.op_type == op_type]
    masks = [[0.0] * cfg.taps for _ in rows]
    for row, c in zip(masks, rows):
        for i in tap_index(cfg.taps, c.kernel, c.dilation):
            row[i] = 1.0
    like = torch.empty((), dtype=torch.float64) if like is None else like
    return torch.tensor(masks, dtype=like.dtype, device=like.device)


def width_masks(cfg: ChainSpec, block: int, *, like: Tensor | None = None) -> Tensor:
    """``(n_w, widths[block])``: row ``i`` keeps the first ``width_choices[block][i]`` channels."""
    like = torch.empty((), dtype=torch.float64) if like is None else like
    keep = [[1.0 if c < w else 0.0 for c in range(cfg.widths[block])] for w in cfg.width_choices[block]]
    return torch.tensor(keep, dtype=like.dtype, device=like.device)


def apply_bn(params: dict, stats: dict, x: Tensor, *, train: bool, sync: Any = None) -> tuple[Tensor, dict]:
    """Every BatchNorm of the chain space goes through here, so wiring ``sync`` is one line.

    ``fnas.core.layers.apply_bn`` does not take ``sync`` yet: today it syncs data-parallel batches
    through :mod:`fnas.core.collectives`' active context on its own. Pass ``sync`` on here once it does.
    """
    del sync
    return L.apply_bn(params, stats, x, train=train)


def _kaiming(gen: torch.Generator, shape: tuple[int, ...], fan_in: int, dtype: torch.dtype) -> Tensor:
    """Torch's default conv init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return (torch.rand(shape, generator=gen, dtype=dtype) * 2.0 - 1.0) / math.sqrt(fan_in)


def init_supernet(
    cfg: ChainSpec, gen: torch.Generator, *, dtype: torch.dtype = torch.float32
) -> tuple[dict, dict, dict]:
    """``(weights, alphas, stats)`` of the chain supernet.

    Shared kernels are drawn with the fan-in of the largest candidate kernel (``c_in * k_max``
    taps, not all ``taps``), torch's default for the network a candidate builds.

    Returns:
        ``weights``: ``{"input_bn"?, "blocks": {"b0": {"conv": {"weight", "bn"}, "sep": {"dw", "pw",
        "bn"}}, ...}, "head"}``; ``alphas``: flat ``{"b0_op": (n_candidates,), "b0_width":
        (n_widths,), ...}`` drawn as DARTS' ``1e-3 * randn``; ``stats``: BatchNorm running statistics.
    """
    weights: dict = {"blocks": {}}
    stats: dict = {"blocks": {}}
    if cfg.with_input_batchnorm:
        weights["input_bn"], stats["input_bn"] = L.init_bn(cfg.in_channels, affine=True, dtype=dtype)
    k_max, taps = max(cfg.kernels), cfg.taps
    for b, (c_in, c_out) in enumerate(zip(cfg.in_widths, cfg.widths)):
        bw: dict = {}
        bs: dict = {}
        for t in cfg.op_types:
            bn_p, bn_s = L.init_bn(c_out, affine=True, dtype=dtype)
            if t == "conv":
                bw[t] = {"weight": _kaiming(gen, (c_out, c_in, taps, 1), c_in * k_max, dtype), "bn": bn_p}
            else:
                bw[t] = {
                    "dw": _kaiming(gen, (c_in, 1, taps, 1), k_max, dtype),
                    "pw": _kaiming(gen, (c_out, c_in, 1, 1), c_in, dtype),
                    "bn": bn_p,
                }
            bs[t] = {"bn": bn_s}
        weights["blocks"][f"b{b}"], stats["blocks"][f"b{b}"] = bw, bs
    weights["head"] = L.init_linear(gen, cfg.widths[-1], cfg.num_classes, dtype=dtype)
    alphas = {}
    for b in range(cfg.num_blocks):
        alphas[f"b{b}_op"] = 1e-3 * torch.randn(len(cfg.candidates[b]), generator=gen, dtype=dtype)
        alphas[f"b{b}_width"] = 1e-3 * torch.randn(len(cfg.width_choices[b]), generator=gen, dtype=dtype)
    return weights, alphas, stats


def _apply_type(
    params: dict, stats: dict, x: Tensor, taps_w: Tensor, *, op_type: str, stride: int, train: bool, sync: Any
) -> tuple[Tensor, dict]:
    """One op type with tap weights ``taps_w`` (taps,): ReLU(BN(conv)) or ReLU(BN(pw(dw)))."""
    m = taps_w.reshape(1, 1, -1, 1)
    if op_type == "conv":
        y = L.apply_conv({"weight": params["weight"] * m}, x, stride=stride)
    else:
        h = L.apply_conv({"weight": params["dw"] * m}, x, stride=stride, groups=x.shape[1])
        y = L.apply_conv({"weight": params["pw"]}, h)
    y, bn = apply_bn(params["bn"], stats["bn"], y, train=train, sync=sync)
    return torch.relu(y), {"bn": bn}


def apply_block(
    params: dict, stats: dict, x: Tensor, op_alpha: Tensor, width_alpha: Tensor, *, cfg: ChainSpec, block: int,
    train: bool, sync: Any = None,
) -> tuple[Tensor, dict]:
    """Block ``block`` of the supernet on ``x`` (N, in_widths[block], T, 1); see the module docstring."""
    p = torch.softmax(op_alpha, dim=-1)
    q = torch.softmax(width_alpha, dim=-1)
    mixed, new, start = None, {}, 0
    for t in cfg.op_types:
        masks = tap_masks(cfg, t, like=p)  # (n_t, taps)
        p_t = p[start : start + masks.shape[0]]
        start += masks.shape[0]
        total = p_t.sum()
        # m_t = sum (p / P_t) M; a clamped P_t keeps a type whose probability underflows to 0 finite
        taps_w = (p_t / total.clamp_min(torch.finfo(p.dtype).tiny)) @ masks
        y, new[t] = _apply_type(params[t], stats[t], x, taps_w, op_type=t, stride=cfg.strides[block], train=train,
                                sync=sync)  # fmt: skip
        mixed = total * y if mixed is None else mixed + total * y
    width = q @ width_masks(cfg, block, like=q)  # (C_out,): P(channel c is kept)
    out = mixed * width.reshape(1, -1, 1, 1)
    if cfg.candidates[block][-1] == IDENTITY:
        out = out + p[-1] * x
    return out, new


def apply_supernet(
    weights: dict, alphas: dict, stats: dict, x: Tensor, *, cfg: ChainSpec, train: bool, sync: Any = None
) -> tuple[Tensor, dict]:
    """Logits of the chain supernet; a pure function (``stats`` is never modified).

    Args:
        weights, alphas, stats: the pytrees of :func:`init_supernet`.
        x: ``(N, in_channels, T, 1)``.
        cfg: the space.
        train: BatchNorm uses batch statistics and returns updated running statistics.
        sync: reserved for explicit data-parallel BatchNorm (see :func:`apply_bn`).

    Returns:
        ``(logits (N, num_classes), new_stats)``.
    """
    h = L.to_layout(x)
    new: dict = {"blocks": {}}
    if cfg.with_input_batchnorm:
        h, new["input_bn"] = apply_bn(weights["input_bn"], stats["input_bn"], h, train=train, sync=sync)
    for b in range(cfg.num_blocks):
        key = f"b{b}"
        h, new["blocks"][key] = apply_block(
            weights["blocks"][key], stats["blocks"][key], h, alphas[f"{key}_op"], alphas[f"{key}_width"],
            cfg=cfg, block=b, train=train, sync=sync,
        )  # fmt: skip
    return L.apply_linear(weights["head"], L.global_avg_pool(h)), new
