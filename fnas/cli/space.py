"""``fnas search``'s search space from its options and the data: chain or cells, sized to the budget when asked."""

from __future__ import annotations

import argparse
import re

from fnas.app.sizing import size_cell_space, size_chain_space
from fnas.cli.parser import CELL_OPTIONS, CHAIN_OPTIONS
from fnas.data import Dataset
from fnas.search.defaults import DEFAULTS
from fnas.spaces import primitives as P
from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.chain import ChainSpaceConfig

__all__ = ["build_space", "check_space_options", "space_name"]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def space_name(args: argparse.Namespace, ds: Dataset | None, given: set[str]) -> str:
    """The space to search: ``--space``; without it, cells for 2D data (the chain space is kx1 only)."""
    if "space" not in given and ds is not None and ds.input_shape[1] != 1:
        return "cell"
    return args.space


def check_space_options(args: argparse.Namespace, given: set[str], *, data_known: bool = False) -> None:
    """Options of the other space are an error, not silently ignored.

    Before the data is known (``data_known=False``) only an explicit ``--space`` is checked: without
    one, 2D data switches the space to cells.

    Raises:
        ValueError: naming the options and the space they belong to.
    """
    if "space" not in given and not data_known:
        return
    wrong = [o for o in (CELL_OPTIONS if args.space == "chain" else CHAIN_OPTIONS) if o in given]
    if wrong:
        other = "cell" if args.space == "chain" else "chain"
        plural = len(wrong) > 1
        which = "--space" if "space" in given else "the default space" if args.space == DEFAULTS["space"] else (
            "the space for this 2D data")
        raise ValueError(f"{', '.join(map(_flag, wrong))} {'are' if plural else 'is a'} {other}-space "
                         f"option{'s' if plural else ''}, but {which} is {args.space}; pass --space {other} "
                         "or drop them")


def _budgets(args: argparse.Namespace) -> dict[str, int | None]:
    return {"params": args.max_params, "macs": args.max_macs, "sram": args.max_sram_bytes}


def _chain_error(err: ValueError) -> ValueError:
    """A chain space's message in the CLI's words: ``ChainSpaceConfig.kernels`` -> ``--kernels``."""
    msg = re.sub(r"ChainSpaceConfig\.(\w+)", lambda m: _flag(m.group(1)), str(err))
    return ValueError(f"bad chain space option: {msg}")


def _chain(args: argparse.Namespace, ds: Dataset, sized: bool) -> tuple[ChainSpaceConfig, str | None]:
    if ds.input_shape[1] != 1:
        raise ValueError(f"{ds.name} holds 2D inputs {tuple(ds.input_shape)}, but the chain space is kx1 (time "
                         "series) only; pass --space cell")
    fields = {k: tuple(getattr(args, k)) for k in ("widths", "width_fractions", "kernels", "dilations", "op_types",
                                                   "strides") if getattr(args, k) is not None}
    if args.width_policy is not None:
        fields["width_policy"] = args.width_policy
    fields.setdefault("widths", tuple(DEFAULTS["chain_widths"]))
    try:
        base = ChainSpaceConfig(in_channels=ds.in_channels, num_classes=ds.num_classes,
                                input_shape=tuple(ds.input_shape), identity=not args.no_identity, **fields)
        hold = getattr(args, "hold_fcn", False)  # absent from the options of runs made before the flag
        if hold and not sized:
            raise ValueError("--hold-fcn widens a space sized to a budget; with --widths the widths are yours: "
                             "drop --widths (and give a budget) or drop --hold-fcn")
        return size_chain_space(base, _budgets(args), hold_fcn=hold) if sized else (base, None)
    except ValueError as err:
        raise _chain_error(err) from err


def _cell(args: argparse.Namespace, ds: Dataset, sized: bool) -> tuple[SpaceConfig, str | None]:
    if args.primitives:
        primitives = tuple(p.strip() for p in args.primitives.split(",") if p.strip())
    else:
        primitives = P.SEED_KX1 if ds.input_shape[1] == 1 else P.DARTS_2D
    # passed only when given: SpaceConfig gains these fields with the cell-space redesign
    extra = {k: getattr(args, k) for k in ("reductions", "preprocess") if getattr(args, k, None) is not None}
    if "reductions" in extra:
        extra["reductions"] = tuple(extra["reductions"])
    try:
        space = SpaceConfig(
            C=args.C or DEFAULTS["C"], num_classes=ds.num_classes, layers=args.layers or DEFAULTS["layers"],
            in_channels=ds.in_channels, input_shape=ds.input_shape, nodes=args.nodes, multiplier=args.multiplier,
            stem_multiplier=args.stem_multiplier, primitives=primitives, partial_channels=args.partial_channels,
            **extra,
        )
    except TypeError as err:  # a SpaceConfig without the field
        raise ValueError(f"{', '.join(map(_flag, extra))}: not supported by this version of fnas ({err})") from err
    return size_cell_space(space, _budgets(args)) if sized else (space, None)


def build_space(args: argparse.Namespace, ds: Dataset, given: set[str]) -> tuple[SpaceConfig | ChainSpaceConfig,
                                                                                 str | None]:
    """The space to search on ``ds`` and, when a budget sized it, one line saying what was picked.

    A budget (``--max-params``, ``--max-macs``, ``--max-sram``) with no size option (``--widths``
    on chains; ``--C``, ``--layers`` on cells) sizes the space so that the budget binds:
    :mod:`fnas.app.sizing`.

    Raises:
        ValueError: bad space options (named as options), options of the other space, 2D data for the
            chain space, or a budget no size of the space lets bind.
    """
    args.space = space_name(args, ds, given)
    check_space_options(args, given, data_known=True)
    has_budget = any(v is not None for v in _budgets(args).values())
    if args.space == "chain":
        if not has_budget and args.widths is None:
            # unsized and unbudgeted, "fill" would take the widest network of the space (~150k params)
            args.max_params = DEFAULTS["chain_max_params"]
            space, line = _chain(args, ds, sized=True)
            return space, f"{line}; --max-params {args.max_params:,} is the chain search's default budget"
        return _chain(args, ds, sized=has_budget and args.widths is None)
    return _cell(args, ds, sized=has_budget and args.C is None and args.layers is None)
