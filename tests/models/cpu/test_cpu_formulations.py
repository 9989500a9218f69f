"""The CPU formulations (``formulations.CPU``, which a run trains with under
config.training.cpu_formulations): materialised convolution inputs, cv_jax's convolution
kernels, the max-pool gradient by shifted comparisons and BatchNorm's written-out gradient give
the same values and the same training as plain layers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config as tiny_run_config

from cv_jax import models
from cv_jax.config import ConfigError, validate
from cv_jax.models.cpu import formulations as cpu_formulations
from cv_jax.models.cpu import kernels as cpu_kernels
from cv_jax.models.layers import PLAIN
from cv_jax.tools import bench
from cv_jax.training import losses, runs, setup, sharding, train
from cv_jax.training.plan import Plan

SPECIAL = [0.0, -0.0, 1.5e-38, -3.5, 6.5e4, np.inf, -np.inf, np.nan]


def bits(x) -> np.ndarray:
    x = np.asarray(x)
    return x.view(f"uint{8 * x.itemsize}")


def test_materialize_returns_its_input_and_gradient_bit_for_bit():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=56), SPECIAL]).astype(np.float32).reshape(8, 8)
    cotangent = np.concatenate([rng.normal(size=60), SPECIAL[:4]]).astype(np.float32)
    y, vjp = jax.vjp(jax.jit(cpu_formulations.materialize), jnp.asarray(x))
    np.testing.assert_array_equal(bits(y), bits(x))  # -0.0, inf and nan included
    np.testing.assert_array_equal(bits(vjp(jnp.asarray(cotangent.reshape(8, 8)))[0]),
                                  bits(cotangent.reshape(8, 8)))
    for dtype in (jnp.bfloat16, jnp.float16):
        low = jnp.asarray(x, dtype)
        np.testing.assert_array_equal(bits(jax.jit(cpu_formulations.materialize)(low)), bits(low))
    # Subnormal numbers: XLA:CPU flushes them to zero in every arithmetic op, ReLU included.
    subnormal = jnp.float32(1e-38)
    flushed = jax.jit(cpu_formulations.materialize)(subnormal)
    assert flushed == jax.jit(jax.nn.relu)(subnormal) == 0.0
    integers = jnp.arange(6)
    assert cpu_formulations.materialize(integers) is integers


def test_the_division_survives_xla_optimisation():
    """If XLA ever folds ``x / 1`` away, materialisation silently stops working: this fails."""
    compiled = jax.jit(cpu_formulations.materialize).lower(jnp.ones((4, 4))).compile().as_text()
    assert "divide(" in compiled


def tiny_config(formulations: str, model: str = "resnet20"):
    config = bench.sgd_config(model, batch_size=8, dtype="float32")
    config.training.cpu_formulations = formulations
    return config


def primitives(config) -> list[str]:
    """The primitives of resnet20's forward pass, built with the layers ``config`` trains with."""
    model = models.create_model("resnet20", num_classes=10,
                                layer_impl=runs.training_layers(config))
    x = jnp.zeros((2, 8, 8, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, train=False))(variables)
    return [str(eqn.primitive) for eqn in jaxpr.jaxpr.eqns]


def test_every_convolution_runs_on_the_kernels_only_when_switched_on():
    on = primitives(tiny_config("on"))
    off = primitives(tiny_config("off"))
    convolutions = off.count("conv_general_dilated")
    assert convolutions == 19  # stem + 9 blocks x 2
    # with the CPU layers each one is a custom-gradient convolution on cv_jax's kernels
    assert "conv_general_dilated" not in on and on.count("custom_vjp_call") == convolutions
    assert "optimization_barrier" not in on and "optimization_barrier" not in off


def test_without_the_kernels_every_convolution_input_is_materialised(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "load", lambda: False)  # e.g. no C compiler
    on = primitives(tiny_config("on"))
    off = primitives(tiny_config("off"))
    convolutions = on.count("conv_general_dilated")
    assert convolutions == 19 == off.count("conv_general_dilated")
    assert on.count("optimization_barrier") == convolutions
    assert "optimization_barrier" not in off
    assert on.count("div") == off.count("div") + convolutions


def test_auto_means_on_for_the_cpu_backend():
    assert jax.default_backend() == "cpu"
    assert runs.uses_cpu_formulations(tiny_config("auto"))
    assert runs.uses_cpu_formulations(tiny_config("on"))
    assert not runs.uses_cpu_formulations(tiny_config("off"))
    with pytest.raises(ConfigError,
                       match=r"config.training.cpu_formulations='yes' is invalid: use "
                             r"'auto' \(on when training on a CPU\), 'on' or 'off'"):
        validate(tiny_config("yes"))


def train_one_step(formulations: str, model: str, image_size: int, **model_fields):
    config = tiny_config(formulations, model)
    config.model.update(model_fields)
    mesh = sharding.make_mesh(config.training.num_devices)
    data = bench.synthetic_train_set(16, (image_size, image_size, 3))
    plan = Plan.from_config(config, len(data))
    _, tx, settings = setup.optimizer_and_settings(config, data, plan)
    assert runs.training_layers(config) == (cpu_formulations.CPU if formulations == "on"
                                            else PLAIN)
    state = setup.build_state(config, data, settings, tx, mesh)
    initial = jax.tree.map(np.asarray, state.params)
    images, labels, permute = setup.device_train_set(data, config, mesh)
    step = setup.make_train_step(settings, 8, mesh)
    permutation = permute(0)
    program = step.lower(state, images, labels, permutation, 0).as_text()
    assert ("cv_jax_conv" in program) == (formulations == "on")
    state, metrics = step(state, images, labels, permutation, 0)
    return initial, state, metrics


@pytest.mark.parametrize("model, image_size, fields", [
    ("resnet20", 8, {}),  # residual blocks
    ("airbench", 16, {"widths": (8, 16, 16)}),  # max pools too
])
def test_training_with_cpu_formulations_equals_the_default(model, image_size, fields):
    initial, on, on_metrics = train_one_step("on", model, image_size, **fields)
    _, off, off_metrics = train_one_step("off", model, image_size, **fields)
    # Same operations; fusion boundaries and the kernels' summation order differ, which
    # changes float rounding. One step: these tiny nets at lr 0.1 diverge within a few steps,
    # and a diverging run magnifies rounding differences without bound.
    for a, b in zip(jax.tree.leaves((on.params, on.batch_stats)),
                    jax.tree.leaves((off.params, off.batch_stats)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(on_metrics["loss"]), float(off_metrics["loss"]), rtol=1e-6)
    kernels = zip(jax.tree.leaves(initial), jax.tree.leaves(on.params), strict=True)
    assert all(not np.allclose(a, b) for a, b in kernels)  # every parameter trained


POOLS = [((2, 2), (2, 2), "VALID"), ((3, 3), (2, 2), ((1, 1), (1, 1))), ((3, 3), (2, 2), "SAME"),
         ((3, 3), (1, 1), ((1, 1), (1, 1))), ((3, 3), (2, 2), ((0, 1), (0, 1))),
         ((2, 3), (1, 2), "VALID")]


@pytest.mark.parametrize("window, strides, padding", POOLS)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_gradient_equals_select_and_scatter(window, strides, padding, ties):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 10, 3)).astype(np.float32)
    if ties:  # many equal maxima: each window's gradient must go to its first one
        x = np.round(x)
    default = lambda x: nn.max_pool(x, window, strides, padding)  # noqa: E731

    def shifted(x):
        return cpu_formulations.max_pool(x, window, strides, padding)

    y, default_vjp = jax.vjp(default, jnp.asarray(x))
    y_shifted, shifted_vjp = jax.vjp(shifted, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y_shifted), np.asarray(y))
    g = jnp.asarray(rng.normal(size=y.shape).astype(np.float32))
    expected, got = np.asarray(default_vjp(g)[0]), np.asarray(shifted_vjp(g)[0])
    # Overlapping windows add their contributions in another order: rounding only.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got != 0, expected != 0)  # the same inputs receive gradient
    if ties and window == strides:
        assert (got != 0).sum() == y.size  # one input per window, not every tied one


def pool_gradient_jaxpr(layer_impl) -> str:
    """The jaxpr of the gradient of a 2x2 max pool built with ``layer_impl``."""
    pool = layer_impl.max_pool(2)

    def pool_sum(x):
        return pool.apply({}, x).sum()
    return str(jax.make_jaxpr(jax.grad(pool_sum))(jnp.ones((1, 4, 4, 1))))


def test_max_pool_uses_the_shifted_gradient_only_with_the_cpu_layers():
    assert "select_and_scatter_add" in pool_gradient_jaxpr(PLAIN)
    jaxpr = pool_gradient_jaxpr(cpu_formulations.CPU)
    assert "select_and_scatter_add" not in jaxpr
    assert jaxpr.count(" = eq ") == 4  # one comparison per position of the 2x2 window


def batch_norm_loss(x, weights, params, stats, formulations: bool):
    """sum(relu(BatchNorm(x)) * weights) in training mode, and the updated running statistics."""
    bn = (cpu_formulations.CPU if formulations else PLAIN).batch_norm(True, name="bn")
    y, updates = bn.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
    return jnp.sum(jax.nn.relu(y) * weights), (y, updates["batch_stats"])


def test_batch_norm_equals_flax_in_value_gradient_and_running_statistics():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(1.5, 3.0, (8, 5, 5, 12)), jnp.float32).at[..., 3].set(2.0)
    weights = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    params = {"scale": jnp.linspace(0.5, 2.0, 12), "bias": jnp.linspace(-1.0, 1.0, 12)}
    stats = {"mean": jnp.full(12, 0.25), "var": jnp.full(12, 2.0)}
    grad = jax.jit(jax.value_and_grad(batch_norm_loss, argnums=(0, 2), has_aux=True),
                   static_argnums=4)
    (loss, (y, new_stats)), (dx, dparams) = grad(x, weights, params, stats, True)
    (loss_ref, (y_ref, stats_ref)), (dx_ref, dparams_ref) = grad(x, weights, params, stats,
                                                                 False)
    np.testing.assert_array_equal(y, y_ref)  # the same expression, bit for bit
    assert loss == loss_ref
    for key in ("mean", "var"):
        np.testing.assert_array_equal(new_stats[key], stats_ref[key])
    assert float(jnp.abs(dx).max()) > 0.1
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dparams["bias"], dparams_ref["bias"], rtol=1e-6, atol=1e-6)
    # d scale = inv * (sum(g * x) - mean * sum(g)): float32 cancellation at mean / std = 0.5
    np.testing.assert_allclose(dparams["scale"], dparams_ref["scale"], rtol=1e-4, atol=1e-5)


def batch_norm_jaxpr(x, train: bool = True, formulations: bool = True) -> str:
    bn = (cpu_formulations.CPU if formulations else PLAIN).batch_norm(train, name="bn")
    variables = bn.init(jax.random.key(0), x)

    def loss(x):
        y = bn.apply(variables, x, mutable=["batch_stats"])[0]
        return jnp.sum(y)

    return str(jax.make_jaxpr(loss)(x))


def test_batch_norm_uses_its_written_out_gradient_only_where_it_applies():
    x = jnp.ones((2, 3, 3, 8), jnp.float32)
    assert "custom_vjp_call" in batch_norm_jaxpr(x)
    assert "custom_vjp_call" not in batch_norm_jaxpr(x, formulations=False)
    assert "custom_vjp_call" not in batch_norm_jaxpr(x, train=False)  # running averages
    assert "custom_vjp_call" not in batch_norm_jaxpr(x.astype(jnp.bfloat16))


# airbench: the whitening stem, max pools, GELU; resnet20: residual blocks, strided
# convolutions; convnet: MaxPool layers. (name, image size, fields, input channels)
MODELS = [("airbench", 16, {"widths": (8, 16, 16)}, 3), ("resnet20", 8, {}, 3),
          ("convnet", 16, {}, 3), ("convnet", 12, {}, 1)]


def loss_and_gradients(name: str, image_size: int, fields: dict, layer_impl, channels: int = 3):
    """Training-mode cross-entropy of ``name`` built with ``layer_impl`` on a fixed batch of
    ``channels``-channel images, with its gradient, its BatchNorm statistics and its program,
    at PLAIN's initial variables."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, image_size, image_size, channels)), jnp.float32)
    labels = jnp.arange(8) % 10
    plain = models.create_model(name, num_classes=10, **fields)
    variables = jax.jit(lambda: plain.init(jax.random.key(0), x[:1], train=False))()
    model = models.create_model(name, num_classes=10, layer_impl=layer_impl, **fields)

    def loss(params):
        logits, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                      x, train=True, mutable=["batch_stats"])
        return losses.cross_entropy(logits, labels).mean(), updates["batch_stats"]

    value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
    program = value_and_grad.lower(variables["params"]).as_text()
    (value, stats), grads = value_and_grad(variables["params"])
    return value, grads, stats, program


@pytest.mark.parametrize("name, image_size, fields, channels", MODELS,
                         ids=[m[0] + ("-grey" if m[3] == 1 else "") for m in MODELS])
def test_a_model_built_with_the_cpu_layers_has_the_plain_loss_and_gradients(name, image_size,
                                                                             fields, channels):
    value, grads, stats, program = loss_and_gradients(name, image_size, fields,
                                                      cpu_formulations.CPU, channels)
    value0, grads0, stats0, program0 = loss_and_gradients(name, image_size, fields, PLAIN,
                                                          channels)
    assert "cv_jax_conv" in program and "cv_jax_conv" not in program0
    assert "select_and_scatter" not in program
    assert ("select_and_scatter" in program0) == (name != "resnet20")  # max pools
    # The same operations; the kernels' summation order and fusion change float32 rounding.
    np.testing.assert_allclose(value, value0, rtol=1e-6)
    assert jax.tree.structure(grads) == jax.tree.structure(grads0)
    for g, g0 in zip(jax.tree.leaves(grads), jax.tree.leaves(grads0), strict=True):
        np.testing.assert_allclose(g, g0, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(g0))))
    for s, s0 in zip(jax.tree.leaves(stats), jax.tree.leaves(stats0), strict=True):
        np.testing.assert_allclose(s, s0, rtol=1e-5, atol=1e-6)


def test_a_run_trains_alike_with_cpu_formulations_on_and_off(tiny_folder, cache_dir, tmp_path):
    """A few steps of the smoke recipe's run through ``train_and_evaluate``: CPU formulations
    'on' (the CPU default) and 'off' (the layers a GPU trains with). 5 steps: Lookahead's first
    sync is the end of the run."""
    results, params = {}, {}
    for choice in ("on", "off"):
        config = tiny_run_config(tiny_folder, cache_dir, num_steps=5)
        config.training.cpu_formulations = choice
        workdir = str(tmp_path / choice)
        results[choice] = train.train_and_evaluate(config, workdir)
        params[choice] = jax.device_get(runs.load_run(workdir).state.params)
    leaves, leaves0 = jax.tree.leaves(params["on"]), jax.tree.leaves(params["off"])
    assert jax.tree.structure(params["on"]) == jax.tree.structure(params["off"])
    for a, b in zip(leaves, leaves0, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not all(np.array_equal(a, b) for a, b in zip(leaves, leaves0, strict=True))  # 2 paths
    assert results["on"]["steps"] == results["off"]["steps"] == 5
    np.testing.assert_allclose(results["on"]["test_loss"], results["off"]["test_loss"], rtol=1e-5)
