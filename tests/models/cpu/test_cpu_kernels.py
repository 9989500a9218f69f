"""cv_jax's CPU convolution kernels equal XLA's convolution and its gradients."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cv_jax.models.cpu import formulations as cpu_formulations
from cv_jax.models.cpu import kernels as cpu_kernels
from cv_jax.models.layers import PLAIN

NHWC = ("NHWC", "HWIO", "NHWC")

# (batch, height, width, in channels, out channels, kernel, strides, padding)
CASES = [
    (3, 8, 8, 16, 16, (3, 3), (1, 1), "SAME"),  # a ResNet block's convolution
    (2, 9, 7, 5, 24, (3, 3), (2, 2), "SAME"),  # odd sizes, stride 2, asymmetric padding
    (2, 8, 8, 3, 8, (2, 2), (1, 1), "VALID"),  # airbench's whitening stem shape
    (4, 6, 6, 9, 40, (1, 1), (1, 1), "VALID"),  # 1x1; channel counts not multiples of 4/16
    (1, 10, 11, 4, 8, (5, 3), (2, 3), ((2, 1), (0, 2))),  # explicit, uneven padding
    (5, 4, 4, 8, 16, (3, 3), (1, 1), ((3, 3), (3, 3))),  # padding wider than the kernel
    # one-vector 3-tap tiles (16 channels on AVX-512, 8 on AVX2) of uneven widths and padding
    (2, 5, 29, 16, 16, (3, 3), (1, 1), ((1, 1), (0, 2))),
    (2, 7, 9, 8, 8, (3, 3), (1, 1), "SAME"),
    (2, 9, 12, 8, 16, (3, 3), (2, 1), ((1, 1), (2, 0))),  # stride 2 down, 1 across
    (3, 12, 12, 1, 16, (3, 3), (1, 1), "SAME"),  # a grey (MNIST) image's first convolution
]


def reference_weight_grad(x, dy, kernel_shape, strides, padding):
    def conv(w):
        return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)

    return jax.vjp(conv, jnp.zeros(kernel_shape, jnp.float32))[1](dy)[0]


def random_case(case, seed=0):
    n, h, w, c, co, kernel, strides, padding = case
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((n, h, w, c)), jnp.float32)
    kernel_shape = (*kernel, c, co)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads((h, w), kernel, strides, padding)
    out = jax.eval_shape(lambda x: lax.conv_general_dilated(
        x, jnp.zeros(kernel_shape), strides, padding, dimension_numbers=NHWC), x)
    dy = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
    return x, dy, kernel_shape, strides, tuple(tuple(p) for p in padding)


@pytest.fixture(scope="module", autouse=True)
def kernel_loaded():
    assert cpu_kernels.load(), "the test machine has a C compiler; compiling must work"


@pytest.mark.parametrize("case", CASES, ids=[str(c[:5]) for c in CASES])
def test_forward_equals_xla(case):
    x, dy, kernel_shape, strides, padding = random_case(case)
    kernel = jnp.asarray(np.random.default_rng(2).standard_normal(kernel_shape), jnp.float32)
    ours = jax.jit(cpu_kernels.conv_forward, static_argnums=(2, 3, 4))(
        x, kernel, dy.shape[1:3], strides, tuple(low for low, _ in padding))
    expected = lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=NHWC)
    assert ours.shape == expected.shape and ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, expected, rtol=2e-5, atol=2e-5 * float(
        jnp.max(jnp.abs(expected))))


@pytest.mark.parametrize("case", CASES, ids=[str(c[:5]) for c in CASES])
def test_weight_grad_equals_xla(case):
    x, dy, kernel_shape, strides, padding = random_case(case)
    weight_grad = jax.jit(cpu_kernels.conv_weight_grad, static_argnums=(2, 3, 4))
    args = (x, dy, kernel_shape[:2], strides, tuple(low for low, _ in padding))
    ours = weight_grad(*args)
    np.testing.assert_array_equal(weight_grad(*args), ours)  # partial sums added in fixed order
    expected = reference_weight_grad(x, dy, kernel_shape, strides, padding)
    assert ours.shape == expected.shape and ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, expected, rtol=2e-5, atol=2e-5 * float(
        jnp.max(jnp.abs(expected))))


def conv_layer_gradients(case, formulations: bool):
    x, dy, kernel_shape, strides, padding = random_case(case, seed=1)
    layer_impl = cpu_formulations.CPU if formulations else PLAIN
    layer = layer_impl.conv(kernel_shape[-1], kernel_shape[:2], strides=strides,
                            padding=padding, use_bias=False)
    params = layer.init(jax.random.key(0), x)

    def apply(params, x):
        return layer.apply(params, x)

    y, vjp = jax.vjp(jax.jit(apply), params, x)
    def value_and_gradients(params, x, dy):
        y, vjp = jax.vjp(apply, params, x)
        return y, vjp(dy)

    program = jax.jit(value_and_gradients).lower(params, x, dy).as_text()
    return y, vjp(dy), program


@pytest.mark.parametrize("case, kernel_calls", [
    (CASES[0], 3),
    (CASES[1], 2),  # 5 input channels: XLA's input gradient
    ((2, 9, 7, 8, 16, (3, 3), (2, 2), "SAME"), 2 + 4),  # one call per residue class (r, q)
    ((2, 8, 8, 16, 8, (1, 1), (2, 2), "VALID"), 2 + 1),  # three classes without taps
    ((1, 10, 11, 8, 8, (5, 3), (2, 3), ((2, 1), (0, 2))), 2 + 6),
    (CASES[5], 3),
], ids=["stride 1", "stride 2, 5 channels", "stride 2", "1x1 stride 2", "strides 2, 3",
        "wide padding"])
def test_conv_layer_uses_the_kernels_with_the_same_value_and_gradients(case, kernel_calls):
    y, (param_grad, input_grad), program = conv_layer_gradients(case, formulations=True)
    y0, (param_grad0, input_grad0), program0 = conv_layer_gradients(case, formulations=False)
    # forward, weight gradient, and the input gradient as forward convolutions
    calls = program.count(f"@{cpu_kernels.FORWARD}") + program.count(f"@{cpu_kernels.WEIGHT_GRAD}")
    assert calls == kernel_calls and "cv_jax_conv" not in program0
    for ours, xla in ((y, y0), (input_grad, input_grad0),
                      (param_grad["params"]["kernel"], param_grad0["params"]["kernel"])):
        np.testing.assert_allclose(ours, xla, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(xla))))


def test_vmapped_weight_grad_equals_each_member():
    x, dy, kernel_shape, strides, padding = random_case(CASES[0])
    xs, dys = jnp.stack([x, -2 * x]), jnp.stack([dy, dy[::-1]])

    def grad(x, dy):
        return cpu_kernels.conv_weight_grad(x, dy, kernel_shape[:2], strides, (1, 1))

    batched = jax.jit(jax.vmap(grad))(xs, dys)
    for i in range(2):
        np.testing.assert_array_equal(batched[i], jax.jit(grad)(xs[i], dys[i]))


def test_unsupported_convolutions_keep_xla():
    x = jnp.ones((2, 6, 6, 4))

    def program(features, dtype=jnp.float32, **fields):
        layer = cpu_formulations.CPU.conv(features, (3, 3), dtype=dtype, param_dtype=dtype,
                                          **fields)
        params = layer.init(jax.random.key(0), x.astype(dtype))

        def loss(params):
            return layer.apply(params, x.astype(dtype)).astype(jnp.float32).sum()

        return jax.jit(jax.grad(loss)).lower(params).as_text()

    assert "cv_jax_conv" in program(8)
    assert "cv_jax_conv" not in program(12)  # out channels not a multiple of 8
    assert "cv_jax_conv" not in program(8, dtype=jnp.bfloat16)
    assert "cv_jax_conv" not in program(8, kernel_dilation=(2, 2))
    assert "cv_jax_conv" not in program(8, feature_group_count=4)


def test_switched_off_or_without_a_compiler_xla_is_used(monkeypatch):
    monkeypatch.setenv("CV_JAX_CPU_KERNELS", "0")
    assert cpu_kernels.load.__wrapped__() is False
    monkeypatch.delenv("CV_JAX_CPU_KERNELS")
    monkeypatch.setattr(cpu_kernels, "_compiler", lambda: None)
    with pytest.warns(UserWarning, match="no C compiler .* install gcc"):
        assert cpu_kernels.load.__wrapped__() is False


def test_the_library_is_cached_per_source_and_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("CV_JAX_CACHE", str(tmp_path))
    compiler = cpu_kernels._compiler()
    path = cpu_kernels.library_path(compiler)
    assert path.startswith(str(tmp_path / "kernels")) and path.endswith(".so")
    assert cpu_kernels.build(compiler) == path and os.path.exists(path)
    built = os.stat(path).st_mtime_ns
    assert cpu_kernels.build(compiler) == path and os.stat(path).st_mtime_ns == built  # reused
    monkeypatch.setattr(cpu_kernels, "_cpu_features", lambda: "flags : sse2")
    assert cpu_kernels.library_path(compiler) != path  # another CPU: another library
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == [os.path.basename(path)]


def _has_avx512() -> bool:
    return "avx512f" in cpu_kernels._cpu_features().split()


@pytest.mark.skipif(not _has_avx512(), reason="the 16-float tiles need AVX-512; this CPU "
                    "runs the 8-float ones in the tests above")
def test_the_8_float_tiles_equal_xla_on_an_avx512_cpu(tmp_path):
    """The kernels' AVX2 build (8-float vectors, 12 accumulators), compiled on this AVX-512
    machine with -mno-avx512f, passes the same equality tests in a fresh process."""
    env = dict(os.environ, CV_JAX_KERNEL_FLAGS="-mno-avx512f", CV_JAX_CACHE=str(tmp_path))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          __file__, "-k", "equals_xla or same_value"],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # every selected test ran and passed (none skipped; none selected would exit 5)
    assert re.search(r"^\d+ passed, \d+ deselected in ", run.stdout, re.M), run.stdout[-3000:]
    (library,) = (tmp_path / "kernels").iterdir()  # and it has no 16-float (zmm) code
    assert b"zmm" not in subprocess.run(["objdump", "-d", str(library)], capture_output=True,
                                        check=True).stdout
