"""Command-line tools: trained runs (evaluate, predict, visualize), a config's learning rate
and augmentations (schedules, augmentations), and speed (bench, speedrun)."""
