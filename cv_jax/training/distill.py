"""Knowledge distillation: a trained run as the teacher of this one.

The student's loss per example is ``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))
+ (1 - alpha) * CE(targets, student)`` (``config.distill``). The teacher's logits are computed
inside the same jitted step, on the same augmented (and mixed) images the student sees,
resized to the teacher's input size and normalised with the teacher's statistics, so teacher
and student may differ in architecture and input size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections as mlc

from cv_jax.training import runs, sharding


class DistillError(ValueError):
    """The teacher cannot teach this run."""


@flax.struct.dataclass
class Teacher:
    """A frozen model in inference mode: its variables travel through jit as arguments."""

    variables: Any
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    mean: tuple[float, ...] = flax.struct.field(pytree_node=False)
    std: tuple[float, ...] = flax.struct.field(pytree_node=False)
    image_size: tuple[int, int] = flax.struct.field(pytree_node=False)
    alpha: float = flax.struct.field(pytree_node=False, default=0.5)
    temperature: float = flax.struct.field(pytree_node=False, default=4.0)

    def logits(self, x: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
        """Teacher logits for a batch ``x`` normalised with the student's ``mean``/``std``."""
        pixels = x.astype(jnp.float32) * jnp.asarray(std) + jnp.asarray(mean)  # in [0, 1]
        if pixels.shape[1:3] != self.image_size:
            shape = (pixels.shape[0], *self.image_size, pixels.shape[-1])
            pixels = jax.image.resize(pixels, shape, "bilinear", antialias=True)
        x_teacher = (pixels - jnp.asarray(self.mean)) / jnp.asarray(self.std)
        logits = self.apply_fn(self.variables, x_teacher, train=False)
        return jax.lax.stop_gradient(logits.astype(jnp.float32))


def load_teacher(config: mlc.ConfigDict, class_names: tuple[str, ...],
                 mesh: jax.sharding.Mesh) -> Teacher | None:
    """The teacher named by ``config.distill.teacher`` (a run's workdir), replicated over the
    mesh, or None when distillation is off."""
    cfg = config.distill
    if not cfg.teacher:
        return None
    run = runs.load_run(cfg.teacher, cfg.checkpoint, num_devices=mesh.devices.size)
    if run.class_names != tuple(class_names):
        raise DistillError(
            f"config.distill.teacher={cfg.teacher!r} was trained on classes "
            f"{list(run.class_names)}, this run on {list(class_names)}; a teacher must predict "
            "the student's classes (in the same order)")
    state = run.eval_state(cfg.weights)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return Teacher(
        variables=jax.device_put(variables, sharding.replicated(mesh)),
        apply_fn=run.model.apply,
        mean=tuple(run.config.dataset.mean),
        std=tuple(run.config.dataset.std),
        image_size=tuple(run.image_shape[:2]),
        alpha=cfg.alpha,
        temperature=cfg.temperature,
    )
