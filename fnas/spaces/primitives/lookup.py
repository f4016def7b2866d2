"""Which primitive a name means: a user's ``OPS`` module entry wins over a registered built-in."""

from __future__ import annotations

from fnas.spaces.primitives.modules import OPS, adapted, is_builtin
from fnas.spaces.primitives.registry import Primitive, registered, registered_names

__all__ = ["get", "names"]


def names() -> list[str]:
    """All names usable in a search space: registered primitives and seed-style ``OPS`` entries."""
    return sorted(set(registered_names()) | set(OPS))


def get(name: str) -> Primitive:
    """Look a primitive up by name, adapting a seed-style ``OPS`` module factory if needed.

    Raises:
        ValueError: ``name`` is neither registered nor in ``fnas.operations.OPS``.
    """
    primitive = registered(name)
    if primitive is not None and is_builtin(name):
        return primitive
    if name in OPS:  # a user's nn.Module factory (new, or overriding a built-in)
        return adapted(name)
    if primitive is not None:
        return primitive
    raise ValueError(
        f"Unknown primitive {name!r}; expected one of {names()}. Register a new one with "
        "fnas.spaces.primitives.register(...) or add an nn.Module factory to fnas.operations.OPS."
    )
