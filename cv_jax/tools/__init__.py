"""Command-line tools over trained runs: evaluate, predict, visualize, bench, speedrun."""
