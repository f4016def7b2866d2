"""Search spaces: the primitive registry, the DARTS cell space (``cell``) and the chain space (``chain``)."""
