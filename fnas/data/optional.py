"""Optional third-party packages the loaders read: found without importing them, and the error when one is missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path


class MissingDependencyError(ImportError, ValueError):
    """An optional package needed by a loader is not installed.

    It is both an ``ImportError`` (what it is) and a ``ValueError`` (what callers of this library
    catch at the boundary).
    """



def package_dir(module: str) -> Path | None:
    """Directory of an installed package, found without importing it (imports can fail)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec.origin:
        return Path(spec.origin).parent
    return None
