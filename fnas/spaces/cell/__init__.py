"""The DARTS cell space of the seed: ``SpaceConfig``, supernet, mixed op, ``Genotype_CNN``, ``NetworkCnn``."""
