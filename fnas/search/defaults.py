"""The one source of defaults: ``SearchConfig``, ``run_search``, ``search_and_get_model`` and the CLI read them here.

Where a value differs from DARTS (Liu et al. 2019) or from the seed's entry point, the comment says
why. The seed's ``search_and_get_model(args)`` takes every field its ``args`` spell (lr, momentum,
weight decay, arch lr, ...) from ``args``; only what ``args`` leaves out comes from here.
"""

from __future__ import annotations

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
    "penalty_weight": 1.0,
    "beta_weight": 0.0,
    "partial_channels": 1,
    # How the genotype is read off the searched supernet. DIFFERS from DARTS and the seed (the
    # alpha argmax, "alphas"): "perturbation" (Wang et al. 2021) beat the argmax and random search
    # in bench/quality.py; see README. run_search and search_and_get_model use it too (the seed's
    # args have no such field); pass selection="alphas" for DARTS' rule.
    "selection": "perturbation",
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
