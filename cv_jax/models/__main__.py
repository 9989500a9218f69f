"""List the registered models, or show one model layer by layer.

    python -m cv_jax.models                      # every model: input, parameters, GFLOPs
    python -m cv_jax.models resnet50             # per-layer table at its design input
    python -m cv_jax.models vgg11_bn_cifar --input=64,64,3 --classes=100 --json

GFLOPs: XLA's cost analysis of one eval-mode forward pass of a single image (a multiply-add counts
as 2 FLOPs; papers that quote "FLOPs" often count multiply-adds, i.e. half).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from absl import app, flags, logging

from cv_jax.models import default_input_shape, model_names
from cv_jax.models.summary import ModelSummary, summarize
from cv_jax.runtime import cpu_defaults

_INPUT = flags.DEFINE_list("input", None, "H,W,C of the input (default: the model's design input)")
_CLASSES = flags.DEFINE_integer("classes", None, "number of classes (default: 10 for 32x32 "
                                "models, 1000 for ImageNet ones)")
_JSON = flags.DEFINE_bool("json", False, "print JSON instead of a table")


def _default_classes(input_shape: Sequence[int]) -> int:
    return 10 if input_shape[0] <= 64 else 1000


def _summarize(name: str, per_layer: bool) -> ModelSummary:
    input_shape = tuple(int(v) for v in _INPUT.value) if _INPUT.value else None
    classes = _CLASSES.value or _default_classes(input_shape or default_input_shape(name))
    return summarize(name, input_shape, classes, per_layer=per_layer)


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(v) for v in shape)


def format_listing(summaries: Sequence[ModelSummary]) -> str:
    lines = [f"{'model':<20} {'input':>11} {'classes':>7} {'params':>13} {'GFLOPs':>9}"]
    for s in summaries:
        lines.append(
            f"{s.name:<20} {_shape(s.input_shape):>11} {s.num_classes:>7} {s.params:>13,} "
            f"{s.flops / 1e9:>9.4f}"
        )
    return "\n".join(lines)


def format_layers(s: ModelSummary) -> str:
    width = max([len(row.path) for row in s.layers] + [20])
    lines = [
        f"{s.name}: input {_shape(s.input_shape)}, {s.num_classes} classes",
        f"{'layer':<{width}} {'kind':<10} {'output':>14} {'params':>12} {'MFLOPs':>10}",
    ]
    for row in s.layers:
        lines.append(
            f"{row.path:<{width}} {row.kind:<10} {_shape(row.output_shape[1:]):>14} "
            f"{row.params:>12,} {row.flops / 1e6:>10.2f}"
        )
    lines.append(f"{'other (activations, adds, ...)':<{width}} {'':<10} {'':>14} {'':>12} "
                 f"{s.other_flops / 1e6:>10.2f}")
    lines.append(f"{'total':<{width}} {'':<10} {'':>14} {s.params:>12,} {s.flops / 1e6:>10.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    logging.set_verbosity(logging.WARNING)
    names = argv[1:]
    if len(names) > 1:
        raise app.UsageError("give at most one model name")
    if names:
        summary = _summarize(names[0], per_layer=True)
        print(json.dumps(summary.to_json(), indent=2) if _JSON.value else format_layers(summary))
        return
    summaries = [_summarize(name, per_layer=False) for name in model_names()]
    if _JSON.value:
        print(json.dumps([s.to_json() for s in summaries], indent=2))
    else:
        print(format_listing(summaries))


if __name__ == "__main__":
    cpu_defaults.apply()  # before JAX starts its backend
    try:
        app.run(main)
    except ValueError as error:  # unknown model, bad input shape: one line, no traceback
        sys.exit(f"error: {error}")
