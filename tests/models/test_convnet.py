"""Tests for the configurable ConvNet (convnet, keras_cifar_cnn), LeNet-5 and the AlexNets."""

from __future__ import annotations

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from modelcheck import KEY, output_shape, param_count, train_step_check

import cv_jax.models.lenet  # noqa: F401  (registers lenet5; alexnet, convnet imported below)
from cv_jax.models import create_model, default_input_shape, model_fields
from cv_jax.models.alexnet import local_response_norm
from cv_jax.models.convnet import (
    ConvNet,
    ConvSpec,
    DropoutSpec,
    PoolSpec,
    keras_cifar_cnn,
    parse_layers,
)
from cv_jax.models.layers import InputTooSmall

NAMES = ("convnet", "keras_cifar_cnn", "lenet5", "alexnet", "alexnet_cifar")
TINY_CONVNET = {"layers": "conv:8,pool:max:2,dropout:0.1,conv:8:k5:s2:valid", "fc": "16"}


def abstract_variables(name: str, input_shape=(32, 32, 3), **kwargs) -> dict:
    model = create_model(name, num_classes=10, **kwargs)
    init = functools.partial(model.init, {"params": KEY}, jnp.zeros((1, *input_shape)), train=False)
    return jax.eval_shape(init)


def random_variables(name: str, input_shape, **kwargs) -> dict:
    """Variables of the right shapes drawn with numpy (no init to compile)."""
    rng = np.random.default_rng(0)
    shapes = abstract_variables(name, input_shape, **kwargs)
    return jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(np.float32), shapes)


def init_params(input_shape=(4, 4, 3), **kwargs) -> dict:
    model = create_model("convnet", num_classes=10, **kwargs)
    init = functools.partial(model.init, {"params": KEY}, jnp.zeros((1, *input_shape)), train=False)
    return jax.jit(init)()["params"]


# --- parameter counts -------------------------------------------------------------------------

# Each count is worked out by hand: conv k*k*C_in*C_out + C_out, dense n_in*n_out + n_out.
EXACT_COUNTS = [
    # Keras examples/cifar10_cnn.py: conv 3->32 896, 32->32 9,248, 32->64 18,496, 64->64 36,928;
    # maps 32 -> 30 (valid) -> 15 -> 13 (valid) -> 6, flatten 6*6*64 = 2,304;
    # dense 2,304*512 + 512 = 1,180,160, 512*10 + 10 = 5,130.  Total 1,250,858.
    ("keras_cifar_cnn", (32, 32, 3), 10, {}, 1_250_858),
    # LeCun et al. 1998 layout: C1 5*5*3*6 + 6 = 456, C3 5*5*6*16 + 16 = 2,416,
    # C5 5*5*16*120 + 120 = 48,120, F6 120*84 + 84 = 10,164, output 84*10 + 10 = 850.
    ("lenet5", (32, 32, 3), 10, {}, 62_006),
    ("lenet5", (32, 32, 1), 10, {}, 61_706),  # C1 is 5*5*1*6 + 6 = 156, 300 fewer
    ("lenet5", (28, 28, 1), 10, {"pad": 2}, 61_706),  # MNIST padded to the same 32x32 field
    # Krizhevsky et al. 2012 ("60 million"; Caffe bvlc_alexnet has the same 60,965,224):
    # conv1 11*11*3*96 + 96 = 34,944; conv2 5*5*48*256 + 256 = 307,456 (2 groups);
    # conv3 3*3*256*384 + 384 = 885,120; conv4 3*3*192*384 + 384 = 663,936;
    # conv5 3*3*192*256 + 256 = 442,624; fc6 6*6*256*4096 + 4096 = 37,752,832;
    # fc7 4096*4096 + 4096 = 16,781,312; fc8 4096*1000 + 1000 = 4,097,000.
    ("alexnet", (224, 224, 3), 1000, {}, 60_965_224),
    # groups=1 doubles the kernels of conv2, conv4, conv5: + 307,200 + 663,552 + 442,368.
    ("alexnet", (224, 224, 3), 1000, {"groups": 1}, 62_378_344),
    # Zhang et al. 2017, Table 1 (28x28 crops): conv 5*5*3*64 + 64 = 4,864, 5*5*64*64 + 64
    # = 102,464; 'same' pooling 28 -> 14 -> 7, fc1 7*7*64*384 + 384 = 1,204,608,
    # fc2 384*192 + 192 = 73,920, head 192*10 + 10 = 1,930.  Total 1,387,786.
    ("alexnet_cifar", (28, 28, 3), 10, {}, 1_387_786),
    # At 32x32: 8*8*64*384 + 384 = 1,573,248 for fc1, so 1,756,426.
    ("alexnet_cifar", (32, 32, 3), 10, {}, 1_756_426),
    # conv 5*5*3*8 + 8 = 608; 32 -> (32-5)//2+1 = 14 -> overlapping pool (14-3)//2+1 = 6;
    # head 6*6*8*10 + 10 = 2,890.  Total 3,498.
    ("convnet", (32, 32, 3), 10,
     {"layers": "conv:8:k5:s2:valid,pool:max:3:s2", "fc": "", "flatten": "flatten",
      "batch_norm": False}, 3_498),
    # Same with BN: the conv loses its 8 biases, BN adds 8 scales + 8 offsets: 3,506.
    ("convnet", (32, 32, 3), 10,
     {"layers": "conv:8:k5:s2:valid,pool:max:3:s2", "fc": "", "flatten": "flatten"}, 3_506),
    # 'same' padding keeps 32 -> 16 -> (16-3)//2+1 = 7: head 7*7*8*10 + 10 = 3,930; + 608.
    ("convnet", (32, 32, 3), 10,
     {"layers": "conv:8:k5:s2:same,pool:max:3:s2", "fc": "", "flatten": "flatten",
      "batch_norm": False}, 4_538),
    # Global max pool then fc "32,16": 608 + 8*32 + 32 + 32*16 + 16 + 16*10 + 10 = 1,594.
    ("convnet", (32, 32, 3), 10,
     {"layers": "conv:8:k5:s2:valid,pool:max:3:s2", "fc": "32,16", "flatten": "max",
      "batch_norm": False}, 1_594),
]


@pytest.mark.parametrize("name, input_shape, classes, kwargs, expected", EXACT_COUNTS)
def test_exact_param_counts(name, input_shape, classes, kwargs, expected) -> None:
    assert param_count(name, input_shape, classes, **kwargs) == expected


def test_alexnet_feature_map_is_6x6x256_at_224() -> None:
    # conv1 (224 + 2*2 - 11)//4 + 1 = 55 -> pool 27 -> conv2 27 -> pool 13 -> conv3-5 13 -> 6.
    params = abstract_variables("alexnet", (224, 224, 3))["params"]
    assert params["fc6"]["kernel"].shape == (6 * 6 * 256, 4096)
    assert params["conv2"]["kernel"].shape == (5, 5, 48, 256)
    assert params["conv3"]["kernel"].shape == (3, 3, 256, 384)


# --- shapes, registry and config fields -------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_output_shapes_at_registered_input(name, dtype) -> None:
    input_shape = default_input_shape(name)
    assert input_shape == ((224, 224, 3) if name == "alexnet" else (32, 32, 3))
    assert output_shape(name, input_shape, num_classes=7, batch=3, dtype=dtype) == (
        (3, 7), jnp.float32
    )


@pytest.mark.parametrize("name", NAMES)
def test_config_fields_are_simple_types(name) -> None:
    fields = model_fields(name)
    assert fields and "num_classes" not in fields and "dtype" not in fields
    for key, value in fields.items():
        assert isinstance(value, (str, int, float, bool)), (key, value)


def test_keras_factory_exposes_every_convnet_field() -> None:
    factory_fields = set(inspect.signature(keras_cifar_cnn).parameters)
    convnet_fields = set(inspect.signature(ConvNet).parameters) - {"parent", "name"}
    assert factory_fields == convnet_fields
    assert model_fields("keras_cifar_cnn")["kernel_init"] == "glorot_uniform"
    model = create_model("keras_cifar_cnn", num_classes=10, fc="64", batch_norm=True)
    assert (model.fc, model.batch_norm, model.flatten) == ("64", True, "flatten")


# --- one real training step ---------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {},  # batch norm, relu, he_normal, global average pooling
    {"batch_norm": False, "activation": "leaky_relu:0.1", "kernel_init": "glorot_uniform",
     "flatten": "max", "fc_dropout": 0.5},
])
def test_convnet_train_step(kwargs) -> None:
    loss, new_loss = train_step_check("convnet", (16, 16, 3), **{**TINY_CONVNET, **kwargs})
    assert new_loss < loss


@pytest.mark.parametrize("name, input_shape, kwargs", [
    # Small inputs keep the steps fast; keras: 16 -> 14 (valid) -> 7 -> 5 (valid) -> 2.
    ("keras_cifar_cnn", (16, 16, 3), {"fc": "32"}),
    ("lenet5", (32, 32, 3), {}),
    ("alexnet_cifar", (16, 16, 3), {}),
])
def test_named_models_train_step(name, input_shape, kwargs) -> None:
    loss, new_loss = train_step_check(name, input_shape, **kwargs)
    assert new_loss < loss


# --- layer spec parsing and errors --------------------------------------------------------------

def test_parse_layers() -> None:
    assert parse_layers(" conv:32 , conv:32:k5:s2:valid,pool:max:3:s2,dropout:0.25,pool:avg:2") == (
        ConvSpec(32, 3, 1, "SAME"),
        ConvSpec(32, 5, 2, "VALID"),
        PoolSpec("max", 3, 2),
        DropoutSpec(0.25),
        PoolSpec("avg", 2, 2),
    )
    assert parse_layers("") == ()


@pytest.mark.parametrize("field, value, token", [
    ("layers", "conv:32:k0", "k0"),
    ("layers", "conv:32,conv:x", "x"),
    ("layers", "conv", "conv"),
    ("layers", "conv:32:k3:k5", "k5"),
    ("layers", "conv:32:full", "full"),
    ("layers", "pool:min:2", "min"),
    ("layers", "pool:max:2:3", "3"),
    ("layers", "pool:max", "pool:max"),
    ("layers", "dropout:1.5", "1.5"),
    ("layers", "bn:32", "bn"),
    ("fc", "512,abc", "abc"),
    ("fc", "512,0", "0"),
    ("flatten", "mean", "mean"),
    ("activation", "relu:2", "relu:2"),
    ("kernel_init", "he_normal:fan_sideways", "he_normal:fan_sideways"),
    ("kernel_init", "gaussian", "gaussian"),
])
def test_spec_errors_name_field_and_token(field, value, token) -> None:
    with pytest.raises(ValueError) as info:
        create_model("convnet", num_classes=10, **{field: value})
    message = str(info.value)
    assert message.startswith(f"convnet field {field!r}")
    assert repr(token) in message
    if field in ("layers", "fc"):
        assert f"bad token {token!r} in" in message
    if field == "layers":  # the grammar is shown
        assert "conv:FILTERS[:kK][:sS][:same|:valid]" in message


# --- initialisers ---------------------------------------------------------------------------------

def test_normal_init_std() -> None:
    params = init_params(layers="conv:64,conv:256", kernel_init="normal:0.01", batch_norm=False)
    kernel = np.asarray(params["conv2"]["kernel"])  # 3*3*64*256 = 147,456 samples
    assert abs(kernel.std() - 0.01) < 0.0003 and abs(kernel.mean()) < 0.0003
    assert not np.any(params["conv2"]["bias"])  # biases start at zero


def test_he_normal_fan_in_std() -> None:
    params = init_params(layers="conv:64,conv:256", kernel_init="he_normal:fan_in", fc="")
    kernel = np.asarray(params["conv2"]["kernel"])
    expected = math.sqrt(2 / (3 * 3 * 64))  # He et al. 2015: Var = 2 / fan_in
    assert abs(kernel.std() / expected - 1) < 0.02
    # fan_out (3*3*256) would give half that std: the mode is really used.
    fan_out = init_params(layers="conv:64,conv:256", kernel_init="he_normal:fan_out", fc="")
    assert abs(np.asarray(fan_out["conv2"]["kernel"]).std() / (expected / 2) - 1) < 0.02


def test_uniform_init_bounds() -> None:
    params = init_params(layers="conv:64,conv:256", kernel_init="uniform:0.05", fc="64")
    for kernel in (params["conv2"]["kernel"], params["fc1"]["kernel"], params["head"]["kernel"]):
        kernel = np.asarray(kernel)
        assert np.abs(kernel).max() <= 0.05 and np.abs(kernel).max() > 0.045


# --- batch norm and dropout -----------------------------------------------------------------------

def test_batch_norm_switch_changes_variables() -> None:
    layers = {"layers": "conv:8,conv:8", "fc": ""}
    with_bn = abstract_variables("convnet", batch_norm=True, **layers)
    without = abstract_variables("convnet", batch_norm=False, **layers)
    assert set(with_bn) == {"params", "batch_stats"}
    assert set(with_bn["batch_stats"]) == {"bn1", "bn2"}
    assert set(with_bn["params"]["conv1"]) == {"kernel"}  # BN's offset replaces the bias
    assert set(without) == {"params"}
    assert set(without["params"]) == {"conv1", "conv2", "head"}
    assert set(without["params"]["conv1"]) == {"kernel", "bias"}


@pytest.mark.parametrize("kwargs", [
    {"layers": "conv:4,dropout:0.5", "fc": "", "flatten": "flatten"},  # a dropout layer
    {"layers": "conv:4", "fc": "16", "fc_dropout": 0.5},  # dropout after the hidden dense
])
def test_dropout_only_in_train_mode(kwargs) -> None:
    model = create_model("convnet", num_classes=10, batch_norm=False, **kwargs)
    x = np.random.default_rng(1).normal(size=(2, 4, 4, 3)).astype(np.float32)
    variables = random_variables("convnet", (4, 4, 3), batch_norm=False, **kwargs)

    @functools.partial(jax.jit, static_argnames="train")
    def logits(seed, train):
        rngs = {"dropout": jax.random.key(seed, impl="rbg")}
        return model.apply(variables, x, train=train, rngs=rngs)

    train = [np.asarray(logits(seed, True)) for seed in (0, 1)]
    evals = [np.asarray(logits(seed, False)) for seed in (0, 1)]
    assert not np.allclose(train[0], train[1])
    np.testing.assert_array_equal(evals[0], evals[1])
    assert not np.allclose(train[0], evals[0])


# --- AlexNet pieces and size errors -----------------------------------------------------------

def test_local_response_norm_matches_the_formula() -> None:
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 7)).astype(np.float32) * 10
    n, k, alpha, beta = 5, 2.0, 1e-3, 0.75
    expected = np.empty_like(x)
    for i in range(7):  # b_i = a_i / (k + alpha * sum_{j=max(0,i-2)}^{min(6,i+2)} a_j^2)^beta
        window = x[..., max(0, i - n // 2) : min(7, i + n // 2 + 1)]
        expected[..., i] = x[..., i] / (k + alpha * np.sum(window**2, axis=-1)) ** beta
    got = local_response_norm(jnp.asarray(x), size=n, k=k, alpha=alpha, beta=beta)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)


def test_alexnet_at_32x32_is_too_small() -> None:
    # conv1 (32 + 4 - 11)//4 + 1 = 7 -> pool1 3 -> conv2 3 -> pool2 1 -> conv3-5 1 -> pool5: none.
    with pytest.raises(InputTooSmall, match="pool5"):
        output_shape("alexnet", (32, 32, 3))


def test_small_inputs_fail_naming_the_layer() -> None:
    # LeNet-5 at 16x16: C1 12 -> S2 6 -> C3 2 -> S4 1, and C5's 5x5 window does not fit.
    with pytest.raises(InputTooSmall, match="C5"):
        output_shape("lenet5", (16, 16, 3))
    # 8 -> 4 -> 2 -> 1 -> the fourth pool has nothing left.
    with pytest.raises(InputTooSmall, match="pool4"):
        output_shape("convnet", (8, 8, 3), layers="conv:4,pool:max:2,pool:max:2,pool:avg:2,"
                     "pool:avg:2")


def test_lenet_pad_is_zeros_around_the_input_of_c1() -> None:
    x = np.random.default_rng(2).normal(size=(2, 28, 28, 1)).astype(np.float32)
    variables = random_variables("lenet5", (32, 32, 1))
    padded = create_model("lenet5", num_classes=10, pad=2).apply(variables, x, train=False)
    zeros_around = create_model("lenet5", num_classes=10).apply(
        variables, np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))), train=False)
    np.testing.assert_allclose(padded, zeros_around, rtol=1e-6, atol=1e-6)
    with pytest.raises(InputTooSmall, match="C5"):  # unpadded, 28x28 leaves C5 a 4x4 map
        output_shape("lenet5", (28, 28, 1))


def test_lenet_pool_and_activation_fields_are_used() -> None:
    x = np.random.default_rng(1).normal(size=(1, 32, 32, 1)).astype(np.float32)
    variables = random_variables("lenet5", (32, 32, 1))

    def logits(**kwargs):
        return np.asarray(create_model("lenet5", num_classes=10, **kwargs).apply(
            variables, x, train=False))

    default = logits()
    assert not np.allclose(default, logits(pool="max"))
    assert not np.allclose(default, logits(activation="relu"))
    np.testing.assert_allclose(default, logits(pool="avg", activation="tanh"))


def test_alexnet_groups_must_divide_the_widths() -> None:
    with pytest.raises(ValueError, match="groups"):
        create_model("alexnet", num_classes=10, groups=3)
    with pytest.raises(ValueError, match="pool"):
        create_model("lenet5", num_classes=10, pool="sum")
    with pytest.raises(ValueError, match="'pad' must be >= 0 pixels, got -1"):
        create_model("lenet5", num_classes=10, pad=-1)
