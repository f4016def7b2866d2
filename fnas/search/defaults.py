"""The one source of defaults: ``SearchConfig``, ``run_search``, ``search_and_get_model`` and the CLI read them here.

Where a value differs from DARTS (Liu et al. 2019) or from the seed's entry point, the comment says
why. The seed's ``search_and_get_model(args)`` takes every field its ``args`` spell (lr, momentum,
weight decay, arch lr, ...) from ``args``; only what ``args`` leaves out comes from here.
"""

from __future__ import annotations

from typing import Any

DEFAULTS = {
    # Sized so the default job (search + training on the watch data) takes about 10 minutes on
    # 2 CPU cores; see README.md for the measured time.
    "data": "watch",
    "epochs": 10,
    "train_epochs": 40,
    "batch_size": 64,
    "C": 8,
    "layers": 5,
    "nodes": 4,
    "multiplier": 4,
    "stem_multiplier": 3,
    "primitives": None,
    "hypergrad": "first_order",  # DARTS' first-order variant: the cheapest, and as good here
    "unroll_steps": 1,
    # The weights' SGD: DARTS' values (cosine-annealed lr, momentum, L2 weight decay, clipping).
    "lr": 0.025,
    "lr_min": 0.001,
    "momentum": 0.9,
    "weight_decay": 3e-4,
    "grad_clip": 5.0,
    # The alphas' Adam. DIFFERS from DARTS (3e-4): DARTS' value is meant for ~20k steps; a
    # 10-epoch search on the watch data has ~320 steps, so the alphas get a 10x larger Adam step
    # to move as far (the CLI's value, which won bench/quality.py). The seed's entry point passes
    # its own args.arch_learning_rate, which still wins there.
    "arch_lr": 3e-3,
    "arch_betas": (0.5, 0.999),
    "arch_weight_decay": 1e-3,
    "warmup_epochs": 2,
    # fnas search --epochs auto: at least this many search steps (10 epochs of the watch data's
    # 32 steps at batch 64; a small dataset gets more epochs, so its alphas move as far), and
    # --warmup-epochs auto: this fraction of the epochs (2 of 10) trains the weights alone first.
    "min_search_steps": 300,
    "warmup_fraction": 0.2,
    "penalty_weight": 1.0,
    "beta_weight": 0.0,
    "partial_channels": 1,
    # How the genotype is read off the searched supernet. DIFFERS from DARTS and the seed (the
    # alpha argmax, "alphas"): "perturbation" (Wang et al. 2021) beat the argmax and random search
    # in bench/quality.py; see README. run_search and search_and_get_model use it too (the seed's
    # args have no such field); pass selection="alphas" for DARTS' rule.
    "selection": "perturbation",
    # The chain space (fnas search's default space): a chain of conv blocks whose maximum widths
    # are scaled to the budget (fnas.spaces.chain.for_budget). Six blocks (w, 2w, 2w, 2w, 2w, w):
    # the FCN (w, 2w, w; kernels 8, 5, 3) is a member (identity blocks), and depth is searched.
    "space": "chain",
    "chain_widths": (32, 64, 64, 64, 64, 32),
    # fnas search on the chain space with neither a budget nor --widths searches under this budget
    # (a microcontroller-sized network; the widest member of the unsized space has ~150k params)
    "chain_max_params": 20_000,
    # Genotypes are read off the chain's alphas directly (PIT / FBNetV2 read their masks): the
    # op picks and the budget-filling widths won the probes in docs/chain-space.md.
    "chain_selection": "alphas",
    # No resource penalty on chains: the exact knapsack (width policy "fill") meets the budget, and
    # a hinge on the widest genotype would only push every op towards the cheapest.
    "chain_penalty_weight": 0.0,
    "train_lr": 0.05,
    "seed": 0,
    # fnas search --checkpoint-every: steps between mid-epoch checkpoints (0: end of epoch only)
    "checkpoint_every": 50,
    # One thread: these networks are small, and on 2-core VMs two threads are often slower.
    "threads": 1,
    "device": "cpu",
    # export
    "calib_samples": 1000,
    "calib_split": "valid",
}


def selection_for(space: Any) -> str:
    """The default genotype selection of a space: ``"alphas"`` on chains, ``DEFAULTS["selection"]`` on cells."""
    return DEFAULTS["chain_selection"] if hasattr(space, "num_blocks") else DEFAULTS["selection"]


def penalty_weight_for(space: Any) -> float:
    """The default resource-penalty weight of a space (0 on chains, see ``chain_penalty_weight``)."""
    return DEFAULTS["chain_penalty_weight"] if hasattr(space, "num_blocks") else DEFAULTS["penalty_weight"]
