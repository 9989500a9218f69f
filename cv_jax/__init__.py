"""cv_jax: CNN image classification in JAX/Flax. ``cv_jax.load(workdir)`` loads a trained run
for prediction (see cv_jax.inference); the package import itself stays light, and adds
cv_jax's measured XLA:CPU flags (cv_jax.runtime.xla_flags) and glibc malloc settings
(cv_jax.runtime.host_malloc) before JAX's backend starts."""

from cv_jax.runtime import host_malloc, xla_flags

xla_flags.apply_defaults()
host_malloc.apply_defaults()


def __getattr__(name: str):
    if name == "load":
        from cv_jax.inference import load

        return load
    raise AttributeError(f"module 'cv_jax' has no attribute {name!r}")
