"""The seed's entry point: ``search_and_get_model(args)`` with its ``argparse.Namespace`` fields."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from fnas.search import DEFAULTS, SearchConfig, run_search
from fnas.spaces.cell import genotype as genotypes
from fnas.spaces.cell.config import SpaceConfig

__all__ = ["REQUIRED", "config_from_args", "search_and_get_model", "select_device"]


REQUIRED = (
    "nas_init_channels",
    "num_classes",
    "nas_layers",
    "in_channels",
    "with_input_batchnorm",
    "nas_nodes_per_layer",
    "nas_multiplier",
    "nas_stem_multiplier",
    "lr",
    "momentum",
    "weight_decay",
    "nas_budget",
    "grad_clip",
    "unrolled",
    "train_loader",
    "valid_loader",
    "arch_learning_rate",
    "arch_weight_decay",
)


def select_device(gpu: Any) -> torch.device:
    """``cuda:<gpu>`` when CUDA is available, else the CPU with a warning (``gpu=None`` or -1: CPU)."""
    if gpu is None or (isinstance(gpu, int) and gpu < 0):
        return torch.device("cpu")
    if not isinstance(gpu, int):
        raise ValueError(f"args.gpu must be a CUDA device index (int) or None, got {gpu!r}")
    if not torch.cuda.is_available():
        warnings.warn(f"args.gpu={gpu} but CUDA is not available; searching on the CPU", stacklevel=3)
        return torch.device("cpu")
    if gpu >= torch.cuda.device_count():
        raise ValueError(f"args.gpu={gpu} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device(f"cuda:{gpu}")


def config_from_args(args: Any, input_shape: tuple[int, int]) -> SearchConfig:
    """Translate the seed's Namespace into a :class:`SearchConfig`.

    Raises:
        ValueError: missing fields (all listed), ``mode`` other than ``'cnn'``.
    """
    missing = [name for name in REQUIRED if not hasattr(args, name)]
    if missing:
        raise ValueError(f"args is missing required fields {missing}; see the argument table in README.md")
    mode = getattr(args, "mode", "cnn")
    if mode != "cnn":
        raise ValueError(f"args.mode must be 'cnn' (the only search mode), got {mode!r}")
    space = SpaceConfig(
        C=args.nas_init_channels,
        num_classes=args.num_classes,
        layers=args.nas_layers,
        in_channels=args.in_channels,
        input_shape=input_shape,
        with_input_batchnorm=bool(args.with_input_batchnorm),
        nodes=args.nas_nodes_per_layer,
        multiplier=args.nas_multiplier,
        stem_multiplier=args.nas_stem_multiplier,
        primitives=tuple(getattr(args, "primitives", None) or genotypes.PRIMITIVES_CNN),
    )
    extra = {}
    for field, arg in (
        ("penalty_mode", "nas_optimization_mode"),
        ("penalty_weight", "nas_penalty_weight"),
        ("max_params", "nas_max_params"),
        ("max_macs", "nas_max_macs"),
        ("max_sram_bytes", "nas_max_sram_bytes"),
    ):
        if getattr(args, arg, None) is not None:
            extra[field] = getattr(args, arg)
    return SearchConfig(
        space=space,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        arch_lr=args.arch_learning_rate,
        arch_weight_decay=args.arch_weight_decay,
        hypergrad="exact" if args.unrolled else "first_order",
        **extra,
    )


def search_and_get_model(args: Any) -> torch.nn.Module:
    """Run the architecture search described by ``args`` and return the found network.

    ``args.nas_budget`` is the number of search epochs; ``unrolled=True`` selects the exact
    second-order architecture gradient. The input shape is read from the first training batch,
    which must be ``(N, in_channels, T, 1)`` or ``(N, in_channels, H, W)``. Optional fields:
    ``seed`` (default 0), ``primitives`` (default ``fnas.spaces.cell.genotype.PRIMITIVES_CNN``),
    ``progress`` (default True), ``selection`` (default ``DEFAULTS["selection"]``,
    ``"perturbation"``, as ``fnas search``; ``"alphas"`` is the seed's DARTS argmax, see
    :func:`fnas.search.loop.run_search`). Every other setting the seed's ``args`` spell (lr,
    momentum, weight decay, arch lr, ...) comes from ``args``; the rest from
    :data:`fnas.search.defaults.DEFAULTS`.

    Returns:
        A freshly initialised :class:`fnas.spaces.cell.network.NetworkCnn` of the derived genotype (train it
        from scratch, as DARTS does); its ``genotype`` attribute holds the genotype and
        ``search_result`` the full :class:`fnas.search.loop.SearchResult`.

    Raises:
        ValueError: missing or invalid arguments, or data that does not fit them.
    """
    if not hasattr(args, "train_loader"):
        raise ValueError("args.train_loader is required (a DataLoader of (x, y) batches)")
    first = next(iter(args.train_loader))
    x = first[0]
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"training batches must hold x of shape (N, C, T, 1) or (N, C, H, W), got {shape}; "
            "lift (N, C, T) series with x.unsqueeze(-1)"
        )
    cfg = config_from_args(args, tuple(x.shape[2:]))
    device = select_device(getattr(args, "gpu", None))
    if not isinstance(args.nas_budget, int) or args.nas_budget < 1:
        raise ValueError(f"args.nas_budget (search epochs) must be a positive int, got {args.nas_budget!r}")
    gen = torch.Generator().manual_seed(int(getattr(args, "seed", 0)))
    result = run_search(
        cfg,
        args.train_loader,
        args.valid_loader,
        epochs=args.nas_budget,
        gen=gen,
        device=device,
        progress=bool(getattr(args, "progress", True)),
        selection=getattr(args, "selection", DEFAULTS["selection"]),
    )
    model = result.model.to(device)
    model.search_result = result
    return model
