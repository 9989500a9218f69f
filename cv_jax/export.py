"""Export a trained run's inference function to a file that runs without cv_jax:

    python -m cv_jax.export --workdir=runs/r20 --format=stablehlo|onnx --out=PATH
        [--checkpoint=best|latest] [--weights=raw|ema] [--batch_size=N|dynamic]
        [--platforms=cpu,cuda] [--compute_dtype=float32|bfloat16|float16]

The exported function is what ``cv_jax.load(workdir).predict`` computes: uint8 images
[B, H, W, C] at the run's image size in, float32 class probabilities [B, num_classes] out, with
the run's normalisation and test-time augmentation (``eval.tta_flip``, ``eval.tta_translate``)
and the chosen weights baked in.

- ``stablehlo``: a serialized ``jax.export`` artifact, lowered for ``--platforms`` (default cpu
  and cuda: the same file runs on a CPU and an NVIDIA GPU). Plain JAX runs it:
  ``jax.export.deserialize(open(PATH, 'rb').read()).call(images)``.
- ``onnx``: the same function converted by jax2onnx (``pip install -e '.[onnx]'``), then run by
  onnxruntime on a few images and compared with JAX's result before the file is kept. An op
  jax2onnx cannot convert is named in the error, with the model.

``--batch_size=dynamic`` (the default) leaves the batch dimension symbolic: any number of
images per call. ``--compute_dtype`` computes in another dtype than the run's
(``training.compute_dtype``): onnxruntime's CPU kernels have no bfloat16 convolution, so a
bfloat16 run goes to ONNX with ``--compute_dtype=float32``.

Next to PATH, ``PATH.json`` describes the file: class names, input shape and dtype,
preprocessing, TTA, the run (workdir, checkpoint, step) and the versions that wrote it.

This module is an entry point, a peer of ``cv_jax.main`` and ``cv_jax.tools`` in the layering
of pyproject.toml: it builds on ``cv_jax.inference`` (the real load path of a run) and needs
nothing from the other commands.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from jax import export as jax_export
from jax import lax

from cv_jax.inference import LoadedModel, load
from cv_jax.models.layers import PLAIN, LayerImpl, Pads
from cv_jax.runtime import cpu_defaults
from cv_jax.training import runs, steps

FORMATS = ("stablehlo", "onnx")
PLATFORMS = ("cpu", "cuda")  # the default targets of a StableHLO export
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export can lower for
BATCH_DIM = "batch"  # the name of the symbolic batch dimension (in the ONNX file's input too)
ONNX_OPSET = 23
# How far onnxruntime's probabilities may be from JAX's on the check images: float32 rounding of
# a different convolution implementation stays orders of magnitude below this; a wrong graph
# does not.
ONNX_CHECK_TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 2e-2}
CHECK_IMAGES = 4  # images the ONNX file is checked on (with a dynamic batch size)
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


class ExportError(Exception):
    """A run cannot be exported in the asked format (a clear sentence, for the command line)."""


@dataclasses.dataclass(frozen=True)
class Export:
    """What :func:`export_run` wrote: the file, its JSON description and that description."""

    path: str
    sidecar: str
    description: dict


def parse_batch_size(value: str | int | None) -> int | None:
    """``'dynamic'`` (or None) -> None, a positive number of images -> that int."""
    if value is None or value == "dynamic":
        return None
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if size < 1 or str(value).strip() != str(size):
        raise ExportError(f"--batch_size={value}: give a positive number of images or 'dynamic'")
    return size


def with_compute_dtype(model: LoadedModel, dtype: str) -> LoadedModel:
    """``model`` computing in ``dtype`` (its normalised input and its layers; the weights stay
    float32), as if the run had been trained with ``training.compute_dtype=dtype``."""
    _check_compute_dtype(dtype)
    config = model.config.copy_and_resolve_references()
    config.training.compute_dtype = dtype
    net = runs.build_model(config, len(model.class_names))
    return dataclasses.replace(model, config=config,
                               settings=steps.EvalSettings.from_config(config),
                               state=model.state.replace(apply_fn=net.apply))


def _check_compute_dtype(dtype: str) -> None:
    if dtype not in COMPUTE_DTYPES:
        raise ExportError(f"compute dtype {dtype!r}: use one of {', '.join(COMPUTE_DTYPES)}")


def input_spec(model: LoadedModel, batch_size: int | None) -> jax.ShapeDtypeStruct:
    """uint8 [batch_size, H, W, C] at the run's image size; a symbolic batch when None."""
    batch = jax_export.symbolic_shape(BATCH_DIM)[0] if batch_size is None else batch_size
    return jax.ShapeDtypeStruct((batch, *model.image_shape), jnp.uint8)


def concat_max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
                    pads: Pads) -> jax.Array:
    """``flax.linen.max_pool`` of NHWC ``x``, exactly, as the maximum of the window's strided
    slices, padded by concatenating -inf edges: ops that jax2onnx converts for any batch size.
    (jax2onnx turns a max pool's 4-D ``reduce_window_max`` into a pooling over all 4 axes, which
    onnxruntime cannot run, and ``lax.pad`` of a symbolic batch fails in jax2onnx 0.17.)"""
    if isinstance(pads, str):
        pads = lax.padtype_to_pads(x.shape[1:3], window, strides, pads)
    fill = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
    for axis, (low, high) in zip((1, 2), pads, strict=True):
        if low < 0 or high < 0:
            raise ValueError(f"max pooling with negative padding {tuple(pads)} is not supported")
        edge = jnp.full_like(lax.slice_in_dim(x, 0, 1, axis=axis), fill)
        x = jnp.concatenate([edge] * low + [x] + [edge] * high, axis=axis)
    out_h = (x.shape[1] - window[0]) // strides[0] + 1
    out_w = (x.shape[2] - window[1]) // strides[1] + 1
    result = None
    for i in range(window[0]):
        for j in range(window[1]):
            view = x[:, i:i + strides[0] * (out_h - 1) + 1:strides[0],
                     j:j + strides[1] * (out_w - 1) + 1:strides[1], :]
            result = view if result is None else jnp.maximum(result, view)
    return result


ONNX_LAYERS = dataclasses.replace(PLAIN, max_pooling=concat_max_pool)


def probabilities_function(model: LoadedModel,
                           layer_impl: LayerImpl = PLAIN) -> Callable[[jax.Array], jax.Array]:
    """``images -> probabilities`` as ``model.predict`` computes them (``steps.predict_logits``:
    normalisation and the run's TTA, then softmax), with the weights as constants, so that they
    are baked into an exported program, and the TTA views in one batch, so that it holds the
    network once; the model built with ``layer_impl`` (the same variables)."""
    net = runs.build_model(model.config, len(model.class_names), layer_impl)

    def on_host(tree):  # one device's copy, one constant per array however often it is used
        return jax.tree.map(jnp.asarray, jax.device_get(tree))

    state = model.state.replace(apply_fn=net.apply, params=on_host(model.state.params),
                                batch_stats=on_host(model.state.batch_stats),
                                slow={}, ema={}, opt_state=None)
    settings = model.settings

    def probabilities(images: jax.Array) -> jax.Array:
        return jax.nn.softmax(steps.predict_logits(state, images, settings, batch_views=True))

    return probabilities


def export_stablehlo(model: LoadedModel, batch_size: int | None,
                     platforms: Sequence[str] = PLATFORMS) -> bytearray:
    """The serialized ``jax.export`` artifact of the model's probabilities function."""
    unknown = [p for p in platforms if p not in KNOWN_PLATFORMS]
    if unknown or not platforms:
        raise ExportError(f"platforms {list(platforms)}: choose from {list(KNOWN_PLATFORMS)}")
    exported = jax_export.export(jax.jit(probabilities_function(model)),
                                 platforms=tuple(platforms))(input_spec(model, batch_size))
    return exported.serialize()


def _import_onnx_tools():
    try:
        import jax2onnx
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ExportError(
            f"--format=onnx needs jax2onnx, onnx and onnxruntime ({e}); install them with "
            "pip install -e '.[onnx]'"
        ) from e
    return jax2onnx, onnx, onnxruntime


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Errors only from the loggers ``names`` (jax2onnx warns of each optional plugin it cannot
    load, onnx_ir of value types it leaves out)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.level, logging.ERROR))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _failed_op(error: BaseException) -> tuple[str | None, str | None]:
    """The primitive jax2onnx was converting when ``error`` was raised (from the innermost frame
    of its lowering loop), and where cv_jax's code made it or the call that holds it
    (``file:line``; a jnp function's primitives sit inside its jit)."""
    op, where = None, None
    for frame, _ in traceback.walk_tb(error.__traceback__):
        name = frame.f_locals.get("primitive_name")
        if isinstance(name, str):
            op = name
            where = _source_line(frame.f_locals.get("eqn")) or where
    return op, where


def _source_line(eqn) -> str | None:
    """``file:line`` of the user code that made a jaxpr equation, where JAX recorded it."""
    try:
        frames = eqn.source_info.traceback.frames
    except AttributeError:
        return None
    package = os.path.dirname(os.path.abspath(__file__))
    for frame in frames:
        if frame.file_name.startswith(package) and frame.file_name != os.path.abspath(__file__):
            return f"{os.path.relpath(frame.file_name, os.path.dirname(package))}:{frame.line_num}"
    return None


def _onnx_error(model: LoadedModel, error: BaseException, batch_size: int | None) -> ExportError:
    op, where = _failed_op(error)
    name = model.config.model.name
    at = f" (made at {where})" if where else ""
    subject = f"the op {op!r}{at} of model {name!r}" if op else f"model {name!r}"
    hint = ("; a fixed --batch_size=N may convert" if batch_size is None and
            "Symbolic dimension" in str(error) else "")
    first_line = str(error).strip().split("\n")[0]
    return ExportError(
        f"jax2onnx cannot convert {subject} (run {model.workdir}): "
        f"{type(error).__name__}: {first_line}{hint}; --format=stablehlo exports any model"
    )


def export_onnx(model: LoadedModel, batch_size: int | None):
    """The model's probabilities function as an ONNX ModelProto (jax2onnx), checked with
    onnxruntime against JAX on :data:`CHECK_IMAGES` images; returns ``(proto, check)``."""
    jax2onnx, onnx, onnxruntime = _import_onnx_tools()
    spec = input_spec(model, batch_size)
    # Traced here, outside jax2onnx: it would otherwise swap flax's layers for its own while
    # tracing. Only JAX's primitives then reach its converter.
    traced = jax.make_jaxpr(probabilities_function(model, ONNX_LAYERS))(spec)

    def replay(images):
        return jax.core.eval_jaxpr(traced.jaxpr, traced.consts, images)[0]

    try:
        with _quiet("jax2onnx", "onnx_ir"):
            proto = jax2onnx.to_onnx(replay, [spec], model_name=model.config.model.name,
                                     opset=ONNX_OPSET, input_names=["images"],
                                     output_names=["probabilities"])
    except Exception as e:  # any converter failure becomes one clear sentence
        raise _onnx_error(model, e, batch_size) from e
    check = check_onnx(model, proto.SerializeToString(), batch_size or CHECK_IMAGES)
    return proto, check


def check_onnx(model: LoadedModel, serialized: bytes, count: int) -> dict:
    """Runs the ONNX model with onnxruntime on ``count`` random images and compares its
    probabilities with ``model.predict``'s; ExportError naming the failing node or the
    difference."""
    _, _, onnxruntime = _import_onnx_tools()
    images = np.random.default_rng(0).integers(0, 256, (count, *model.image_shape), np.uint8)
    name, dtype = model.config.model.name, model.config.training.compute_dtype
    try:
        session = onnxruntime.InferenceSession(serialized, providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": images})[0]
    except Exception as e:  # onnxruntime's errors have no common base class
        hint = "" if dtype == "float32" else "; --compute_dtype=float32 may run"
        raise ExportError(
            f"onnxruntime cannot run the ONNX model of {name!r} (compute dtype {dtype}, run "
            f"{model.workdir}): {str(e).strip()}{hint}"
        ) from e
    expected = model.predict(images)
    difference = float(np.max(np.abs(got - expected)))
    tolerance = ONNX_CHECK_TOLERANCE.get(dtype, 1e-4)
    if got.shape != expected.shape or not difference <= tolerance:
        raise ExportError(
            f"the ONNX model of {name!r} computes other probabilities than cv_jax: shape "
            f"{got.shape} against {expected.shape}, largest difference {difference:.3g} "
            f"(tolerance {tolerance:g}) on {count} random images"
        )
    return {"images": count, "max_abs_difference": difference, "tolerance": tolerance}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe(model: LoadedModel, fmt: str, batch_size: int | None, checkpoint: str,
             weights: str, path: str, trained_dtype: str) -> dict:
    """The JSON sidecar of an exported file."""
    h, w, c = model.image_shape
    batch = BATCH_DIM if batch_size is None else batch_size
    norm = model.settings.normalization
    return {
        "format": fmt,
        "file": os.path.basename(path),
        "class_names": list(model.class_names),
        "input": {"name": "images", "shape": [batch, h, w, c], "dtype": "uint8",
                  "layout": f"NHWC, {'RGB' if c == 3 else 'grey'}, 0-255"},
        "output": {"name": "probabilities", "shape": [batch, len(model.class_names)],
                   "dtype": "float32", "meaning": "softmax class probabilities"},
        "preprocessing": {
            "baked_in": "(x / 255 - mean) / std per channel, in the compute dtype",
            "mean": list(norm.mean), "std": list(norm.std),
            "compute_dtype": str(jnp.dtype(norm.dtype)),
            "resize": f"none: give {h}x{w} images (cv_jax.load(...).read_images resizes files "
                      "as the run's data loader does)",
        },
        "tta": {"flip": bool(model.settings.tta_flip),
                "translate": int(model.settings.tta_translate)},
        "run": {"workdir": os.path.abspath(model.workdir), "checkpoint": checkpoint,
                "step": int(model.step), "weights": weights, "model": model.config.model.name,
                "compute_dtype": trained_dtype},
        "versions": {"cv_jax": _version("cv_jax"), "jax": jax.__version__,
                     "jaxlib": _version("jaxlib")},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def export_run(workdir: str, fmt: str, out: str, checkpoint: str = "best", weights: str = "raw",
               batch_size: int | None = None, platforms: Sequence[str] = PLATFORMS,
               compute_dtype: str = "") -> Export:
    """Writes ``out`` (the exported file) and ``out + '.json'`` (its description) for the
    ``checkpoint`` of the run in ``workdir`` with its ``weights``; ``batch_size`` None: any
    number of images per call; ``compute_dtype`` '': the run's."""
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        _import_onnx_tools()  # before loading the run: a missing package is named at once
    if compute_dtype:
        _check_compute_dtype(compute_dtype)
    model = load(workdir, checkpoint, weights)
    trained_dtype = model.config.training.compute_dtype
    if compute_dtype and compute_dtype != trained_dtype:
        model = with_compute_dtype(model, compute_dtype)
    description = describe(model, fmt, batch_size, checkpoint, weights, out, trained_dtype)
    if fmt == "stablehlo":
        data = bytes(export_stablehlo(model, batch_size, platforms))
        description["platforms"] = list(platforms)
        description["load"] = ("jax.export.deserialize(open(PATH, 'rb').read())"
                               ".call(images)")
    else:
        proto, check = export_onnx(model, batch_size)
        description["versions"] |= {p: _version(p) for p in ("jax2onnx", "onnx", "onnxruntime")}
        description["opset"] = ONNX_OPSET
        description["check"] = check
        description["load"] = ("onnxruntime.InferenceSession(PATH).run(None, "
                               "{'images': images})[0]")
        entry = proto.metadata_props.add()
        entry.key, entry.value = "cv_jax", json.dumps(description)
        data = proto.SerializeToString()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "wb") as f:
        f.write(data)
    description["bytes"] = len(data)
    sidecar = out + ".json"
    with open(sidecar, "w") as f:
        json.dump(description, f, indent=2)
        f.write("\n")
    return Export(out, sidecar, description)


FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command-line flags, defined only when run as a program."""
    flags.DEFINE_string("workdir", None, "A run directory written by cv_jax.main.")
    flags.DEFINE_enum("format", None, list(FORMATS), "What to write.")
    flags.DEFINE_string("out", None, "The file to write; its description goes to OUT.json.")
    flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint to export.")
    flags.DEFINE_enum("weights", "raw", ["raw", "ema"], "Raw weights or their moving average.")
    flags.DEFINE_string("batch_size", "dynamic",
                        "Images per call: a number, or 'dynamic' for any number.")
    flags.DEFINE_list("platforms", list(PLATFORMS),
                      "StableHLO only: the platforms the file runs on (cpu, cuda, rocm, tpu).")
    flags.DEFINE_enum("compute_dtype", "", ["", *COMPUTE_DTYPES],
                      "Compute in this dtype instead of the run's training.compute_dtype.")


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        result = export_run(FLAGS.workdir, FLAGS.format, FLAGS.out, FLAGS.checkpoint,
                            FLAGS.weights, parse_batch_size(FLAGS.batch_size), FLAGS.platforms,
                            FLAGS.compute_dtype)
    except (ExportError, FileNotFoundError, ValueError) as e:  # no run, no EMA, no package, op
        print(f"error: {e}", file=sys.stderr)
        return 2
    d = result.description
    shape = ", ".join(map(str, d["input"]["shape"]))
    print(f"wrote {result.path} ({d['bytes'] / 1e6:.1f} MB, {d['format']}: uint8 [{shape}] -> "
          f"{len(d['class_names'])} class probabilities) and {result.sidecar}")
    return 0


if __name__ == "__main__":
    cpu_defaults.apply()  # before JAX starts its backend
    define_flags()
    flags.mark_flags_as_required(["workdir", "format", "out"])
    app.run(main)
