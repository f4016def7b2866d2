"""Applications around a search: run folders, training the found network, export, plots, the seed API."""
