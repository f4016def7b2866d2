"""Primitives: the candidate operations of a mixed op, each one unit (init, apply, cost, fused hook).

:mod:`.registry` holds the record and ``register``; :mod:`.builtin` the seed's kx1 set, wider kx1
ops, a lean kx1 set (``LEAN_KX1``) and the DARTS 2D set; :mod:`.modules` the seed's ``OPS``
``nn.Module`` bridge; :mod:`.lookup` resolves a name.
"""

from fnas.spaces.primitives.builtin import DARTS_2D, KX1_EXTRA, KX1_WIDE, LEAN_KX1, SEED_KX1, shifted_grid
from fnas.spaces.primitives.lookup import get, names
from fnas.spaces.primitives.registry import (
    Kind,
    OpCost,
    Primitive,
    out_grid,
    register,
    registered,
    registered_names,
    unregister,
)

__all__ = [
    "DARTS_2D",
    "KX1_EXTRA",
    "KX1_WIDE",
    "LEAN_KX1",
    "Kind",
    "OpCost",
    "Primitive",
    "SEED_KX1",
    "get",
    "names",
    "out_grid",
    "register",
    "registered",
    "registered_names",
    "shifted_grid",
    "unregister",
]
