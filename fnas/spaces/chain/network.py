"""``ChainNetwork``: the plain ``torch.nn`` network a chain genotype describes (nothing of fnas inside).

Input BN, then per block ``Conv2d((k, 1), dilation (d, 1), 'same' padding) -> BatchNorm2d -> ReLU``
(sep: a depthwise ``(k, 1)`` conv, a pointwise 1x1 conv, BN, ReLU; identity: ``nn.Identity``),
global average pool, linear. :meth:`ChainNetwork.load_supernet` slices a supernet's shared
weights down to the genotype's taps and widths.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fnas.spaces.chain.genotype import ChainGenotype, validate_genotype
from fnas.spaces.chain.spec import ChainSpec, parse_op
from fnas.spaces.chain.supernet import tap_index

__all__ = ["ChainNetwork"]

Tensor = torch.Tensor


def _block(op: str, c_in: int, c_out: int, stride: int) -> nn.Module:
    cand = parse_op(op)
    if cand is None:
        return nn.Identity()
    k, d = cand.kernel, cand.dilation
    conv = dict(kernel_size=(k, 1), stride=(stride, 1), padding=(d * (k // 2), 0), dilation=(d, 1), bias=False)
    if cand.op_type == "conv":
        layers = [nn.Conv2d(c_in, c_out, **conv)]
    else:
        layers = [nn.Conv2d(c_in, c_in, groups=c_in, **conv), nn.Conv2d(c_in, c_out, 1, bias=False)]
    return nn.Sequential(*layers, nn.BatchNorm2d(c_out), nn.ReLU())


class ChainNetwork(nn.Module):
    """The network of ``genotype`` in the space ``cfg``; input ``(N, in_channels, T, 1)``.

    Args:
        cfg: the chain space (sizes, strides, input BN).
        genotype: a member of ``cfg`` (validated).
        gen: generator for torch's default init (a random seed from the global RNG when None).

    Raises:
        ValueError: ``genotype`` is not a member of ``cfg``.
    """

    def __init__(self, cfg: ChainSpec, genotype: ChainGenotype, *, gen: torch.Generator | None = None):
        super().__init__()
        validate_genotype(genotype, cfg)
        self.cfg, self.genotype = cfg, genotype
        self.input_bn = nn.BatchNorm2d(cfg.in_channels) if cfg.with_input_batchnorm else nn.Identity()
        blocks, c_in = [], cfg.in_channels
        for (op, width), stride in zip(genotype.blocks, cfg.strides):
            blocks.append(_block(op, c_in, width, stride))
            c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, cfg.num_classes)
        if gen is None:
            gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
        self._init(gen)

    @torch.no_grad()
    def _init(self, gen: torch.Generator) -> None:
        # torch's default (kaiming-uniform, a=sqrt(5)): U(+-1/sqrt(fan_in)) for weights and biases
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                bound = 1.0 / math.sqrt(m.weight[0].numel())
                for p in (m.weight, m.bias):
                    if p is not None:
                        p.copy_((torch.rand(p.shape, generator=gen, dtype=p.dtype) * 2 - 1) * bound)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)``."""
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels or x.shape[-1] != 1:
            raise ValueError(f"ChainNetwork expects (N, {self.cfg.in_channels}, T, 1) input, got {tuple(x.shape)}")
        h = self.blocks(self.input_bn(x.contiguous(memory_format=torch.channels_last)))
        return self.head(h.mean(dim=(2, 3)))

    @torch.no_grad()
    def load_supernet(self, weights: dict, stats: dict) -> None:
        """Copy the supernet's weights and BN statistics, sliced to this genotype's taps and widths.

        The supernet with one-hot alphas at this genotype then computes the same logits (eval mode).

        Raises:
            ValueError: pytrees of another space (shapes that do not fit).
        """
        cfg = self.cfg
        try:
            if cfg.with_input_batchnorm:
                _load_bn(self.input_bn, weights["input_bn"], stats["input_bn"], cfg.in_channels)
            c_in = cfg.in_channels
            for b, ((op, width), module) in enumerate(zip(self.genotype.blocks, self.blocks)):
                cand = parse_op(op)
                if cand is not None:
                    src, st = weights["blocks"][f"b{b}"][cand.op_type], stats["blocks"][f"b{b}"][cand.op_type]
                    taps = tap_index(cfg.taps, cand.kernel, cand.dilation)
                    if cand.op_type == "conv":
                        module[0].weight.copy_(src["weight"][:width, :c_in, taps])
                    else:
                        module[0].weight.copy_(src["dw"][:c_in, :, taps])
                        module[1].weight.copy_(src["pw"][:width, :c_in])
                    _load_bn(module[-2], src["bn"], st["bn"], width)
                c_in = width
            self.head.weight.copy_(weights["head"]["weight"][:, :c_in])
            self.head.bias.copy_(weights["head"]["bias"])
        except (KeyError, RuntimeError, IndexError) as err:
            raise ValueError(
                f"The supernet pytrees do not fit this network's space ({err}); use the same ChainSpaceConfig"
            ) from err


def _load_bn(bn: nn.BatchNorm2d, params: dict, stats: dict, c: int) -> None:
    bn.weight.copy_(params["weight"][:c])
    bn.bias.copy_(params["bias"][:c])
    bn.running_mean.copy_(stats["running_mean"][:c])
    bn.running_var.copy_(stats["running_var"][:c])
