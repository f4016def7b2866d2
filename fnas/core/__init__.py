"""Pure building blocks that know nothing of search spaces: pytrees, layers, optimisers, hypergradients."""
