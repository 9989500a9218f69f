"""CPU kernels and layer formulations that XLA:CPU runs faster, chosen explicitly."""
