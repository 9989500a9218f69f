"""One run: state, pure steps, the loop, exact evaluation, checkpoints and metrics."""
