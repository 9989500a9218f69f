"""Tests for VGG, GoogLeNet and DenseNet: sizes, shapes, a train step, small-input errors and
(when torch is installed) agreement with torchvision's parameter names, shapes and outputs."""

from __future__ import annotations

import functools
import importlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from modelcheck import KEY, train_step_check

import cv_jax.models.densenet  # noqa: F401
import cv_jax.models.googlenet  # noqa: F401
import cv_jax.models.vgg  # noqa: F401
from cv_jax.models import create_model
from cv_jax.models.layers import PLAIN, InputTooSmall

IMAGENET = (224, 224, 3)
CIFAR = (32, 32, 3)

# torchvision docs ("num_params" of the IMAGENET1K_V1 weights; 1000 classes).
TORCHVISION_COUNTS = {
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
    "densenet121": 7_978_856,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
}
# CIFAR VGGs (10 classes): the ImageNet count minus torchvision's classifier
# (25088*4096 + 4096 + 4096*4096 + 4096 + 4096*1000 + 1000 = 123_642_856) plus 512*10 + 10;
# test_vgg_cifar_counts_follow_from_torchvision re-derives them.
TV_VGG_CLASSIFIER = 25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
CIFAR_COUNTS = {
    "vgg11_cifar": 9_225_610,
    "vgg11_bn_cifar": 9_231_114,
    "vgg13_cifar": 9_410_122,
    "vgg13_bn_cifar": 9_416_010,
    "vgg16_cifar": 14_719_818,
    "vgg16_bn_cifar": 14_728_266,
    "vgg19_cifar": 20_029_514,
    "vgg19_bn_cifar": 20_040_522,
    # Paper Table 2: DenseNet-BC (L=100, k=12) has 0.8M; see test_densenet_bc_100_12_count.
    "densenet_bc_100_12": 769_162,
    "densenet_cifar": 1_000_618,  # kuangliu's densenet_cifar; see test_densenet_cifar_count
    "googlenet_cifar": 5_871_914,  # see test_googlenet_table1
}
# GoogLeNet (1000 classes, no aux heads), checked against Table 1 in test_googlenet_table1.
GOOGLENET_BN = 7_005_832
GOOGLENET_NO_BN = 6_998_552
TORCHVISION_GOOGLENET = 6_624_904  # torchvision docs; its "5x5" branch is 3x3

# Table 1 of Szegedy et al. 2014, one Inception module per row:
# #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj (typed here again, not imported).
TABLE1 = [
    (64, 96, 128, 16, 32, 32),  # 3a
    (128, 128, 192, 32, 96, 64),  # 3b
    (192, 96, 208, 16, 48, 64),  # 4a
    (160, 112, 224, 24, 64, 64),  # 4b
    (128, 128, 256, 24, 64, 64),  # 4c
    (112, 144, 288, 32, 64, 64),  # 4d
    (256, 160, 320, 32, 128, 128),  # 4e
    (256, 160, 320, 32, 128, 128),  # 5a
    (384, 192, 384, 48, 128, 128),  # 5b
]


@functools.cache
def abstract(name: str, input_shape=CIFAR, num_classes: int = 10, **kwargs):
    """(variables, logits) shapes of eval-mode ``init_with_output``: one trace, nothing computed."""
    model = create_model(name, num_classes=num_classes, **kwargs)

    def run():
        logits, variables = model.init_with_output(
            {"params": KEY, "dropout": KEY}, jnp.zeros((2, *input_shape)), train=False
        )
        return variables, logits

    return jax.eval_shape(run)


def count(name: str, input_shape=CIFAR, num_classes: int = 10, **kwargs) -> int:
    variables, _ = abstract(name, input_shape, num_classes, **kwargs)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name", sorted(TORCHVISION_COUNTS))
def test_imagenet_models_match_torchvision_counts(name: str) -> None:
    assert count(name, IMAGENET, num_classes=1000) == TORCHVISION_COUNTS[name]
    _, logits = abstract(name, IMAGENET, num_classes=1000)
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32


@pytest.mark.parametrize("name", sorted(CIFAR_COUNTS))
def test_cifar_models_counts_and_shapes(name: str) -> None:
    assert count(name) == CIFAR_COUNTS[name]
    _, logits = abstract(name)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("vgg11_bn_cifar", {}),
        ("googlenet_cifar", {"aux_heads": True}),
        ("densenet_cifar", {"growth_rate": 4, "block_config": (2, 2), "num_init_features": 8}),
    ],
)
def test_bfloat16_compute_keeps_float32_params_and_logits(name: str, kwargs: dict) -> None:
    variables, logits = abstract(name, dtype=jnp.bfloat16, **kwargs)
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert logits.dtype == jnp.float32


def test_vgg_cifar_counts_follow_from_torchvision() -> None:
    for depth in (11, 13, 16, 19):
        for suffix in ("", "_bn"):
            imagenet = TORCHVISION_COUNTS[f"vgg{depth}{suffix}"]
            cifar = CIFAR_COUNTS[f"vgg{depth}{suffix}_cifar"]
            assert cifar == imagenet - TV_VGG_CLASSIFIER + 512 * 10 + 10


def test_vgg_names_follow_torchvision_indices() -> None:
    params = abstract("vgg16_bn", IMAGENET, num_classes=1000)[0]["params"]
    assert params["features_0"]["kernel"].shape == (3, 3, 3, 64)
    assert params["features_1"]["scale"].shape == (64,)  # BN right after its conv
    assert params["features_40"]["kernel"].shape == (3, 3, 512, 512)  # torchvision's last conv
    assert params["classifier_0"]["kernel"].shape == (25088, 4096)
    assert params["classifier_6"]["kernel"].shape == (4096, 1000)
    assert len(params) == 13 * 2 + 3


def test_googlenet_table1() -> None:
    """Our count is Table 1's channels exactly.

    Weights (no biases) per row from the channel columns: conv1 9,408; conv2+conv3 114,688;
    3a 163,328; 3b 388,096; 4a 375,552; 4b 448,512; 4c 509,440; 4d 604,672; 4e 867,328;
    5a 1,042,432; 5b 1,442,816; linear 1,024,000; total 6,990,272 (= 6.83M in units of 1024).
    Table 1's params column (K = 1024: 2.7K, 112K, 159K, 380K, 364K, 437K, 463K, 580K, 840K,
    1072K, 1388K, 1000K) sums to about 6.8M; its rows agree with the channel columns to within
    1% for conv2/3, 3a, 3b, 4b and the linear layer but not everywhere (4c: 497.5K from the
    channels vs 463K printed; 5a: 1018K vs 1072K; conv1: 9.2K vs 2.7K), so the printed column
    has slips and the channel columns are what we follow.
    """
    stem = 7 * 7 * 3 * 64 + 64 * 64 + 3 * 3 * 64 * 192
    weights, out_channels, in_channels = stem, 64 + 64 + 192, 192
    for c1, r3, c3, r5, c5, proj in TABLE1:
        weights += in_channels * (c1 + r3 + r5 + proj) + 9 * r3 * c3 + 25 * r5 * c5
        out_channels += c1 + r3 + c3 + r5 + c5 + proj
        in_channels = c1 + c3 + c5 + proj
    assert in_channels == 1024
    weights += 1024 * 1000
    assert weights == 6_990_272
    # + BN scale and bias per conv channel (no conv biases) + the linear bias ...
    assert count("googlenet", IMAGENET, 1000) == weights + 2 * out_channels + 1000 == GOOGLENET_BN
    # ... or + conv biases without BN.
    assert count("googlenet", IMAGENET, 1000, batch_norm=False) == weights + out_channels + 1000
    assert GOOGLENET_NO_BN == weights + out_channels + 1000
    # googlenet_cifar (BN, 10 classes): a 3x3 conv 192 replaces conv1..conv3.
    stem_bn = 2 * (64 + 64 + 192)
    cifar_stem = 3 * 3 * 3 * 192 + 2 * 192
    cifar = GOOGLENET_BN - stem - stem_bn + cifar_stem - 1024 * 1000 - 1000 + 1024 * 10 + 10
    assert CIFAR_COUNTS["googlenet_cifar"] == cifar


def test_googlenet_torchvision_count_with_3x3_branch() -> None:
    assert count("googlenet", IMAGENET, 1000, branch3_kernel=3) == TORCHVISION_GOOGLENET


def test_densenet_bc_100_12_count() -> None:
    """Independent count: 3 blocks of 16 bottleneck layers, k=12, 24 initial channels.

    A layer with c inputs has BN 2c + 1x1 conv 48c + BN 96 + 3x3 conv 9*48*12 = 50c + 5280.
    Block inputs 24, 108, 150 (transitions halve 216 and 300); per block sum over l of
    50(c0 + 12 l) + 5280 = 800 c0 + 50*12*120 + 16*5280 = 800 c0 + 156,480.
    Transitions: 2*216 + 216*108 and 2*300 + 300*150. Final BN 2*342, classifier 342*10 + 10.
    """
    blocks = sum(800 * c0 + 156_480 for c0 in (24, 108, 150))
    transitions = 2 * 216 + 216 * 108 + 2 * 300 + 300 * 150
    total = 3 * 3 * 3 * 24 + blocks + transitions + 2 * 342 + 342 * 10 + 10
    assert total == CIFAR_COUNTS["densenet_bc_100_12"] == count("densenet_bc_100_12")
    assert f"{total / 1e6:.1f}" == "0.8"  # Table 2


def test_densenet_cifar_count() -> None:
    """kuangliu's densenet_cifar = densenet_cifar with its defaults (k=12, (6, 12, 24, 16), 24)."""
    k, channels, total = 12, 24, 3 * 3 * 3 * 24
    for b, layers in enumerate((6, 12, 24, 16)):
        for _ in range(layers):
            total += 2 * channels + channels * 4 * k + 2 * 4 * k + 9 * 4 * k * k
            channels += k
        if b < 3:
            total += 2 * channels + channels * (channels // 2)
            channels //= 2
    total += 2 * channels + channels * 10 + 10
    assert total == CIFAR_COUNTS["densenet_cifar"]


# --- One real train step on small variants ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        # BN, adaptive 7x7 pool (1x1 -> 7x7 at 32x32 input), hidden FCs with dropout.
        ("vgg11_bn", {"widths": (8, 16, 16, 32, 32), "fc_widths": (32, 32)}),
        ("densenet_cifar", {"growth_rate": 4, "block_config": (2, 2, 2), "num_init_features": 8,
                            "drop_rate": 0.2}),
    ],
    ids=["vgg11_bn", "densenet_cifar"],
)
def test_train_step(name: str, kwargs: dict) -> None:
    loss, new_loss = train_step_check(name, **kwargs)
    assert new_loss < loss


def test_googlenet_aux_logits_sown_in_train_mode_only() -> None:
    model = create_model("googlenet_cifar", num_classes=10, aux_heads=True)
    x = jnp.zeros((2, *CIFAR))
    variables, _ = abstract("googlenet_cifar", aux_heads=True)
    assert set(variables) == {"params", "batch_stats"}  # no aux logits sown at init
    assert {"aux_head1", "aux_head2"} <= set(variables["params"])
    assert "aux_head1" not in abstract("googlenet_cifar")[0]["params"]

    def apply(variables: dict, train: bool):
        return model.apply(variables, x, train=train, rngs={"dropout": KEY},
                           mutable=["batch_stats", "aux_logits"])

    logits, state = jax.eval_shape(functools.partial(apply, train=True), variables)
    assert logits.shape == (2, 10)
    assert set(state["aux_logits"]) == {"aux1", "aux2"}
    for (aux,) in state["aux_logits"].values():
        assert aux.shape == (2, 10) and aux.dtype == jnp.float32
    _, state = jax.eval_shape(functools.partial(apply, train=False), variables)
    assert "aux_logits" not in state


@pytest.mark.slow
def test_googlenet_gradients_with_aux_heads() -> None:
    """Gradient of the main loss + 0.3 x the aux losses (as in the paper): logits finite, every
    parameter (aux heads included) gets a finite non-zero gradient.

    The slowest test here (compiling GoogLeNet's backward pass on CPU takes 15-40 s), so it skips
    modelcheck's second forward pass and LLVM's expensive passes. 80x80 is about the smallest
    input with aux heads on the ImageNet form (4a at 5x5)."""
    model = create_model("googlenet", num_classes=10, aux_heads=True)
    x = jax.random.normal(jax.random.key(1), (2, 80, 80, 3))
    labels = jnp.array([3, 7])

    def xent(logits: jax.Array) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def run():
        variables = model.init({"params": KEY, "dropout": KEY}, x, train=False)

        def loss_fn(params):
            logits, state = model.apply(
                {**variables, "params": params}, x, train=True, rngs={"dropout": KEY},
                mutable=["batch_stats", "aux_logits"],
            )
            aux = sum(xent(logits) for (logits,) in state["aux_logits"].values())
            return xent(logits) + 0.3 * aux, logits

        (_, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        # Per-array checks in one segment reduction each (one reduction per array would compile
        # ~350 more kernels).
        leaves = jax.tree.leaves(grads)
        flat = jnp.concatenate([g.ravel() for g in leaves])
        segments = np.repeat(np.arange(len(leaves)), [g.size for g in leaves])
        nonfinite = jax.ops.segment_max((~jnp.isfinite(flat)).astype(jnp.int32), segments,
                                        len(leaves))
        nonzero = jax.ops.segment_max((flat != 0).astype(jnp.int32), segments, len(leaves))
        return logits, nonfinite, nonzero

    compiled = jax.jit(run).lower().compile({"xla_llvm_disable_expensive_passes": True})
    logits, nonfinite, nonzero = jax.device_get(compiled())
    assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
    params = abstract("googlenet", (80, 80, 3), aux_heads=True)[0]["params"]  # same tree as grads
    assert {"aux_head1", "aux_head2"} <= set(params)
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    for path, bad, good in zip(paths, nonfinite, nonzero, strict=True):
        assert not bad, f"non-finite gradient at {path}"
        assert good, f"zero gradient at {path}"


# --- Too-small inputs fail while tracing, naming the layer -------------------------------------

@pytest.mark.parametrize(
    ("name", "size", "kwargs", "layer"),
    [
        ("googlenet", 30, {}, "maxpool4"),  # 31 is the smallest that works
        ("googlenet", 78, {"aux_heads": True}, "aux_head1/pool"),  # 4a is 4x4 < the 5x5 pool
        ("vgg16", 16, {}, "features_30"),  # the fifth max pool
        ("densenet121", 16, {}, "transition3/pool"),
        ("densenet_bc_100_12", 2, {}, "transition2/pool"),
    ],
)
def test_input_too_small(name: str, size: int, kwargs: dict, layer: str) -> None:
    with pytest.raises(InputTooSmall, match=f"'{layer}'"):
        abstract(name, (size, size, 3), **kwargs)


def test_googlenet_smallest_inputs() -> None:
    _, logits = abstract("googlenet", (31, 31, 3))  # 5a and 5b at 1x1
    assert logits.shape == (2, 10)
    _, logits = abstract("googlenet", (79, 79, 3), aux_heads=True)  # 4a at 5x5
    assert logits.shape == (2, 10)


# --- Agreement with torchvision (skipped without torch) ----------------------------------------

_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}


def torch_key(path: tuple[str, ...], prefix: str = "") -> str:
    """``('features_0', 'kernel')`` -> ``'features.0.weight'`` (``name_i`` -> ``name.i``)."""
    *modules, leaf = path
    modules = [re.sub(r"_(\d+)$", r".\1", m) for m in modules]
    return prefix + ".".join([*modules, _LEAF_NAMES[leaf]])


def densenet_key(path: tuple[str, ...]) -> str:
    return torch_key(path, "" if path[0] == "classifier" else "features.")


def googlenet_key(path: tuple[str, ...]) -> str:
    return torch_key(path).replace("aux_head", "aux")


def to_flax(tensor) -> np.ndarray:
    array = tensor.detach().cpu().numpy()
    return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T


def flax_shape(shape) -> tuple[int, ...]:
    """Shape of ``to_flax`` of a tensor of torch shape ``shape``."""
    shape = tuple(shape)
    return (*shape[2:], shape[1], shape[0]) if len(shape) == 4 else shape[::-1]


def flax_leaves(variables) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{path without the collection: shape} of the params and batch_stats."""
    return {
        tuple(k.key for k in path[1:]): leaf.shape
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables)
    }


def load_torch(abstract_variables, state_dict, key_fn):
    def convert(path, leaf):
        array = to_flax(state_dict[key_fn(tuple(k.key for k in path[1:]))])
        assert array.shape == leaf.shape, path
        return jnp.asarray(array)

    return jax.tree_util.tree_map_with_path(convert, abstract_variables)


@pytest.mark.parametrize(
    ("name", "kwargs", "key_fn"),
    [
        ("vgg16_bn", {}, torch_key),
        ("densenet121", {}, densenet_key),
        ("googlenet", {"branch3_kernel": 3, "aux_heads": True}, googlenet_key),
    ],
)
def test_names_and_shapes_match_torchvision(name: str, kwargs: dict, key_fn) -> None:
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        extra = {"init_weights": False} if name == "googlenet" else {}
        reference = getattr(torchvision.models, name)(**extra)
    expected = {
        k: flax_shape(v.shape)
        for k, v in reference.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    variables, _ = abstract(name, IMAGENET, 1000, **kwargs)
    ours = {key_fn(path): shape for path, shape in flax_leaves(variables).items()}
    assert ours == expected


def _randomize_bn(module, torch) -> None:
    generator = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)


def _torch_vgg(torch, torchvision):
    cfg = [8, "M", 16, "M", 16, 16, "M", 32, 32, "M", 32, 32, "M"]  # configuration A, thin
    model = torchvision.models.vgg.VGG(
        torchvision.models.vgg.make_layers(cfg, batch_norm=True), num_classes=10
    )
    nn = torch.nn
    model.classifier = nn.Sequential(nn.Linear(32 * 7 * 7, 24), nn.ReLU(), nn.Dropout(),
                                     nn.Linear(24, 24), nn.ReLU(), nn.Dropout(), nn.Linear(24, 10))
    return model, ("vgg11_bn", {"widths": (8, 16, 16, 32, 32), "fc_widths": (24, 24)})


def _torch_densenet(torch, torchvision):
    model = torchvision.models.DenseNet(growth_rate=4, block_config=(2, 3, 2),
                                        num_init_features=8, bn_size=2, num_classes=10)
    kwargs = {"growth_rate": 4, "block_config": (2, 3, 2), "num_init_features": 8, "bn_size": 2,
              "stem": "imagenet"}
    return model, ("densenet_cifar", kwargs)


@pytest.mark.parametrize(
    ("build", "key_fn", "size"),
    [(_torch_vgg, torch_key, 112), (_torch_densenet, densenet_key, 44)],
    ids=["vgg", "densenet"],
)
def test_outputs_match_torchvision(build, key_fn, size: int) -> None:
    """Same weights, same eval-mode logits: padding, pooling (ceil mode, adaptive), BN eps and
    the flatten order agree. The sizes make pools round down (VGG: 7 -> 3, then adaptive
    3 -> 7; DenseNet: 11 -> 5)."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference, (name, kwargs) = build(torch, torchvision)
    _randomize_bn(reference, torch)
    reference.eval()
    x = np.random.default_rng(0).standard_normal((2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()

    model = create_model(name, num_classes=10, **kwargs)
    variables, _ = abstract(name, (size, size, 3), 10, **kwargs)
    variables = load_torch(variables, reference.state_dict(), key_fn)
    logits = jax.jit(functools.partial(model.apply, train=False))(variables, x)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_googlenet_blocks_match_torchvision() -> None:
    """An Inception module (BN eps, padding, branch and concatenation order) and the
    ceil-mode max pools give torchvision's outputs (a whole GoogLeNet compiles too slowly)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    tv = importlib.import_module("torchvision.models.googlenet")  # the module, not the function
    from cv_jax.models import googlenet

    torch.manual_seed(0)
    reference = tv.Inception(12, 4, 4, 8, 2, 4, 4)  # its "5x5" branch is 3x3
    _randomize_bn(reference, torch)
    reference.eval()
    x = np.random.default_rng(0).standard_normal((2, 9, 9, 12)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    conv = functools.partial(googlenet.ConvBN, kernel_init=nn.initializers.lecun_normal())
    block = googlenet.Inception((4, 4, 8, 2, 4, 4), branch3_kernel=3, conv=conv)
    variables = jax.eval_shape(functools.partial(block.init, KEY, x, train=False))
    variables = load_torch(variables, reference.state_dict(), torch_key)
    out = jax.jit(functools.partial(block.apply, train=False))(variables, x)
    np.testing.assert_allclose(out, expected.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)

    pool = PLAIN.max_pool(3, strides=2, padding=googlenet.CEIL_MODE)
    torch_pool = torch.nn.MaxPool2d(3, stride=2, ceil_mode=True)
    for size in range(3, 12):
        x = np.random.default_rng(size).standard_normal((1, size, size, 1)).astype(np.float32)
        expected = torch_pool(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
        np.testing.assert_array_equal(pool.apply({}, x), expected.transpose(0, 2, 3, 1))
