"""The genotype selection's cost against the search it follows: exhaustive vs screened perturbation, side by side.

Runs ``fnas search ARGS --selection alphas --train-epochs 0`` in this process (its wall time is the
search), then reads the genotype off the searched supernet twice, one thread, alternating order
each round: every (edge, op) measured (the reference) and only the candidates that can be a pick
(``fnas.search.selection.Perturbation.settle``). Prints the CPU times (one thread, so CPU time is
the work, whatever else loads the machine), the ratio to the search and whether the genotypes agree.

    python bench/selection_cost.py --rounds 2 -- --data runs/my.npz --space cell --epochs 10 \\
        --max-params 20000 --mode Memory
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from fnas.app.runs import open_run
from fnas.cli import main as cli_main
from fnas.data import load_dataset, make_loader
from fnas.search import SearchConfig, load_checkpoint
from fnas.search.loop import select_genotype
from fnas.search.state import state_from_dict


def selection_cost(cli_args: list[str], rounds: int = 1, samples: int = 256) -> dict:
    """Search with the CLI, then time both selections on the searched state (see the module docstring)."""
    torch.set_num_threads(1)
    out = Path(tempfile.mkdtemp(prefix="selcost")) / "run"
    t0 = time.process_time()
    code = cli_main(["search", *cli_args, "--selection", "alphas", "--train-epochs", "0", "--quiet", "--threads", "1",
                     "--out", str(out)])
    t_search = time.process_time() - t0
    if code != 0:
        raise SystemExit(f"fnas search failed ({code})")
    run = open_run(out)
    fields = {k: v for k, v in run.config["search"].items() if k not in ("space", "total_steps")}
    fields["arch_betas"] = tuple(fields["arch_betas"])
    cfg = SearchConfig(space=run.space, **fields)
    state = state_from_dict(load_checkpoint(out / "checkpoint.pt")["state"])
    ds = load_dataset(run.data)
    valid = make_loader(ds.valid, run.config["cli"]["batch_size"], shuffle=False)
    times: dict = {True: [], False: []}
    picks: dict = {}
    for r in range(rounds):
        for exhaustive in ((True, False) if r % 2 == 0 else (False, True)):
            t = time.process_time()
            picks[exhaustive] = select_genotype(state, cfg, valid, "perturbation", samples, "cpu", screened=not exhaustive)
            times[exhaustive].append(time.process_time() - t)
    return {
        "search_s": round(t_search, 1),
        "exhaustive_s": round(min(times[True]), 2),
        "screened_s": round(min(times[False]), 2),
        "exhaustive_over_search": round(min(times[True]) / t_search, 3),
        "screened_over_search": round(min(times[False]) / t_search, 3),
        "same_genotype": picks[True] == picks[False],
        "budget_missed": bool(picks[True][1]),
        "genotype": str(picks[False][0]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--samples", type=int, default=256, help="selection_samples")
    parser.add_argument("cli", nargs=argparse.REMAINDER, help="-- then the fnas search options")
    args = parser.parse_args(argv)
    cli = args.cli[1:] if args.cli[:1] == ["--"] else args.cli
    print(json.dumps(selection_cost(cli, args.rounds, args.samples), indent=1))


if __name__ == "__main__":
    sys.exit(main())
