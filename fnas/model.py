"""The seed's import path ``fnas.model`` (kept): ``NetworkCnn`` lives in :mod:`fnas.spaces.cell.network`."""

from fnas.spaces.cell.network import NetworkCnn

__all__ = ["NetworkCnn"]
