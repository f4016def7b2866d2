"""Pytree arithmetic: the one module that imports optree.

Pytrees here are (nested) dicts and NamedTuples of tensors. Every other module goes through these
helpers, so dict-key ordering is decided in one place (optree sorts dict keys).
"""

from __future__ import annotations

from typing import Any, Callable

import optree
import torch

Tree = Any

# A namespace of our own: torch switches its "torch" optree namespace to insertion-ordered dicts
# when some of its modules load, which would make leaf order depend on import order.
_NS = "fnas"


def leaves(tree: Tree) -> list[torch.Tensor]:
    """Return the leaves of ``tree`` in optree's (sorted-key) order."""
    if torch.compiler.is_compiling():
        return _py_leaves(tree)
    return optree.tree_leaves(tree, namespace=_NS)


def map(fn: Callable, tree: Tree, *rest: Tree) -> Tree:  # noqa: A001 - mirrors optree.tree_map
    """Apply ``fn`` leaf-wise over one or more trees of the same structure."""
    if torch.compiler.is_compiling():
        return _py_map(fn, tree, *rest)
    return optree.tree_map(fn, tree, *rest, namespace=_NS)


# Dynamo cannot trace optree's flattening of empty dicts (which our pytrees have: parameter-free
# ops), so compiled code walks the tree in Python. Same order as optree: dict keys sorted,
# sequences and NamedTuples in position order.
def _py_leaves(tree: Tree) -> list:
    if isinstance(tree, dict):
        return [leaf for key in sorted(tree) for leaf in _py_leaves(tree[key])]
    if isinstance(tree, (tuple, list)):
        return [leaf for item in tree for leaf in _py_leaves(item)]
    return [] if tree is None else [tree]


def _py_map(fn: Callable, tree: Tree, *rest: Tree) -> Tree:
    if isinstance(tree, dict):
        return {key: _py_map(fn, tree[key], *(r[key] for r in rest)) for key in tree}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_py_map(fn, *items) for items in zip(tree, *rest)))
    if isinstance(tree, (tuple, list)):
        return type(tree)(_py_map(fn, *items) for items in zip(tree, *rest))
    return None if tree is None else fn(tree, *rest)


def add(a: Tree, b: Tree) -> Tree:
    """``a + b`` leaf-wise."""
    return map(torch.add, a, b)


def sub(a: Tree, b: Tree) -> Tree:
    """``a - b`` leaf-wise."""
    return map(torch.sub, a, b)


def scale(s: float | torch.Tensor, a: Tree) -> Tree:
    """``s * a`` leaf-wise."""
    return map(lambda x: x * s, a)


def axpy(alpha: float | torch.Tensor, x: Tree, y: Tree) -> Tree:
    """``alpha * x + y`` leaf-wise."""
    return map(lambda xi, yi: yi + alpha * xi, x, y)


def zeros_like(a: Tree) -> Tree:
    """A tree of zeros shaped like ``a``."""
    return map(torch.zeros_like, a)


def clone(a: Tree) -> Tree:
    """Deep copy of the tensors of ``a``."""
    return map(torch.clone, a)


def vdot(a: Tree, b: Tree) -> torch.Tensor:
    """Sum over leaves of ``<a_i, b_i>``, a 0-d tensor."""
    terms = [torch.sum(x * y) for x, y in zip(leaves(a), leaves(b))]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def norm(a: Tree) -> torch.Tensor:
    """Global L2 norm over all leaves, a 0-d tensor."""
    ls = leaves(a)
    if not ls:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in ls]))


def size(a: Tree) -> int:
    """Total number of elements over all leaves."""
    return sum(x.numel() for x in leaves(a))


def flatten_dict(tree: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """Nested dict -> flat ``{"a.b.c": tensor}`` (the ``state_dict`` naming of ``torch.nn``)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_dict(value, name + "."))
        else:
            out[name] = value
    return out


def all_equal(a: Tree, b: Tree) -> bool:
    """True if both trees have the same structure and bitwise-equal leaves."""
    if optree.tree_structure(a, namespace=_NS) != optree.tree_structure(b, namespace=_NS):
        return False
    return all(torch.equal(x, y) for x, y in zip(leaves(a), leaves(b)))
