"""cv_jax: CNN image classification in JAX/Flax. ``cv_jax.load(workdir)`` loads a trained run
for prediction (see cv_jax.inference). Importing the package changes nothing in the process:
the commands apply cv_jax's CPU defaults themselves (cv_jax.runtime.cpu_defaults)."""


def __getattr__(name: str):
    if name == "load":
        from cv_jax.inference import load

        return load
    raise AttributeError(f"module 'cv_jax' has no attribute {name!r}")
