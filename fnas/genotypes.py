"""The seed's import path ``fnas.genotypes`` (kept): genotypes live in :mod:`fnas.spaces.cell.genotype`."""

from fnas.spaces.cell.genotype import *  # noqa: F401,F403
from fnas.spaces.cell.genotype import __all__  # noqa: F401
