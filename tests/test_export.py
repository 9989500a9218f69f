"""cv_jax.export: StableHLO and ONNX files of a trained run compute what cv_jax.load(...).predict
does, for any batch size; what cannot be exported is named.

Tolerances (probabilities, absolute): the StableHLO file computes predict's function with XLA,
its TTA views in one batch and on one device instead of 8, so it differs by float32 rounding
(seen: up to 2e-7; allowed 1e-6); onnxruntime convolves with its own kernels, whose rounding
differs more (seen: up to 1e-6; allowed 1e-5). The probabilities compared are far from uniform
and far from saturated (checked), so a wrong graph would differ by much more.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import CLASSES, REPO, tiny_config

import cv_jax
from cv_jax import export
from cv_jax.config import model_section
from cv_jax.training import checkpoint, runs
from cv_jax.training.results import save_config
from cv_jax.training.state import create_train_state, init_variables

try:  # the onnx extra (make install-dev installs it)
    import jax2onnx  # noqa: F401
    import onnx
    import onnxruntime
except ImportError:
    onnx = onnxruntime = None
needs_onnx = pytest.mark.skipif(onnxruntime is None, reason="pip install -e '.[onnx]'")

STABLEHLO_ATOL = 1e-6
ONNX_ATOL = 1e-5
IMAGE_SHAPE = (16, 16, 3)


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, *IMAGE_SHAPE), np.uint8)


def assert_meaningful(probabilities: np.ndarray) -> None:
    """Rows of probabilities that sum to 1 and are far from uniform (so that a tolerance on
    them tells a right graph from a wrong one)."""
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
    assert (probabilities.max(-1) - probabilities.min(-1)).min() > 0.1
    assert probabilities.min() > 1e-3  # no saturated softmax either


def save_initialised_run(workdir, config) -> None:
    """A run directory as training writes it (config.json, one evaluated checkpoint with its
    signature) holding initialised weights and random BatchNorm statistics (so that BatchNorm
    is not the identity)."""
    model = runs.build_model(config, len(CLASSES))
    tx = runs.build_optimizer(config, lambda count: 0.0, len(CLASSES), IMAGE_SHAPE, 1)
    key = jax.random.key_data(jax.random.key(0))
    variables = jax.jit(lambda k: init_variables(model, k, IMAGE_SHAPE))(key)
    leaves, tree = jax.tree.flatten(variables.get("batch_stats", {}))  # mean, var, mean, ...
    rng = np.random.default_rng(0)
    variables["batch_stats"] = jax.tree.unflatten(tree, [
        rng.uniform(0.5, 1.5, x.shape).astype(np.float32) if i % 2 else
        rng.normal(0.0, 0.1, x.shape).astype(np.float32) for i, x in enumerate(leaves)])
    slow = config.optimizer.lookahead_every > 0
    state = jax.jit(lambda v, k: create_train_state(model, tx, v, k, slow=slow))(variables, key)
    os.makedirs(workdir)
    save_config(config, str(workdir))
    sig = checkpoint.signature(config.model.to_dict(), state.params, CLASSES, IMAGE_SHAPE)
    ckpt = checkpoint.Checkpoints.for_run(str(workdir), config)
    ckpt.save(0, state, sig, metrics={checkpoint.selection(config)[0]: 0.5})
    ckpt.wait()
    ckpt.close()


@pytest.fixture(scope="module")
def smoke_run(trained_run, tmp_path_factory):
    """The tiny smoke run (airbench 8/16/16, flip TTA, trained 12 steps) with airbench94's
    translated views too (``eval.tta_translate=1`` in its config.json): all of the TTA baked
    into the exported function."""
    path = tmp_path_factory.mktemp("export") / "smoke"
    shutil.copytree(trained_run[0], path)
    config = json.loads((path / "config.json").read_text())
    assert config["eval"]["tta_flip"] and config["model"]["name"] == "airbench"
    config["eval"]["tta_translate"] = 1
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


@pytest.fixture(scope="module")
def smoke_model(smoke_run):
    return cv_jax.load(smoke_run)


@pytest.fixture(scope="module")
def resnet18_run(tiny_folder, cache_dir, tmp_path_factory):
    """resnet18_cifar (11.2M parameters) with initialised weights, and flip TTA."""
    config = tiny_config(tiny_folder, cache_dir)
    config.model = model_section("resnet18_cifar")
    config.optimizer.lookahead_every = 0  # no slow copy of the weights to save and restore
    path = tmp_path_factory.mktemp("export") / "resnet18"
    save_initialised_run(path, config)
    return str(path)


PLAIN_JAX = textwrap.dedent("""
    # Runs an exported file with plain JAX; cv_jax cannot be imported here.
    import sys
    sys.modules["cv_jax"] = None
    try:
        import cv_jax
        sys.exit("cv_jax is importable")
    except ImportError:
        pass
    import jax
    import numpy as np
    with open(sys.argv[1], "rb") as f:
        exported = jax.export.deserialize(f.read())
    print(",".join(exported.platforms))
    for path in sys.argv[2:]:
        np.save(path + ".out.npy", np.asarray(exported.call(np.load(path))))
""")


def test_max_pool_for_onnx_is_flax_max_pool():
    x = jax.random.normal(jax.random.key(0), (2, 9, 10, 3))
    for window, strides, pads in [((2, 2), (2, 2), "VALID"), ((3, 3), (2, 2), [(1, 1), (1, 1)]),
                                  ((3, 3), (1, 1), "SAME"), ((3, 2), (2, 3), "SAME"),
                                  ((2, 2), (1, 1), [(0, 1), (2, 0)])]:
        np.testing.assert_array_equal(export.concat_max_pool(x, window, strides, pads),
                                      nn.max_pool(x, window, strides, pads))


def test_stablehlo_runs_with_plain_jax_for_any_batch_size(smoke_run, smoke_model, tmp_path):
    out = tmp_path / "smoke.stablehlo"
    result = export.export_run(smoke_run, "stablehlo", str(out))
    assert result.path == str(out) and result.sidecar == f"{out}.json"
    for count in (1, 7):
        np.save(tmp_path / f"x{count}.npy", images(count, seed=count))
    (tmp_path / "run_exported.py").write_text(PLAIN_JAX)
    done = subprocess.run(
        [sys.executable, "-I", "run_exported.py", str(out), "x1.npy", "x7.npy"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["cpu,cuda"]
    for count in (1, 7):
        got = np.load(tmp_path / f"x{count}.npy.out.npy")
        expected = smoke_model.predict(images(count, seed=count))
        assert got.shape == (count, 4) and got.dtype == np.float32
        assert_meaningful(expected)
        np.testing.assert_allclose(got, expected, rtol=0, atol=STABLEHLO_ATOL)

    description = json.loads((tmp_path / "smoke.stablehlo.json").read_text())
    assert description == result.description
    assert description["bytes"] == out.stat().st_size
    assert description["class_names"] == list(CLASSES)
    assert description["input"] == {"name": "images", "shape": ["batch", 16, 16, 3],
                                    "dtype": "uint8", "layout": "NHWC, RGB, 0-255"}
    assert description["output"]["shape"] == ["batch", 4]
    assert description["tta"] == {"flip": True, "translate": 1}
    assert description["preprocessing"]["mean"] == list(smoke_model.config.dataset.mean)
    assert description["preprocessing"]["compute_dtype"] == "float32"
    assert description["run"] == {"workdir": smoke_run, "checkpoint": "best",
                                  "step": smoke_model.step, "weights": "raw",
                                  "model": "airbench", "compute_dtype": "float32"}
    assert description["platforms"] == ["cpu", "cuda"]
    assert description["versions"]["jax"] == jax.__version__


@needs_onnx
def test_onnx_equals_predict_for_any_batch_size(smoke_run, smoke_model, tmp_path, monkeypatch):
    out = tmp_path / "smoke.onnx"
    result = export.export_run(smoke_run, "onnx", str(out))
    proto = onnx.load(str(out))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert [i.name for i in proto.graph.input] == ["images"] and dims == ["batch", 16, 16, 3]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    metadata = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert metadata["cv_jax"] == {k: v for k, v in result.description.items() if k != "bytes"}
    assert result.description["tta"] == {"flip": True, "translate": 1}
    assert result.description["check"]["images"] == export.CHECK_IMAGES
    assert result.description["check"]["max_abs_difference"] <= ONNX_ATOL
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for count in (1, 7):
        x = images(count, seed=count)
        got = session.run(None, {"images": x})[0]
        assert got.shape == (count, 4)
        np.testing.assert_allclose(got, smoke_model.predict(x), rtol=0, atol=ONNX_ATOL)

    monkeypatch.setitem(export.ONNX_CHECK_TOLERANCE, "float32", -1.0)
    with pytest.raises(export.ExportError, match=(
            r"the ONNX model of 'airbench' computes other probabilities than cv_jax: shape "
            r"\(3, 4\) against \(3, 4\), largest difference .* \(tolerance -1\) on 3 random")):
        export.check_onnx(smoke_model, out.read_bytes(), 3)


@pytest.fixture(scope="module")
def resnet18_predictions(resnet18_run):
    """7 images and their probabilities by cv_jax.load(...).predict."""
    x = images(7, seed=3)
    expected = cv_jax.load(resnet18_run).predict(x)
    assert_meaningful(expected)
    return x, expected


def test_resnet18_stablehlo_equals_predict(resnet18_run, resnet18_predictions, tmp_path):
    x, expected = resnet18_predictions
    hlo = export.export_run(resnet18_run, "stablehlo", str(tmp_path / "r18.stablehlo"))
    assert 44e6 < hlo.description["bytes"] < 46e6  # 11.2M float32 parameters, stored once
    with open(hlo.path, "rb") as f:
        exported = jax.export.deserialize(f.read())
    for count in (1, 7):
        np.testing.assert_allclose(exported.call(x[:count]), expected[:count], rtol=0,
                                   atol=STABLEHLO_ATOL)


@needs_onnx
def test_resnet18_onnx_equals_predict(resnet18_run, resnet18_predictions, tmp_path):
    x, expected = resnet18_predictions
    ort = export.export_run(resnet18_run, "onnx", str(tmp_path / "r18.onnx"))
    assert 44e6 < ort.description["bytes"] < 46e6
    session = onnxruntime.InferenceSession(ort.path, providers=["CPUExecutionProvider"])
    for count in (1, 7):
        got = session.run(None, {"images": x[:count]})[0]
        np.testing.assert_allclose(got, expected[:count], rtol=0, atol=ONNX_ATOL)


def test_a_fixed_batch_size_is_the_only_one_accepted(smoke_run, smoke_model, tmp_path):
    result = export.export_run(smoke_run, "stablehlo", str(tmp_path / "b3"), batch_size=3,
                               platforms=["cpu"])
    assert result.description["input"]["shape"] == [3, 16, 16, 3]
    assert result.description["platforms"] == ["cpu"]
    with open(result.path, "rb") as f:
        exported = jax.export.deserialize(f.read())
    assert exported.platforms == ("cpu",)
    x = images(3)
    np.testing.assert_allclose(exported.call(x), smoke_model.predict(x), rtol=0,
                               atol=STABLEHLO_ATOL)
    with pytest.raises(ValueError, match=r"expected \(3, 16, 16, 3\) and called with "
                                         r"\(1, 16, 16, 3\)"):
        exported.call(x[:1])


@needs_onnx
def test_an_op_jax2onnx_cannot_convert_is_named_with_the_model(tiny_folder, cache_dir, tmp_path):
    """resnet20's option-A shortcut pads channels with lax.pad, which jax2onnx 0.17 converts
    for a fixed batch size only."""
    config = tiny_config(tiny_folder, cache_dir)
    config.model = model_section("resnet20")
    save_initialised_run(tmp_path / "run", config)
    out = str(tmp_path / "r20.onnx")
    with pytest.raises(export.ExportError) as error:
        export.export_run(str(tmp_path / "run"), "onnx", out)
    message = str(error.value)
    assert message.startswith(
        "jax2onnx cannot convert the op 'pad' (made at cv_jax/models/resnet_cifar.py:")
    assert f"of model 'resnet20' (run {tmp_path / 'run'}): InconclusiveDimensionOperation" in \
        message
    assert message.endswith("; a fixed --batch_size=N may convert; --format=stablehlo exports "
                            "any model")
    assert not os.path.exists(out)
    fixed = export.export_run(str(tmp_path / "run"), "onnx", out, batch_size=2)
    assert fixed.description["input"]["shape"] == [2, 16, 16, 3]
    assert fixed.description["check"]["images"] == 2


@needs_onnx
def test_a_bfloat16_run_goes_to_onnx_computing_in_float32(smoke_run, smoke_model, tmp_path):
    run = tmp_path / "bf16"
    shutil.copytree(smoke_run, run)
    config = json.loads((run / "config.json").read_text())
    config["training"]["compute_dtype"] = "bfloat16"
    (run / "config.json").write_text(json.dumps(config))
    out = str(tmp_path / "m.onnx")
    with pytest.raises(export.ExportError, match=(
            rf"onnxruntime cannot run the ONNX model of 'airbench' \(compute dtype bfloat16, run "
            rf"{run}\): .*Conv.*; --compute_dtype=float32 may run$")):
        export.export_run(str(run), "onnx", out)
    result = export.export_run(str(run), "onnx", out, compute_dtype="float32")
    assert result.description["preprocessing"]["compute_dtype"] == "float32"
    assert result.description["run"]["compute_dtype"] == "bfloat16"
    session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
    x = images(7, seed=7)
    # the run's float32 original: the same weights computing in float32
    np.testing.assert_allclose(session.run(None, {"images": x})[0], smoke_model.predict(x),
                               rtol=0, atol=ONNX_ATOL)


def test_bad_requests_are_named(smoke_run, tmp_path, monkeypatch):
    with pytest.raises(export.ExportError, match="format 'tflite': use one of stablehlo, onnx"):
        export.export_run(smoke_run, "tflite", str(tmp_path / "x"))
    for value in ("0", "-2", "seven", "2.5", ""):
        with pytest.raises(export.ExportError, match=f"--batch_size={value}: give a positive "
                                                     "number of images or 'dynamic'"):
            export.parse_batch_size(value)
    assert export.parse_batch_size("7") == 7 and export.parse_batch_size("dynamic") is None
    with pytest.raises(export.ExportError, match=r"platforms \['gpu'\]: choose from "
                                                 r"\['cpu', 'cuda', 'rocm', 'tpu'\]"):
        export.export_run(smoke_run, "stablehlo", str(tmp_path / "x"), platforms=["gpu"])
    with pytest.raises(export.ExportError, match="compute dtype 'int8': use one of float32, "
                                                 "bfloat16, float16"):
        export.export_run(smoke_run, "stablehlo", str(tmp_path / "x"), compute_dtype="int8")
    with pytest.raises(ValueError, match="kept no moving average"):
        export.export_run(smoke_run, "stablehlo", str(tmp_path / "x"), weights="ema")
    monkeypatch.setitem(sys.modules, "jax2onnx", None)
    with pytest.raises(export.ExportError, match=r"--format=onnx needs jax2onnx, onnx and "
                                                 r"onnxruntime \(.*\); install them with pip "
                                                 r"install -e '\.\[onnx\]'"):
        export.export_run(smoke_run, "onnx", str(tmp_path / "x"))
    assert not os.listdir(tmp_path)


def test_command_line(smoke_run, smoke_model, tmp_path):
    cache = {"JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
    out = tmp_path / "m.stablehlo"

    def run(*args):
        return subprocess.run([sys.executable, "-m", "cv_jax.export", f"--workdir={smoke_run}",
                               f"--out={out}", *args], cwd=REPO, env=os.environ | cache,
                              capture_output=True, text=True, timeout=120)

    done = run("--format=stablehlo", "--batch_size=zero")
    assert done.returncode == 2
    assert done.stderr.strip().endswith(
        "error: --batch_size=zero: give a positive number of images or 'dynamic'")
    done = run("--format=stablehlo", "--checkpoint=latest", "--batch_size=5")
    assert done.returncode == 0, done.stderr
    size = out.stat().st_size
    assert done.stdout.strip() == (
        f"wrote {out} ({size / 1e6:.1f} MB, stablehlo: uint8 [5, 16, 16, 3] -> 4 class "
        f"probabilities) and {out}.json")
    description = json.loads((tmp_path / "m.stablehlo.json").read_text())
    latest = runs.load_run(smoke_run, "latest").step
    assert description["run"]["checkpoint"] == "latest"
    assert description["run"]["step"] == latest
