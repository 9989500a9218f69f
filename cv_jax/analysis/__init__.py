"""Comparing runs: sweeps, reports, figures and FLOPs."""
