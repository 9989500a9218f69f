"""Workflows of several runs: cross-validation, ensembles, pseudo-labelling, vectorised members and
the LR range test."""
