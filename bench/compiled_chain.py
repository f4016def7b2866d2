"""The chain space's whole search step under ``torch.compile`` (inductor) vs eager, one thread.

    python bench/compiled_chain.py [--hypergrad first_order exact] [--max-params 20000] [--rounds 5]

The network is the one ``fnas search`` builds by default: the default six-block chain space sized
(``fnas.app.sizing.size_chain_space``) for a 20k-parameter budget on the watch data's shapes
(6 x 128 x 1, 7 classes), batch 64. For each
method, in a new, empty inductor cache (what a user's first run pays):

- the aten ops of one eager step and the cold compile that ``fnas search``'s automatic choice
  predicts from them (``fnas.search.compile.estimate_compile``);
- the measured cold compile (the first compiled call) and dynamo's frame count;
- the eager and compiled step, alternated for ``--rounds`` rounds (minimum and median);
- the warm start: the first compiled call in a second process sharing the cache directory (what a
  second run or ``--resume`` pays).

Prints one JSON line per method (and the warm start's child prints its own); the numbers go to
``bench/COMPILE_TIME.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch._dynamo.testing import CompileCounterWithBackend

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fnas.search import compile_search_step, init_search, search_step  # noqa: E402
from fnas.search.compile import SECONDS_PER_OP, estimate_compile  # noqa: E402
from fnas.search.config import SearchConfig  # noqa: E402
from fnas.spaces.chain import ChainSpaceConfig  # noqa: E402
from fnas.app.sizing import size_chain_space  # noqa: E402
from fnas.search.defaults import DEFAULTS  # noqa: E402

BATCH = 64


def setup(hypergrad: str, max_params: int):
    base = ChainSpaceConfig(in_channels=6, num_classes=7, input_shape=(128, 1), widths=DEFAULTS["chain_widths"])
    space, line = size_chain_space(base, {"params": max_params})  # as fnas search sizes it
    cfg = SearchConfig(space=space, hypergrad=hypergrad, max_params=max_params)
    g = torch.Generator().manual_seed(1)

    def batch():
        return (torch.randn(BATCH, 6, 128, 1, generator=g), torch.randint(0, 7, (BATCH,), generator=g))

    return cfg, line, batch(), batch()


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def warm_child(hypergrad: str, max_params: int) -> None:
    cfg, _, tr, va = setup(hypergrad, max_params)
    state = init_search(cfg, torch.Generator().manual_seed(0))
    step = compile_search_step(cfg)
    seconds, _ = timed(lambda: step(state, tr, va))
    hits = int(torch._dynamo.utils.counters["inductor"]["fxgraph_cache_hit"])
    print(json.dumps({"hypergrad": hypergrad, "warm_start_s": round(seconds, 1), "fxgraph_cache_hits": hits}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hypergrad", nargs="+", default=["first_order", "exact"])
    ap.add_argument("--max-params", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warm-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.warm_child:
        warm_child(args.hypergrad[0], args.max_params)
        return
    for hg in args.hypergrad:
        cache = tempfile.mkdtemp(prefix="fnas-chain-ind-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        torch._dynamo.reset()
        cfg, line, tr, va = setup(hg, args.max_params)
        est = estimate_compile(cfg, tr, va)
        ops = round(est.cold_compile_s / SECONDS_PER_OP["chain"][hg])  # the op count behind the estimate
        state = init_search(cfg, torch.Generator().manual_seed(0))
        cnt = CompileCounterWithBackend("inductor")
        step = compile_search_step(cfg, backend=cnt)
        cold, (cs, _) = timed(lambda: step(state, tr, va))
        es = state
        eager_t, comp_t = [], []
        for _ in range(args.rounds):
            t, (es, _) = timed(lambda: search_step(es, tr, va, cfg=cfg))
            eager_t.append(t)
            t, (cs, _) = timed(lambda: step(cs, tr, va))
            comp_t.append(t)
        row = {
            "hypergrad": hg, "space": line, "aten_ops": ops,
            "predicted_cold_s": round(est.cold_compile_s, 1), "cold_compile_s": round(cold, 1),
            "seconds_per_op": round(cold / ops, 4), "frames": cnt.frame_count,
            "eager_min_s": round(min(eager_t), 4), "eager_median_s": round(statistics.median(eager_t), 4),
            "compiled_min_s": round(min(comp_t), 4), "compiled_median_s": round(statistics.median(comp_t), 4),
            "speedup_median": round(statistics.median(eager_t) / statistics.median(comp_t), 2),
        }
        print(json.dumps(row), flush=True)
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        subprocess.run([sys.executable, __file__, "--warm-child", "--hypergrad", hg, "--max-params", str(args.max_params)],
                       env=env, check=True)


if __name__ == "__main__":
    main()
