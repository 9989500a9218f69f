"""The optimizer: the optax chain and every source of the learning rate."""
