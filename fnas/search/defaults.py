"""The one source of defaults: ``SearchConfig``, ``run_search``, ``search_and_get_model`` and the CLI read them here."""

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
    "hypergrad": "first_order",
    "unroll_steps": 1,
    "lr": 0.025,
    "lr_min": 0.001,
    # DARTS uses 3e-4 over ~20k steps; a 10-epoch search on the watch data has ~320 steps, so
    # the alphas get a 10x larger Adam step to move as far.
    "arch_lr": 3e-3,
    "arch_weight_decay": 1e-3,
    "weight_decay": 3e-4,
    "momentum": 0.9,
    "grad_clip": 5.0,
    "warmup_epochs": 2,
    "penalty_weight": 1.0,
    "beta_weight": 0.0,
    "partial_channels": 1,
    # How the genotype is read off the searched supernet: "perturbation" (Wang et al. 2021) beat
    # DARTS' alpha argmax ("alphas") and random search in bench/quality.py; see README.
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
