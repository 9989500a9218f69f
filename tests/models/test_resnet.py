"""Tests for the ImageNet/CIFAR ResNets, the pre-activation ResNet-18 and the wide ResNets."""

from __future__ import annotations

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from modelcheck import KEY, output_shape, param_count, train_step_check

import cv_jax.models as models
import cv_jax.models.preact_resnet  # noqa: F401
import cv_jax.models.resnet  # noqa: F401
import cv_jax.models.wide_resnet  # noqa: F401
from cv_jax.models import create_model, default_input_shape, model_fields, register, registry
from cv_jax.models.preact_resnet import PreActBlock, PreActResNet
from cv_jax.models.resnet import ResNet
from cv_jax.models.wide_resnet import WideResNet

IMAGENET = (224, 224, 3)
CIFAR = (32, 32, 3)

# (name, classes) -> exact number of trainable parameters.
PARAM_COUNTS = {
    # torchvision.models.resnet{18,34,50,101,152}() at 1000 classes (their docs list the same).
    ("resnet18", 1000): 11_689_512,
    ("resnet34", 1000): 21_797_672,
    ("resnet50", 1000): 25_557_032,
    ("resnet101", 1000): 44_549_160,
    ("resnet152", 1000): 60_192_808,
    # kuangliu/pytorch-cifar models/resnet.py ResNet18/34/50/101/152() at 10 classes: torchvision
    # minus the 7x7 stem conv (9,408) plus a 3x3 one (1,728), and a 10-class fc.
    ("resnet18_cifar", 10): 11_173_962,
    ("resnet34_cifar", 10): 21_282_122,
    ("resnet50_cifar", 10): 23_520_842,
    ("resnet101_cifar", 10): 42_512_970,
    ("resnet152_cifar", 10): 58_156_618,
    # facebookresearch/mixup-cifar10 models/resnet.py ResNet18() (PreActBlock, [2, 2, 2, 2]).
    ("preact_resnet18", 10): 11_171_274,
    # WRN-28-10: conv1 3*16*9 = 432;
    #   group1: 16->160: bn 32 + 23,040 + bn 320 + 230,400 + 1x1 2,560 = 256,352,
    #           3 x (320 + 230,400 + 320 + 230,400) = 1,384,320;
    #   group2: 160->320: 320 + 460,800 + 640 + 921,600 + 51,200 = 1,434,560,
    #           3 x (640 + 921,600 + 640 + 921,600) = 5,533,440;
    #   group3: 320->640: 640 + 1,843,200 + 1,280 + 3,686,400 + 204,800 = 5,736,320,
    #           3 x (1,280 + 3,686,400 + 1,280 + 3,686,400) = 22,126,080;
    #   final BN 1,280; fc 640*10 + 10 = 6,410.  Sum: 36,479,194 (xternalz/WideResNet-pytorch).
    ("wrn28_10", 10): 36_479_194,
    # WRN-16-8: 432; group1 16->128: 168,224 + 295,424; group2: 918,272 + 1,180,672;
    #   group3: 3,671,552 + 4,720,640; BN 1,024; fc 5,130.  Sum: 10,961,370.
    ("wrn16_8", 10): 10_961_370,
}
# Zagoruyko & Komodakis 2016 (arXiv:1605.07146), CIFAR results tables, in millions.
WRN_PAPER = {"wrn28_10": "36.5", "wrn16_8": "11.0"}


def input_shape(name: str) -> tuple[int, int, int]:
    return CIFAR if "_cifar" in name or "wrn" in name or "preact" in name else IMAGENET


@functools.cache
def abstract_forward(name: str, classes: int) -> tuple[int, jax.ShapeDtypeStruct]:
    """Parameter count and eval-mode logits of ``name`` on a batch of 3, from shapes only.

    modelcheck's ``param_count`` and ``output_shape`` in one trace: tracing the deep models is
    what costs here, and this traces each once.
    """
    model = create_model(name, num_classes=classes)

    def forward():
        x = jnp.zeros((3, *input_shape(name)))
        variables = model.init({"params": KEY}, x[:1], train=False)
        return variables["params"], model.apply(variables, x, train=False)

    params, logits = jax.eval_shape(forward)
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)), logits


@pytest.mark.parametrize(("name", "classes"), sorted(PARAM_COUNTS))
def test_param_counts_and_output_shapes(name: str, classes: int) -> None:
    count, logits = abstract_forward(name, classes)
    assert count == PARAM_COUNTS[name, classes]
    if name in WRN_PAPER:
        assert f"{count / 1e6:.1f}" == WRN_PAPER[name]
    assert (logits.shape, logits.dtype) == ((3, classes), jnp.float32)


def test_modelcheck_helpers_agree() -> None:
    assert param_count("resnet18_cifar") == PARAM_COUNTS["resnet18_cifar", 10]
    assert output_shape("resnet18", IMAGENET) == ((2, 10), jnp.float32)


def test_preact_variants_count() -> None:
    # kuangliu/pytorch-cifar models/preact_resnet.py PreActResNet18(): no stem BN (64*2 fewer).
    assert param_count("preact_resnet18", stem_bn=False, preact_shortcut=False) == 11_171_146


def test_registry_and_config_fields() -> None:
    names = {name for name, _ in PARAM_COUNTS} | {"wrn"}
    assert names <= set(models.model_names())
    for name in names:
        assert default_input_shape(name) == input_shape(name)
    assert model_fields("resnet50") == {"width": 64, "zero_init_residual": False}
    assert model_fields("preact_resnet18") == {
        "width": 64, "stem_bn": True, "preact_shortcut": True,
    }
    assert model_fields("wrn") == {"depth": 28, "widen_factor": 10, "dropout": 0.0}
    assert model_fields("wrn16_8") == {"dropout": 0.0}


def test_bfloat16_gives_float32_logits() -> None:
    assert output_shape("resnet18_cifar", dtype=jnp.bfloat16) == ((2, 10), jnp.float32)


def _torchvision_key(path: tuple) -> str:
    """The torchvision state-dict key of a flax variable path (the mapping in resnet.py)."""
    *modules, leaf = (k.key for k in path)
    renames = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
    modules = [renames.get(m, m.replace("_", ".")) for m in modules]  # layer1_0 -> layer1.0
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
            "var": "running_var"}[leaf]
    return ".".join([*modules, leaf])


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 4:  # HWIO -> OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    return shape[::-1]  # fc [in, out] -> [out, in]; vectors unchanged


@pytest.mark.parametrize(("name", "num_params", "num_stats"), [
    # torchvision: len(named_parameters()), len(named_buffers()) minus num_batches_tracked.
    ("resnet18", 62, 40),
    ("resnet50", 161, 106),
])
def test_names_map_to_torchvision(name: str, num_params: int, num_stats: int) -> None:
    model = create_model(name, num_classes=1000)
    variables = jax.eval_shape(
        lambda: model.init({"params": KEY}, jnp.zeros((1, *IMAGENET)), train=False)
    )
    params = {_torchvision_key(p): _torch_shape(x.shape)
              for p, x in jax.tree_util.tree_leaves_with_path(variables["params"])}
    stats = {_torchvision_key(p) for p, _ in
             jax.tree_util.tree_leaves_with_path(variables["batch_stats"])}
    assert (len(params), len(stats)) == (num_params, num_stats)
    assert params["conv1.weight"] == (64, 3, 7, 7)
    assert params["layer2.0.downsample.0.weight"] == (
        (128, 64, 1, 1) if name == "resnet18" else (512, 256, 1, 1))
    assert "layer2.0.downsample.1.running_var" in stats
    if name == "resnet50":
        assert params["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
        assert params["layer4.0.conv2.weight"] == (512, 512, 3, 3)
        assert params["layer4.2.bn3.weight"] == (2048,)
        assert params["fc.weight"] == (1000, 2048)
    else:
        assert "layer1.0.downsample.0.weight" not in params
        assert params["layer4.1.bn2.bias"] == (512,)
        assert params["fc.weight"] == (1000, 512)


def test_bottleneck_strides_in_3x3_conv() -> None:
    model = create_model("resnet50", num_classes=10)

    def forward():
        x = jnp.zeros((1, *IMAGENET))
        variables = model.init({"params": KEY}, x, train=False)
        return model.apply(variables, x, train=False, capture_intermediates=True,
                           mutable=["intermediates"])[1]["intermediates"]

    outputs = jax.eval_shape(forward)
    block = outputs["layer2_0"]
    # 56x56 -> conv1 (1x1) keeps 56, conv2 (3x3, stride 2) gives 28.
    assert outputs["maxpool"]["__call__"][0].shape == (1, 56, 56, 64)
    assert block["conv1"]["__call__"][0].shape == (1, 56, 56, 128)
    assert block["conv2"]["__call__"][0].shape == (1, 28, 28, 128)


# --- Small models ----------------------------------------------------------------------------
# Compiling is what costs here (XLA's CPU compile time grows with the number of layers), so the
# small models are as shallow as covers every parameter kind: the ResNets get one stage of one
# block (the bottleneck's 4 -> 16 features still has a downsample shortcut); strided blocks with
# projection shortcuts are trained in the pre-activation and wide ResNet checks.
TINY = {"stage_sizes": (1,), "width": 4}
SMALL_INPUT = (8, 8, 3)


@pytest.fixture
def tiny_names(monkeypatch) -> None:
    """Registers the unrestricted classes as "tiny_resnet" and "tiny_preact" for one test."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register("tiny_resnet")(ResNet)
    register("tiny_preact")(PreActResNet)


# Between them: both block types and both stems.
@pytest.mark.parametrize(("block", "stem"), [("basic", "imagenet"), ("bottleneck", "cifar")])
def test_train_step_resnet(tiny_names, block: str, stem: str) -> None:
    loss, new_loss = train_step_check("tiny_resnet", block=block, stem=stem, **TINY)
    assert new_loss < loss


def test_train_step_preact(tiny_names) -> None:
    loss, new_loss = train_step_check("tiny_preact", SMALL_INPUT, stage_sizes=(1, 1), width=4)
    assert new_loss < loss


def test_train_step_wrn() -> None:
    loss, new_loss = train_step_check("wrn", SMALL_INPUT, depth=10, widen_factor=1, dropout=0.3)
    assert new_loss < loss


@functools.cache
def _zero_init_variables(block: str) -> tuple[nn.Module, dict]:
    model = ResNet(block=block, stem="cifar", zero_init_residual=True, stage_sizes=(1, 1), width=4)
    init = jax.jit(functools.partial(model.init, train=False))
    return model, init({"params": KEY}, jnp.zeros((1, *CIFAR)))


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_zero_init_residual(block: str) -> None:
    last = "bn2" if block == "basic" else "bn3"
    _, variables = _zero_init_variables(block)
    params = variables["params"]
    assert sorted(k for k in params if k.startswith("layer")) == ["layer1_0", "layer2_0"]
    assert "downsample_bn" in params["layer2_0"]
    scales = {"bn1": params["bn1"]["scale"]}
    scales.update({f"{k}/{bn}": v["scale"] for k in ("layer1_0", "layer2_0")
                   for bn, v in params[k].items() if "bn" in bn})
    for name, scale in scales.items():  # only each block's last BN starts at 0
        np.testing.assert_array_equal(scale, 0.0 if name.endswith(last) else 1.0, err_msg=name)
    for path, bias in jax.tree_util.tree_leaves_with_path(params):
        if "bn" in jax.tree_util.keystr(path) and path[-1].key == "bias":
            np.testing.assert_array_equal(bias, 0.0)


def test_init_like_torchvision() -> None:
    params = _zero_init_variables("basic")[1]["params"]
    kernel = params["layer2_0"]["conv2"]["kernel"]  # 3x3, 8 -> 8: He normal, std sqrt(2 / 72)
    assert abs(float(jnp.std(kernel)) / np.sqrt(2 / 72) - 1) < 0.15
    assert abs(float(jnp.mean(kernel))) < 0.03
    bound = 1 / np.sqrt(8)  # fc: PyTorch's nn.Linear default, U(-1/sqrt(8), 1/sqrt(8))
    for leaf in (params["fc"]["kernel"], params["fc"]["bias"]):
        assert float(jnp.max(jnp.abs(leaf))) <= bound
    assert float(jnp.max(jnp.abs(params["fc"]["kernel"]))) > bound / 2


def test_batch_norm_train_vs_eval() -> None:
    model, variables = _zero_init_variables("basic")

    @functools.partial(jax.jit, static_argnames="train")
    def run(x, train):
        return model.apply(variables, x, train=train, capture_intermediates=True,
                           mutable=["batch_stats", "intermediates"])

    x = jax.random.normal(jax.random.key(0), (8, *CIFAR)) * 2 + 1
    other = x.at[4:].set(-x[4:])  # same first half, different rest of the batch
    # Eval mode: running averages (initially mean 0, var 1); a sample's logits ignore the batch.
    eval_logits, eval_state = run(x, train=False)
    np.testing.assert_allclose(run(other, train=False)[0][:4], eval_logits[:4], atol=1e-5)
    np.testing.assert_array_equal(eval_state["batch_stats"]["bn1"]["mean"], 0.0)
    # Train mode: batch statistics, so the logits depend on the rest of the batch, and the
    # running averages move 10% of the way (PyTorch momentum 0.1) to the batch statistics.
    logits, state = run(x, train=True)
    assert not np.allclose(run(other, train=True)[0][:4], logits[:4], atol=1e-3)
    assert not np.allclose(logits, eval_logits, atol=1e-3)
    conv1_out = state["intermediates"]["conv1"]["__call__"][0]
    stats = state["batch_stats"]["bn1"]
    np.testing.assert_allclose(stats["mean"], 0.1 * conv1_out.mean((0, 1, 2)), atol=1e-5)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * conv1_out.var((0, 1, 2)), rtol=1e-4)


@pytest.mark.parametrize("preact_shortcut", [False, True])
def test_preact_block_shortcut(preact_shortcut: bool) -> None:
    block = PreActBlock(4, preact_shortcut=preact_shortcut)
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))

    @jax.jit
    def run(x):
        variables = block.init(KEY, x, train=False)
        params = variables["params"]
        zero_conv2 = {**params, "conv2": {"kernel": jnp.zeros_like(params["conv2"]["kernel"])}}
        return params, block.apply({**variables, "params": zero_conv2}, x, train=False)

    params, out = run(x)
    # With conv2 zeroed the block outputs its shortcut: x itself (He et al.), or relu(bn1(x))
    # (the mixup code's identity shortcut); eval-mode BN starts as x / sqrt(1 + eps).
    expected = jax.nn.relu(x / jnp.sqrt(1 + 1e-5)) if preact_shortcut else x
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert "shortcut_conv" not in params
    strided = jax.eval_shape(functools.partial(PreActBlock(8, strides=2).init, train=False), KEY, x)
    assert strided["params"]["shortcut_conv"]["kernel"].shape == (1, 1, 4, 8)


def test_wrn_uses_dropout_in_train_mode_only() -> None:
    x = jnp.zeros((2, *CIFAR))

    def forward(dropout: float, train: bool):
        model = WideResNet(depth=10, widen_factor=1, dropout=dropout)
        variables = model.init(KEY, x, train=False)
        return model.apply(variables, x, train=train, mutable=["batch_stats"])

    jax.eval_shape(functools.partial(forward, 0.3, False))
    jax.eval_shape(functools.partial(forward, 0.0, True))
    with pytest.raises(flax.errors.InvalidRngError, match="dropout"):  # needs a dropout key
        jax.eval_shape(functools.partial(forward, 0.3, True))


@pytest.mark.parametrize("depth", [4, 12, 27])
def test_wrn_bad_depth(depth: int) -> None:
    with pytest.raises(ValueError, match=rf"'depth' must be 6n\+4.*got depth={depth}"):
        create_model("wrn", num_classes=10, depth=depth)


def test_wrn_other_depths_and_bad_fields() -> None:
    # WRN-40-4: the paper's 8.9M; 40-4 counted like 28-10 above (xternalz/WideResNet-pytorch).
    assert param_count("wrn", depth=40, widen_factor=4) == 8_949_210
    with pytest.raises(ValueError, match="widen_factor"):
        create_model("wrn", num_classes=10, widen_factor=0)
    with pytest.raises(ValueError, match="block must be 'basic' or 'bottleneck'"):
        ResNet(block="wide")
    with pytest.raises(ValueError, match="stem must be"):
        ResNet(stem="tiny")
    with pytest.raises(ValueError, match="got unknown kwarg"):
        create_model("resnet18", num_classes=10, stage_sizes=(1, 1, 1, 1))
