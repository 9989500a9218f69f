"""torchvision state dicts converted by cv_jax give the same logits as torchvision itself.

torchvision models are randomly initialised here (no downloads); BatchNorm statistics and affine
parameters are randomised too, so that their conversion is exercised, and both models run in eval
mode on the same random images.
"""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from cv_jax.models import create_model
from cv_jax.models.inception import InceptionAux
from cv_jax.models.torchvision_import import (
    ImportMismatch,
    convert_state_dict,
    import_torchvision,
    load_variables,
    save_variables,
)

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]')")
torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed")

NUM_CLASSES = 7  # not 1000: the class count must come from the state dict
# (model, input side): small inputs keep the test fast; VGG's adaptive pooling and DenseNet's
# global pooling make any size >= 32 valid.
CASES = [
    ("resnet18", 64),
    ("resnet34", 64),
    ("resnet50", 64),
    ("vgg16", 32),
    ("vgg16_bn", 32),
    ("densenet121", 64),
]


def torchvision_model(name: str, **kwargs):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=NUM_CLASSES, **kwargs)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                shape = module.running_mean.shape
                module.running_mean.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
                module.weight.copy_(0.5 + torch.rand(shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize(("name", "side"), CASES, ids=[name for name, _ in CASES])
def test_logits_match_torchvision(name: str, side: int) -> None:
    reference = torchvision_model(name)
    images = np.random.default_rng(0).normal(size=(2, side, side, 3)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()

    variables = convert_state_dict(name, reference.state_dict())
    model = create_model(name, num_classes=NUM_CLASSES)
    logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))

    assert_same_logits(logits, expected, name)
    assert_same_parameter_count(variables, reference)


def assert_same_logits(ours: np.ndarray, theirs: np.ndarray, name: str) -> None:
    """Both [2, NUM_CLASSES], within 1e-4 of the largest |logit|."""
    assert ours.shape == theirs.shape == (2, NUM_CLASSES)
    relative_error = np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
    assert relative_error < 1e-4, f"{name}: max relative error {relative_error:.2e}"


def assert_same_parameter_count(variables: dict, reference) -> None:
    reference_count = sum(p.numel() for p in reference.parameters())
    assert sum(np.size(p) for p in jax.tree.leaves(variables["params"])) == reference_count


def test_inception_v3_logits_match_torchvision_with_its_input_transform() -> None:
    """torchvision's Inception-v3 as its pretrained weights are used (``transform_input=True``,
    ImageNet-normalised inputs) gives cv_jax's logits on the same pixels normalised with
    mean = std = 0.5; the auxiliary classifier converts too (checked on random Mixed_6e features,
    as it needs 299x299 inputs)."""
    reference = torchvision_model("inception_v3", aux_logits=True, transform_input=True,
                                  init_weights=True)
    rng = np.random.default_rng(0)
    pixels = rng.uniform(size=(2, 107, 107, 3)).astype(np.float32)  # Mixed_7c at 2x2
    imagenet = (pixels - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225])
    features = rng.normal(size=(2, 17, 17, 768)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(imagenet.transpose(0, 3, 1, 2))).numpy()
        expected_aux = reference.AuxLogits(torch.from_numpy(features.transpose(0, 3, 1, 2)))

    variables = convert_state_dict("inception_v3", reference.state_dict())
    model = create_model("inception_v3", num_classes=NUM_CLASSES, aux_logits=True)
    logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(
        variables, (pixels - 0.5) / 0.5))
    aux_head = InceptionAux(NUM_CLASSES)
    aux_variables = {k: v["AuxLogits"] for k, v in variables.items()}
    aux = np.asarray(jax.jit(lambda v, x: aux_head.apply(v, x, train=False))(
        aux_variables, features))

    assert_same_logits(logits, expected, "inception_v3")
    assert_same_logits(aux, expected_aux.numpy(), "inception_v3 AuxLogits")
    assert_same_parameter_count(variables, reference)


def test_densenet_published_names_convert() -> None:
    """torchvision's published DenseNet files use older names (``denselayer1.norm.1.weight``
    for ``denselayer1.norm1.weight``, which torchvision renames when loading them)."""
    state_dict = torchvision_model("densenet121").state_dict()
    published = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v
                 for k, v in state_dict.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in published
    jax.tree.map(np.testing.assert_array_equal, convert_state_dict("densenet121", published),
                 convert_state_dict("densenet121", state_dict))


def test_pth_file_round_trip(tmp_path) -> None:
    reference = torchvision_model("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    variables = import_torchvision("resnet18", str(path))
    out = tmp_path / "resnet18.msgpack"
    save_variables(variables, str(out))
    restored = load_variables(str(out))
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
    conv1 = reference.state_dict()["conv1.weight"].numpy()  # OIHW -> HWIO
    kernel = restored["params"]["conv1"]["kernel"]
    np.testing.assert_array_equal(kernel, conv1.transpose(2, 3, 1, 0))


def test_wrong_architecture_names_the_tensors() -> None:
    state_dict = torchvision_model("resnet18").state_dict()
    with pytest.raises(ImportMismatch, match=r"resnet34.*missing params/layer1_2/conv1/kernel"):
        convert_state_dict("resnet34", state_dict)
    with pytest.raises(ValueError, match="no torchvision import for 'alexnet'; supported: resnet"):
        convert_state_dict("alexnet", state_dict)


def test_non_finite_values_are_named() -> None:
    state_dict = torchvision_model("resnet18").state_dict()
    state_dict["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    state_dict["fc.bias"][1] = float("inf")
    with pytest.raises(ValueError, match=re.escape(
            "the state dict has non-finite values in layer1.0.conv1.weight, fc.bias: it cannot "
            "start a model (torchvision's vgg16 IMAGENET1K_FEATURES weights, for one, leave the "
            "classifier undefined; use IMAGENET1K_V1)")):
        convert_state_dict("resnet18", state_dict)


def test_unreadable_file_is_named(tmp_path) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="cannot read state dict .*broken.pth"):
        import_torchvision("resnet18", str(path))
