"""Tests for fnas.tree: leaf-wise arithmetic, reductions, flattening, and dict-order independence."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

from fnas.core import tree


class Pair(NamedTuple):
    first: dict
    second: torch.Tensor


def _tree(dtype=torch.float64) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "b": torch.randn(3, generator=g, dtype=dtype),
        "a": {"y": torch.randn(2, 2, generator=g, dtype=dtype), "x": torch.randn((), generator=g, dtype=dtype)},
    }


def _other(dtype=torch.float64) -> dict:
    return tree.map(lambda t: torch.full_like(t, 0.5) + t.abs(), _tree(dtype))


def test_add_sub_scale_leafwise():
    a, b = _tree(), _other()
    out = tree.add(a, b)
    torch.testing.assert_close(out["a"]["y"], a["a"]["y"] + b["a"]["y"], rtol=0, atol=0)
    torch.testing.assert_close(out["b"], a["b"] + b["b"], rtol=0, atol=0)
    back = tree.sub(out, b)
    torch.testing.assert_close(back["a"]["x"], a["a"]["x"], rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(tree.scale(3.0, a)["b"], 3.0 * a["b"], rtol=0, atol=0)


def test_axpy_is_alpha_x_plus_y_and_pure():
    x, y = _tree(), _other()
    x0, y0 = tree.clone(x), tree.clone(y)
    out = tree.axpy(-0.25, x, y)
    for key in ("b",):
        torch.testing.assert_close(out[key], y[key] - 0.25 * x[key], rtol=0, atol=0)
    torch.testing.assert_close(out["a"]["y"], y["a"]["y"] - 0.25 * x["a"]["y"], rtol=0, atol=0)
    assert tree.all_equal(x, x0) and tree.all_equal(y, y0), "axpy mutated an input"


def test_axpy_accepts_tensor_alpha():
    x, y = _tree(), _other()
    out = tree.axpy(torch.tensor(2.0, dtype=torch.float64), x, y)
    torch.testing.assert_close(out["b"], y["b"] + 2.0 * x["b"], rtol=0, atol=0)


def test_vdot_and_norm_match_flat_vectors():
    a, b = _tree(), _other()
    flat_a = torch.cat([a["a"]["x"].reshape(1), a["a"]["y"].reshape(-1), a["b"]])
    flat_b = torch.cat([b["a"]["x"].reshape(1), b["a"]["y"].reshape(-1), b["b"]])
    v = tree.vdot(a, b)
    assert v.ndim == 0
    torch.testing.assert_close(v, flat_a @ flat_b, rtol=1e-13, atol=1e-13)
    n = tree.norm(a)
    assert n.ndim == 0
    torch.testing.assert_close(n, torch.linalg.vector_norm(flat_a), rtol=1e-13, atol=1e-13)


def test_empty_tree_reductions_are_zero():
    assert float(tree.vdot({}, {})) == 0.0
    assert float(tree.norm({})) == 0.0
    assert tree.size({}) == 0


def test_size_zeros_like_clone():
    a = _tree()
    assert tree.size(a) == 3 + 4 + 1
    z = tree.zeros_like(a)
    assert all(float(t.abs().sum()) == 0.0 for t in tree.leaves(z))
    assert [t.shape for t in tree.leaves(z)] == [t.shape for t in tree.leaves(a)]
    c = tree.clone(a)
    assert tree.all_equal(a, c)
    c["b"].add_(1.0)
    assert not tree.all_equal(a, c), "clone shares storage with its source"


def test_flatten_dict_uses_dotted_state_dict_names():
    t = {"stem": {"conv": {"weight": torch.zeros(1)}, "bn": {"bias": torch.ones(1)}}, "head": torch.ones(2)}
    flat = tree.flatten_dict(t)
    assert set(flat) == {"stem.conv.weight", "stem.bn.bias", "head"}
    assert flat["stem.bn.bias"] is t["stem"]["bn"]["bias"]


def test_leaf_order_does_not_depend_on_insertion_order():
    a = _tree()
    reordered = {"a": {"x": a["a"]["x"], "y": a["a"]["y"]}, "b": a["b"]}
    assert list(a) != list(reordered)  # the two dicts really were built in different orders
    assert all(x is y for x, y in zip(tree.leaves(a), tree.leaves(reordered)))
    assert tree.all_equal(a, reordered)
    # Arithmetic pairs leaves by key, not by position of insertion.
    b = _other()
    b_reordered = {"b": b["b"], "a": {"y": b["a"]["y"], "x": b["a"]["x"]}}
    torch.testing.assert_close(tree.vdot(a, b), tree.vdot(reordered, b_reordered), rtol=0, atol=0)
    out = tree.add(reordered, b)
    torch.testing.assert_close(out["a"]["x"], a["a"]["x"] + b["a"]["x"], rtol=0, atol=0)


def test_namedtuple_structure_is_preserved():
    p = Pair({"w": torch.ones(2)}, torch.zeros(3))
    out = tree.scale(2.0, p)
    assert isinstance(out, Pair)
    torch.testing.assert_close(out.first["w"], torch.full((2,), 2.0), rtol=0, atol=0)


@pytest.mark.parametrize(
    "other",
    [
        pytest.param({"b": torch.zeros(3), "a": {"x": torch.zeros(())}}, id="missing-key"),
        pytest.param({"b": torch.zeros(3), "a": {"x": torch.zeros(()), "y": torch.zeros(2, 2), "z": torch.zeros(1)}},
                     id="extra-key"),
    ],
)
def test_all_equal_is_false_for_different_structures(other):
    a = tree.zeros_like(_tree(torch.float32))
    assert not tree.all_equal(a, other)


def test_all_equal_detects_one_changed_element():
    a = _tree()
    b = tree.clone(a)
    b["a"]["y"][1, 1] = torch.nextafter(b["a"]["y"][1, 1], torch.tensor(float("inf"), dtype=torch.float64))
    assert not tree.all_equal(a, b)
