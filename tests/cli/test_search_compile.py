"""``fnas search --compile / --no-compile`` and the automatic choice: one line says why on or off, a compiled
step marks the compile cache, and a later run of the same step finds it warm."""

from __future__ import annotations

import re

import pytest
import torch
from test_cli import TINY, fnas, npz  # noqa: F401 - npz: the user's data fixture

import fnas.search.compile as compile_module
import fnas.search.loop as loop_module
from fnas.cli.parser import build_parser, given_options

pytestmark = pytest.mark.usefixtures("single_thread")

CHAIN = ["--widths", "8,8", "--kernels", "3", "--dilations", "1", "--batch-size", "8", "--epochs", "1", "--quiet"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The user's compile cache, in a temporary folder."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "fnas" / "torch-compile"


def test_compile_flags_parse_to_on_off_and_auto():
    parse = lambda *a: build_parser().parse_args(["search", "--data", "x.npz", *a]).compile  # noqa: E731
    assert (parse(), parse("--compile"), parse("--no-compile")) == (None, True, False)
    assert "compile" in given_options(["search", "--data", "x.npz", "--no-compile"])


@pytest.mark.parametrize("space", ["cell", "chain"])
def test_search_says_why_compiling_is_off(npz, tmp_path, cache, space):
    options = TINY if space == "cell" else CHAIN
    code, out, err = fnas("search", "--data", npz, "--out", tmp_path / "auto", "--train-epochs", "0", *options)
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("compile   "))
    speedup = {"cell": "1.4", "chain": "1.1"}[space]  # the measured figures of each space kind
    assert re.match(rf"compile   off: 6 steps x [0-9.]+ s save ~[0-9]+ s at ~{speedup}x, less than the ~[0-9]+ (s|min) "
                    "first compile", line)
    code, out, err = fnas("search", "--data", npz, "--out", tmp_path / "off", "--train-epochs", "0", "--no-compile",
                          *options)
    assert code == 0, err
    assert "compile   off (--no-compile)" in out
    assert not cache.exists()


def test_auto_compile_turns_on_marks_the_cache_and_a_second_run_starts_warm(npz, tmp_path, cache, monkeypatch):
    backends = []
    original = loop_module.compile_search_step

    def spy(cfg, *, backend="inductor", **kw):
        backends.append(backend)
        return original(cfg, backend="aot_eager", **kw)  # inductor takes minutes

    monkeypatch.setattr(loop_module, "compile_search_step", spy)
    free = {kind: {"first_order": 1e-9, "exact": 1e-9} for kind in ("cell", "chain")}  # a free compile
    monkeypatch.setattr(compile_module, "SECONDS_PER_OP", free)
    torch._dynamo.reset()
    code, out, err = fnas("search", "--data", npz, "--out", tmp_path / "one", "--train-epochs", "0", *TINY)
    assert code == 0, err
    assert "compile   on: 6 steps x " in out and "first compile" in out
    assert backends == ["inductor"]
    markers = list((cache / "fnas-steps").iterdir())
    assert len(markers) == 1
    torch._dynamo.reset()
    code, out, err = fnas("search", "--data", npz, "--out", tmp_path / "two", "--train-epochs", "0", *TINY)
    assert code == 0, err
    assert "compile   on: " in out and "warm start (compiled before, in the cache)" in out
    assert list((cache / "fnas-steps").iterdir()) == markers
