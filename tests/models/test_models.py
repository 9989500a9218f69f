"""Tests for the model registry, CIFAR ResNets and the airbench net."""

from __future__ import annotations

import collections
import dataclasses
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from modelcheck import output_shape

from cv_jax.models import (
    create_model,
    data_dependent_init,
    default_input_shape,
    input_size_advice,
    model_fields,
    model_names,
    register,
)
from cv_jax.models.__main__ import format_layers, format_listing
from cv_jax.models.layers import (
    PLAIN,
    Conv,
    InputTooSmall,
    LayerImpl,
    MaxPool,
    activation,
    adaptive_avg_pool,
    batch_statistics,
    initializer,
)
from cv_jax.models.summary import summarize

NUM_CLASSES = 10
# The "rbg" PRNG compiles much faster than threefry on CPU; eager init compiles one sampler per
# parameter shape.
KEY = jax.random.key(0, impl="rbg")
SMALL_AIRBENCH = {"widths": (32, 64, 64)}
# Eager execution compiles each op shape once, which is cheap for the ResNets (all depths share
# their layer shapes); airbench's layers all differ, so compiling it whole with jit is faster.
JIT_IN_TESTS = frozenset({"airbench"})

# He et al. 2016 (arXiv:1512.03385), Table 6: #params of the CIFAR-10 ResNets (option A).
# Exact counts: conv kernels + BN scale/bias + dense kernel/bias.
PAPER_TABLE6 = {
    "resnet20": (269_722, "0.27"),
    "resnet32": (464_154, "0.46"),
    "resnet44": (658_586, "0.66"),
    "resnet56": (853_018, "0.85"),
    "resnet110": (1_727_962, "1.7"),
}
# widths (64, 256, 256): whiten 2*2*3*24 + 24, group convs 9*(24*64 + 64*64 + 64*256 + 3*256*256),
# BN 2*(2*64 + 4*256), head 256*10.
AIRBENCH_PARAMS = 1_972_792


def init(name: str, **kwargs) -> dict:
    model = create_model(name, num_classes=NUM_CLASSES, **kwargs)
    return model.init({"params": KEY}, jnp.zeros((1, 32, 32, 3)), train=False)


def abstract_init(name: str, **kwargs) -> dict:
    """Shapes and dtypes of ``init(name, **kwargs)`` without computing anything."""
    return jax.eval_shape(functools.partial(init, name, **kwargs))


def maybe_jit(name: str, fn):
    return jax.jit(fn) if name in JIT_IN_TESTS else fn


def model_kwargs(name: str) -> dict:
    return SMALL_AIRBENCH if name == "airbench" else {}


@functools.cache
def variables_for(name: str) -> dict:
    """Default-config variables (float32 params; shared by the float32 and bfloat16 models)."""
    return maybe_jit(name, functools.partial(init, name, **model_kwargs(name)))()


def num_params(variables: dict) -> int:
    return sum(x.size for x in jax.tree.leaves(variables["params"]))


def random_images(n: int, seed: int = 0) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (n, 32, 32, 3))


@pytest.mark.parametrize("name", sorted(PAPER_TABLE6))
def test_resnet_param_counts_match_paper(name: str) -> None:
    exact, paper = PAPER_TABLE6[name]
    count = num_params(abstract_init(name))
    assert count == exact
    decimals = len(paper.split(".")[1])
    assert f"{count / 1e6:.{decimals}f}" == paper
    assert num_params(abstract_init(name, shortcut="B")) > count


def test_airbench_param_count() -> None:
    variables = abstract_init("airbench")
    count = num_params(variables)
    print(f"airbench (64, 256, 256) params: {count}")
    assert count == AIRBENCH_PARAMS
    assert variables["params"]["whiten"]["kernel"].shape == (2, 2, 3, 24)


@pytest.mark.parametrize("name", model_names())
def test_every_model_computes_in_bf16_with_f32_params(name: str) -> None:
    """Traced only (nothing runs): the zoo's big ImageNet models at their design input."""
    shape = default_input_shape(name)
    model = create_model(name, num_classes=NUM_CLASSES, dtype=jnp.bfloat16)

    def forward():
        variables = model.init({"params": KEY, "dropout": KEY}, jnp.zeros((1, *shape)), train=False)
        return variables, model.apply(variables, jnp.zeros((2, *shape)), train=False)

    jaxpr, (variables, logits) = jax.make_jaxpr(forward, return_shape=True)()
    assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert logits.shape == (2, NUM_CLASSES) and logits.dtype == jnp.float32
    conv_dtypes = re.findall(r"(\w+)\[[\d,]*\] = conv_general_dilated", str(jaxpr))
    assert conv_dtypes and set(conv_dtypes) == {"bf16"}


@pytest.mark.parametrize("name, size, kwargs", [
    ("lenet5", 28, {"pad": 2}), ("convnet", 28, {}), ("keras_cifar_cnn", 28, {}),
    ("airbench", 28, SMALL_AIRBENCH), ("resnet20", 28, {}), ("alexnet_cifar", 32, {}),
    ("vgg11_bn_cifar", 32, {}), ("resnet18", 64, {})])
def test_models_take_one_channel_images(name: str, size: int, kwargs: dict) -> None:
    """Grey images (MNIST, Fashion-MNIST): the first layer's kernel takes one input channel
    (each family's first layer is built the same way, whatever its input)."""
    assert output_shape(name, (size, size, 1), **kwargs) == ((2, NUM_CLASSES), jnp.float32)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", ["resnet20", "airbench"])
def test_output_shape_and_dtype(name: str, dtype) -> None:
    model = create_model(name, num_classes=NUM_CLASSES, dtype=dtype, **model_kwargs(name))
    variables = variables_for(name)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))

    def forward(variables: dict, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits_train, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return model.apply(variables, x, train=False), logits_train

    for logits in maybe_jit(name, forward)(variables, random_images(2)):
        assert logits.shape == (2, NUM_CLASSES) and logits.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("name", ["resnet20", "airbench"])
def test_batchnorm_train_vs_eval(name: str) -> None:
    model = create_model(name, num_classes=NUM_CLASSES, **model_kwargs(name))
    variables = variables_for(name)
    x = random_images(2)
    x_other = x.at[1].set(random_images(1, seed=1)[0])

    train_fn = maybe_jit(name, functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    logits, updates = train_fn(variables, x)
    old, new = jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(updates["batch_stats"])
    assert len(old) == len(new) > 0
    assert all(not np.allclose(a, b) for a, b in zip(old, new, strict=True))
    # In train mode example 0's logits depend on example 1 through the batch statistics ...
    assert not np.allclose(logits[0], train_fn(variables, x_other)[0][0])

    # ... in eval mode the running averages are used, so they do not.
    eval_fn = maybe_jit(name, functools.partial(model.apply, train=False))
    np.testing.assert_array_equal(eval_fn(variables, x)[0], eval_fn(variables, x_other)[0])


def test_frozen_batch_norm_normalises_with_the_running_averages_in_train_mode() -> None:
    frozen = dataclasses.replace(PLAIN, frozen_batch_norm=True)
    model = create_model("resnet20", num_classes=NUM_CLASSES, layer_impl=frozen)
    variables = variables_for("resnet20")
    x = random_images(2)
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_array_equal(logits, model.apply(variables, x, train=False))
    same = jax.tree.map(np.array_equal, updates["batch_stats"], variables["batch_stats"])
    assert jax.tree.leaves(same) and all(jax.tree.leaves(same))


def test_airbench_partial_identity_init() -> None:
    params = variables_for("airbench")["params"]
    kernel = params["group1"]["conv1"]["kernel"]  # 24 -> 32 channels: first 24 outputs identity
    np.testing.assert_array_equal(kernel[1, 1, :, :24], np.eye(24))
    assert float(jnp.abs(kernel[:, :, :, :24]).sum()) == 24.0
    np.testing.assert_array_equal(params["group2"]["conv2"]["kernel"][1, 1], np.eye(64))


def synthetic_images(n: int, seed: int = 0) -> np.ndarray:
    """uint8 images with spatially and cross-channel correlated pixels plus pixel noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(n, 8, 8, 1)) + 0.5 * rng.normal(size=(n, 8, 8, 3))
    smooth = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)
    pixels = 128 + 40 * smooth + 15 * rng.normal(size=(n, 32, 32, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def test_whitening_data_init() -> None:
    images = synthetic_images(64)
    mean = images.mean(axis=(0, 1, 2)) / 255
    std = images.std(axis=(0, 1, 2)) / 255

    def normalize(x: np.ndarray) -> np.ndarray:
        return (x.astype(np.float32) / 255 - mean) / std

    variables = variables_for("airbench")
    before = variables["params"]["whiten"]["kernel"]
    whitened = data_dependent_init("airbench", variables, images, normalize)
    kernel = whitened["params"]["whiten"]["kernel"]
    assert kernel.shape == (2, 2, 3, 24) and kernel.dtype == jnp.float32
    assert variables["params"]["whiten"]["kernel"] is before  # input not mutated
    np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])

    # Invariant: the whitening conv maps the images' 2x2 patches to identity second moment.
    model = create_model("airbench", num_classes=NUM_CLASSES, **SMALL_AIRBENCH)
    capture = functools.partial(
        model.apply,
        train=False,
        capture_intermediates=lambda module, _: module.name == "whiten",
    )
    _, state = maybe_jit("airbench", capture)(whitened, jnp.asarray(normalize(images)))
    out = state["intermediates"]["whiten"]["__call__"][0] - whitened["params"]["whiten"]["bias"]
    assert out.shape == (64, 31, 31, 24)
    positive = np.asarray(out[..., :12], np.float64).reshape(-1, 12)
    moment = positive.T @ positive / len(positive)
    np.testing.assert_allclose(moment, np.eye(12), atol=1e-2)


def test_data_init_is_noop_without_data_init() -> None:
    variables = variables_for("resnet20")
    images = synthetic_images(4)
    assert data_dependent_init("resnet20", variables, images, lambda x: x / 255.0) is variables


def test_unknown_model_name_lists_registered_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet21'") as info:
        create_model("resnet21", num_classes=NUM_CLASSES)
    assert ", ".join(model_names()) in str(info.value)
    assert model_names() == sorted(model_names())
    assert {"airbench", "resnet20", "resnet110"} <= set(model_names())


def test_unknown_kwarg() -> None:
    with pytest.raises(ValueError, match="'resnet20'.*widths"):
        create_model("resnet20", num_classes=NUM_CLASSES, widths=(1, 2, 3))
    with pytest.raises(ValueError, match="'airbench'.*shortcut"):
        create_model("airbench", num_classes=NUM_CLASSES, shortcut="B")
    # A registered name's fixed fields can not be overridden.
    with pytest.raises(ValueError, match="depth"):
        create_model("resnet20", num_classes=NUM_CLASSES, depth=56)
    assert create_model("resnet20", num_classes=100, shortcut="B").shortcut == "B"


def test_duplicate_registration_rejected() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register("resnet20")(lambda **kwargs: None)


# --- Layer implementations --------------------------------------------------------------------


def recording_layer_impl(frozen_batch_norm: bool = False) -> tuple[LayerImpl, collections.Counter]:
    """A LayerImpl that computes as PLAIN and counts its convolutions, max pools and
    training-mode BatchNorms as a model is traced."""
    calls = collections.Counter()

    def convolution(*args, **kwargs):
        calls["conv"] += 1
        return jax.lax.conv_general_dilated(*args, **kwargs)

    def max_pooling(x, window, strides, padding):
        calls["max_pool"] += 1
        return nn.max_pool(x, window, strides, padding)

    def training_batch_norm(x, scale, bias, epsilon):
        calls["batch_norm"] += 1
        mean, var = batch_statistics(x)
        return (x - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias

    layer_impl = LayerImpl(convolution, max_pooling, training_batch_norm, frozen_batch_norm)
    return layer_impl, calls


# One case per model class and block; all of them traced only.
LAYER_IMPL_CASES = [
    ("airbench", {}),
    ("alexnet", {}),
    ("alexnet_cifar", {}),
    ("convnet", {}),
    ("keras_cifar_cnn", {"batch_norm": True}),
    ("lenet5", {"pool": "max"}),
    ("densenet_cifar", {"stem": "imagenet", "block_config": (1, 1)}),
    ("googlenet", {"aux_heads": True}),
    ("inception_v3", {"aux_logits": True}),
    ("preact_resnet18", {"width": 8}),
    ("resnet", {"block": "bottleneck", "stage_sizes": (1, 1), "width": 8}),
    ("resnet18_cifar", {"width": 8}),
    ("resnet20", {"shortcut": "B"}),
    ("vgg11_bn_cifar", {"widths": (8, 8, 16, 16, 16)}),
    ("wrn", {"depth": 10, "widen_factor": 1}),
]


@pytest.mark.parametrize("name, kwargs", LAYER_IMPL_CASES, ids=[c[0] for c in LAYER_IMPL_CASES])
def test_every_layer_of_a_model_uses_the_layer_impl_it_was_built_with(name, kwargs) -> None:
    """Each convolution, max pool and training-mode BatchNorm of the model runs through its
    ``layer_impl`` (a block that forgets to pass it on runs PLAIN's and fails this), and the
    variables are PLAIN's."""
    shape = default_input_shape(name)
    x = jnp.zeros((2, *shape))
    rngs = {"params": KEY, "dropout": KEY}
    plain = create_model(name, num_classes=NUM_CLASSES, **kwargs)
    variables = jax.eval_shape(lambda: plain.init(rngs, x[:1], train=False))

    def forward(model):
        return lambda v: model.apply(v, x, train=True, mutable=True, rngs={"dropout": KEY})

    params = jax.tree_util.tree_leaves_with_path(variables["params"])
    expected = {
        "conv": sum(path[-1].key == "kernel" and len(p.shape) == 4 for path, p in params),
        "batch_norm": sum(path[-1].key == "scale" for path, _ in params),
        "max_pool": str(jax.make_jaxpr(forward(plain))(variables)).count("reduce_window_max"),
    }
    assert expected["conv"] > 0
    for frozen in (False, True):
        layer_impl, calls = recording_layer_impl(frozen)
        model = create_model(name, num_classes=NUM_CLASSES, layer_impl=layer_impl, **kwargs)
        assert model.layer_impl is layer_impl
        own = jax.eval_shape(lambda model=model: model.init(rngs, x[:1], train=False))
        assert jax.tree.structure(own) == jax.tree.structure(variables)
        assert jax.tree.leaves(own) == jax.tree.leaves(variables)
        calls.clear()
        jax.eval_shape(forward(model), variables)
        assert dict(calls) == {k: v for k, v in expected.items() if v and not (
            frozen and k == "batch_norm")}


def test_layer_impl_is_chosen_by_the_run_not_the_config() -> None:
    for name in model_names():
        assert "layer_impl" not in model_fields(name)
    with pytest.raises(ValueError, match=r"accepted: bn_epsilon, bn_momentum, shortcut$"):
        create_model("resnet20", num_classes=NUM_CLASSES, widths=(1, 2, 3))


# --- Shared layers --------------------------------------------------------------------------


def test_adaptive_avg_pool_uses_pytorch_windows() -> None:
    x = jnp.arange(5.0).reshape(1, 5, 1, 1) * jnp.ones((1, 5, 2, 1))
    pooled = adaptive_avg_pool(x, (3, 1))
    # PyTorch windows for 5 -> 3: [0, 2), [1, 4), [3, 5).
    np.testing.assert_allclose(pooled[0, :, 0, 0], [0.5, 2.0, 3.5])
    # A smaller input is repeated: 1x1 -> 7x7 copies the value.
    np.testing.assert_array_equal(adaptive_avg_pool(jnp.ones((1, 1, 1, 2)), (7, 7)), 1.0)


def test_layer_too_small_input_names_the_layer() -> None:
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = Conv(4, (3, 3), padding="VALID", name="conv")(x)
            return MaxPool(3, strides=2, name="pool")(x)

    variables = jax.eval_shape(Net().init, KEY, jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(InputTooSmall, match=r"layer 'pool' .* 3x3 window .* gets a 2x2 input"):
        jax.eval_shape(Net().apply, variables, jnp.zeros((1, 4, 4, 3)))
    with pytest.raises(InputTooSmall, match=r"layer 'conv' .* gets a 2x2 input"):
        jax.eval_shape(Net().init, KEY, jnp.zeros((1, 2, 2, 3)))


def test_activation_and_initializer_specs() -> None:
    x = jnp.array([-2.0, 3.0])
    np.testing.assert_allclose(activation("leaky_relu:0.1")(x), [-0.2, 3.0])
    np.testing.assert_allclose(activation("relu")(x), [0.0, 3.0])
    with pytest.raises(ValueError, match="unknown activation 'rleu'; choose one of relu"):
        activation("rleu")
    with pytest.raises(ValueError, match="'relu' takes no argument"):
        activation("relu:2")
    kernel = initializer("uniform:0.05")(KEY, (3, 3, 64, 64))
    assert float(jnp.max(jnp.abs(kernel))) <= 0.05 and float(jnp.std(kernel)) > 0.025
    he = initializer("he_normal:fan_out")(KEY, (3, 3, 64, 256))
    np.testing.assert_allclose(float(jnp.std(he)), (2 / (9 * 256)) ** 0.5, rtol=0.03)
    for bad in ("he_normal:fan_sideways", "normal:-1", "normal", "gaussian"):
        with pytest.raises(ValueError, match="initializer"):
            initializer(bad)


# --- Summaries --------------------------------------------------------------------------------


def test_summary_counts_parameters_and_flops() -> None:
    summary = summarize("resnet20", num_classes=10, per_layer=True)
    assert summary.params == PAPER_TABLE6["resnet20"][0]
    assert sum(row.params for row in summary.layers) == summary.params
    rows = {row.path: row for row in summary.layers}
    stem = rows["stem_conv"]
    assert (stem.kind, stem.output_shape, stem.params) == ("Conv", (1, 32, 32, 16), 3 * 3 * 3 * 16)
    # XLA counts only taps inside the image: per axis 32 * 3 - 2 = 94 of them (padding 1), and a
    # multiply-add is 2 FLOPs.
    assert stem.flops == 2 * 94**2 * 3 * 16
    assert rows["head"].flops == 2 * 64 * 10 + 10  # matmul plus bias
    assert 0 < summary.other_flops < 0.01 * summary.flops  # activations and adds are cheap
    assert list(rows)[-1] == "head"
    table = format_layers(summary)
    assert "stage3_block2/conv2" in table and "269,722" in table


def test_input_size_advice() -> None:
    assert input_size_advice("resnet20", (32, 32)) is None
    assert input_size_advice("resnet18", (224, 224)) is None
    advice = input_size_advice("resnet18", (32, 32))
    assert "designed for 224x224" in advice and "'resnet18_cifar'" in advice
    assert "_cifar" not in input_size_advice("densenet121", (32, 32))  # there is no such form


def test_listing_format() -> None:
    assert len(model_names()) >= 20
    summaries = [summarize(name, num_classes=10) for name in ("lenet5", "resnet20")]
    lines = format_listing(summaries).splitlines()
    assert lines[0].split() == ["model", "input", "classes", "params", "GFLOPs"]
    assert lines[1].split()[:4] == ["lenet5", "32x32x3", "10", "62,006"]
    assert float(lines[2].split()[4]) == round(summaries[1].flops / 1e9, 4)
