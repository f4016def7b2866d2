"""Cold compile time of the whole search step against the number of cells (bench/COMPILE_TIME.md).

``python bench/compile_scaling.py BACKEND LAYERS NODES HYPERGRAD [inductor_option=value ...]``: a C=4 cell
network with one reduction cell (position 1), batch 32, compiled in a new, empty inductor cache; prints one
JSON line (compile seconds, eager and compiled step, graph ops) and dynamo's phase times.
"""
import ast, json, os, sys, tempfile, time
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="fnas-ind-"))
import torch
import torch._dynamo, torch._inductor.config as IC
from torch._dynamo.testing import CompileCounterWithBackend
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from fnas.search import init_search, search_step, compile_search_step
from fnas.search.config import SearchConfig
from fnas.spaces.cell.config import SpaceConfig
torch.set_num_threads(1)
backend, layers, nodes, hg = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
patch = {}
for kv in sys.argv[5:]:
    k, v = kv.split("="); patch[k] = ast.literal_eval(v)
space = SpaceConfig(C=4, layers=layers, nodes=nodes, multiplier=min(nodes, 2) if nodes < 4 else 4, reductions=(1,))
cfg = SearchConfig(space=space, hypergrad=hg)
st = init_search(cfg, torch.Generator().manual_seed(0))
g = torch.Generator().manual_seed(1)
def batch():
    return (torch.randn(32, space.in_channels, *space.input_shape, generator=g), torch.randint(0, space.num_classes, (32,), generator=g))
tr, va = batch(), batch()
t = time.perf_counter(); search_step(st, tr, va, cfg=cfg); eager1 = time.perf_counter() - t
t = time.perf_counter(); search_step(st, tr, va, cfg=cfg); eager = time.perf_counter() - t
cnt = CompileCounterWithBackend(backend)
with IC.patch(patch):
    step = compile_search_step(cfg, backend=cnt)
    t = time.perf_counter(); s1, _ = step(st, tr, va); comp = time.perf_counter() - t
t = time.perf_counter(); step(s1, tr, va); c2 = time.perf_counter() - t
t = time.perf_counter(); step(s1, tr, va); c3 = time.perf_counter() - t
print(json.dumps({"backend": backend, "layers": layers, "nodes": nodes, "hg": hg, "patch": patch, "compile_s": round(comp, 1),
                  "eager_s": round(eager, 4), "compiled_s": round(min(c2, c3), 4), "frames": cnt.frame_count, "ops": cnt.op_count}))
names, vals = torch._dynamo.utils.compile_times(repr="csv")
total = {n: sum(float(x) for x in str(v).split(",") if x.strip()) for n, v in zip(names, vals)}
print("  ", "; ".join(f"{n}={v:.1f}" for n, v in sorted(total.items(), key=lambda nv: -nv[1])[:12]))
