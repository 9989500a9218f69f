"""The optax chain built from ``config.optimizer``.

Order of the chain (each part optional):
  clip_by_global_norm -> [L2-style weight decay] -> optimizer(lr schedule)
  -> per-group LR multipliers, with frozen parameters routed to ``set_to_zero``.

Weight decay is masked by a regex over parameter paths (default: conv/dense kernels only,
never biases or BatchNorm scales/offsets). For ``adamw`` it is decoupled (Loshchilov &
Hutter, 2019); for the other optimizers it is added to the gradient before the update,
which is what PyTorch's ``weight_decay`` argument and an L2 penalty of ``wd/2 * |w|^2`` do.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import ml_collections as mlc
import optax

from cv_jax.configlib import ConfigError, parse_multipliers

PyTree = Any


def param_path(path: tuple) -> str:
    """'stage1/conv/kernel' for a tree path (dict keys joined by '/')."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def path_mask(pattern: str) -> Callable[[PyTree], PyTree]:
    """A mask function: True for the leaves whose path matches ``pattern`` (re.search)."""
    regex = re.compile(pattern)
    return lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: bool(regex.search(param_path(path))), params
    )


def _base_optimizer(cfg: mlc.ConfigDict,
                    lr: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    """The update rule itself, by name."""
    m = cfg.momentum or None
    builders: dict[str, Callable[[], optax.GradientTransformation]] = {
        "sgd": lambda: optax.sgd(lr, momentum=m, nesterov=cfg.nesterov),
        "adam": lambda: optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
        "adamw": lambda: optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                     weight_decay=cfg.weight_decay,
                                     mask=path_mask(cfg.decay_mask)),
        "rmsprop": lambda: optax.rmsprop(lr, decay=cfg.rho, eps=cfg.eps, momentum=m,
                                         nesterov=cfg.nesterov),
        "adagrad": lambda: optax.adagrad(lr, eps=cfg.eps),
        "adadelta": lambda: optax.adadelta(lr, rho=cfg.rho, eps=cfg.eps),
    }
    if cfg.name not in builders:
        raise ConfigError(
            f"config.optimizer.name={cfg.name!r} is unknown; choose one of {sorted(builders)}"
        )
    if cfg.nesterov and not m and cfg.name in ("sgd", "rmsprop"):
        raise ConfigError("config.optimizer.nesterov=True needs config.optimizer.momentum > 0")
    return builders[cfg.name]()


def scale_by_path(multipliers: dict[str, float]) -> optax.GradientTransformation:
    """Multiplies each update by the factor of the first regex matching its path (else 1)."""
    compiled = [(re.compile(p), f) for p, f in multipliers.items()]

    def factor(path: tuple) -> float:
        name = param_path(path)
        return next((f for regex, f in compiled if regex.search(name)), 1.0)

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(lambda p, u: u * factor(p), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def create_optimizer(config: mlc.ConfigDict,
                     learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    """The full optax chain of ``config.optimizer`` using the given learning rate/schedule."""
    cfg = config.optimizer
    parts = []
    if cfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    if cfg.weight_decay > 0 and cfg.name != "adamw":
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=path_mask(cfg.decay_mask)))
    parts.append(_base_optimizer(cfg, learning_rate))
    multipliers = parse_multipliers(cfg.lr_multipliers)
    if multipliers:
        parts.append(scale_by_path(multipliers))
    tx = optax.chain(*parts)
    if not cfg.freeze:
        return tx
    frozen = path_mask(cfg.freeze)

    def labels(params: PyTree) -> PyTree:
        return jax.tree.map(lambda f: "frozen" if f else "trainable", frozen(params))

    return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)
