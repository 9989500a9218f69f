"""Transfer learning: backbone copied from a source run, head re-initialised, and the four
modes' update rules (frozen bit-identical, discriminative ratio, staged unfreezing)."""

import hashlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import load_config, tiny_config

from cv_jax.config import ConfigError, model_section, validate
from cv_jax.models import pretrained
from cv_jax.models.torchvision_import import convert_state_dict
from cv_jax.optim import chain
from cv_jax.training import runs, train, transfer


@pytest.fixture(scope="module")
def source_run(trained_run):
    return trained_run[0]


def variables_of(workdir):
    state = jax.device_get(runs.load_run(workdir, "latest").state)
    return {"params": state.params, "batch_stats": state.batch_stats}


def test_head_is_every_parameter_whose_shape_follows_the_class_count():
    assert runs.head_paths(load_config("smoke"), 4, (16, 16, 3)) == {"head/kernel"}
    config = load_config("smoke,model=resnet20")
    assert runs.head_paths(config, 10, (32, 32, 3)) == {"head/kernel", "head/bias"}
    config = load_config("smoke,model=googlenet_cifar")
    config.model.aux_heads = True
    heads = runs.head_paths(config, 10, (32, 32, 3))
    assert {"fc/kernel", "fc/bias"} < heads and any(p.startswith("aux_head") for p in heads)


def test_linear_probe_keeps_the_backbone_bit_identical_and_trains_the_head(
        source_run, tiny_folder, cache_dir, tmp_path):
    source = variables_of(source_run)
    config = tiny_config(tiny_folder, cache_dir, num_epochs=1.0)
    config.transfer.update(init_from=source_run, checkpoint="latest", mode="linear_probe")
    config.seed = 7
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["steps"] == 6
    after = variables_of(str(tmp_path))
    flat_source, flat_after = transfer.flat(source["params"]), transfer.flat(after["params"])
    assert set(flat_after) == set(flat_source)
    for path, value in flat_after.items():
        if path == "head/kernel":
            assert not np.array_equal(value, flat_source[path])
        else:
            np.testing.assert_array_equal(value, flat_source[path], err_msg=path)
    # BatchNorm ran on its running statistics, so they did not move either.
    jax.tree.map(np.testing.assert_array_equal, after["batch_stats"], source["batch_stats"])


def test_initialisation_copies_the_backbone_and_keeps_a_fresh_head(source_run):
    source = variables_of(source_run)
    fresh = jax.tree.map(jnp.zeros_like, source)
    merged = transfer.init_backbone(fresh, source, frozenset({"head/kernel"}), "src")
    for path, value in transfer.flat(merged["params"]).items():
        expected = 0 if path == "head/kernel" else transfer.flat(source["params"])[path]
        np.testing.assert_array_equal(value, np.broadcast_to(expected, value.shape))


def test_a_source_of_another_shape_names_the_first_mismatching_parameter(source_run):
    source = variables_of(source_run)
    target = jax.tree.map(jnp.zeros_like, source)
    path = sorted(p for p in transfer.flat(source["params"]) if p != "head/kernel")[0]
    keys = path.split("/")
    leaf = target["params"]
    for key in keys[:-1]:
        leaf = leaf[key]
    leaf[keys[-1]] = jnp.zeros(leaf[keys[-1]].shape + (2,))
    with pytest.raises(transfer.TransferError, match=f"src: params '{path}' has shape"):
        transfer.init_backbone(target, source, frozenset({"head/kernel"}), "src")
    del source["params"][keys[0]]
    with pytest.raises(transfer.TransferError, match=f"src has no params '{keys[0]}/"):
        transfer.init_backbone(target, source, frozenset({"head/kernel"}), "src")


def test_a_source_of_another_model_or_without_checkpoint_is_refused(source_run, tmp_path):
    config = load_config("smoke,model=resnet20")
    config.transfer.init_from = source_run
    with pytest.raises(transfer.TransferError, match="holds a 'airbench' but this run builds "
                                                     "'resnet20'"):
        transfer.source_variables(config)
    config.transfer.init_from = str(tmp_path / "nowhere")
    with pytest.raises(transfer.TransferError, match="neither a run directory nor a .msgpack"):
        transfer.source_variables(config)
    config = load_config("smoke")
    config.transfer.update(init_from=source_run, weights="ema")
    with pytest.raises(transfer.TransferError, match="kept no moving average"):
        transfer.source_variables(config)


def test_modes_other_than_finetune_need_weights_to_start_from():
    config = load_config("smoke")
    config.transfer.mode = "linear_probe"
    with pytest.raises(ConfigError, match=r"transfer.mode='linear_probe' needs"):
        validate(config)


def test_torchvision_weights_by_name_must_be_of_a_supported_model():
    config = load_config("smoke,model=resnet50")
    config.transfer.init_from = "torchvision:resnet50.IMAGENET1K_V2"
    validate(config)
    config.transfer.init_from = "torchvision:alexnet"
    with pytest.raises(ConfigError, match=re.escape(
            "config.transfer.init_from='torchvision:alexnet' names no model whose torchvision "
            "weights cv_jax converts; use torchvision:NAME with NAME one of resnet18, resnet34, "
            "resnet50, vgg16, vgg16_bn, densenet121, inception_v3 (optionally .WEIGHTS, e.g. "
            "torchvision:resnet50.IMAGENET1K_V2)")):
        validate(config)
    config.transfer.init_from = "torchvision:resnet18"
    with pytest.raises(transfer.TransferError, match=re.escape(
            "config.transfer.init_from='torchvision:resnet18' holds a 'resnet18' but this run "
            "builds 'resnet50'; use the same model (config.model.name)")):
        transfer.source_variables(config)


@pytest.mark.slow
def test_a_run_starts_from_torchvision_weights_by_name(tiny_folder, cache_dir, tmp_path,
                                                        monkeypatch):
    """``init_from=torchvision:resnet18`` fetches the (here locally served) weights into the
    cache, converts them and starts the run from them: after a linear probe the backbone is
    still exactly the converted weights."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    state_dict = torchvision.models.resnet18().state_dict()
    served = tmp_path / "resnet18-00000000.pth"
    torch.save(state_dict, served)
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    served = served.rename(tmp_path / f"resnet18-{digest[:8]}.pth")
    monkeypatch.setattr(pretrained, "weights_url", lambda name, weights: served.as_uri())
    monkeypatch.setattr(pretrained, "cache_dir", lambda: str(tmp_path / "weights"))

    config = tiny_config(tiny_folder, cache_dir, num_epochs=0.0, num_steps=2)
    config.model = model_section("resnet18")
    config.optimizer.update(freeze="", lr_multipliers="")
    config.augment.update(crop_padding=0, flip=False)
    config.eval.tta_flip = False
    config.transfer.update(init_from="torchvision:resnet18", mode="linear_probe")
    validate(config)
    train.train_and_evaluate(config, str(tmp_path / "run"))

    assert (tmp_path / "weights" / served.name).read_bytes() == served.read_bytes()
    converted = convert_state_dict("resnet18", state_dict)
    after = variables_of(str(tmp_path / "run"))
    flat_converted, flat_after = transfer.flat(converted["params"]), transfer.flat(after["params"])
    assert set(flat_after) == set(flat_converted)
    for path, value in flat_after.items():
        if path.startswith("fc/"):  # the head: 4 classes here, 1000 in the weights
            assert value.shape[-1] == 4 and flat_converted[path].shape[-1] == 1000
        else:
            np.testing.assert_array_equal(value, flat_converted[path], err_msg=path)
    jax.tree.map(np.testing.assert_array_equal, after["batch_stats"], converted["batch_stats"])


def updates_over_steps(mode, steps, **transfer_settings):
    """Updates of plain SGD (lr 0.5, momentum 0.9) under a transfer mode, for a constant
    gradient of ones on a two-leaf tree."""
    config = load_config("smoke")
    config.optimizer.update(name="sgd", momentum=0.9, nesterov=False, weight_decay=0.0,
                            freeze="", lr_multipliers="")
    config.transfer.update(init_from="a_source_run", mode=mode, **transfer_settings)
    params = {"body": {"kernel": jnp.ones(3)}, "head": {"kernel": jnp.ones(2)}}
    tx = chain.run_optimizer(config, optax.constant_schedule(0.5), frozenset({"head/kernel"}),
                             steps_per_epoch=2)
    state, grads = tx.init(params), jax.tree.map(jnp.ones_like, params)
    out = []
    for _ in range(steps):
        updates, state = tx.update(grads, state, params)
        out.append((float(updates["body"]["kernel"][0]), float(updates["head"]["kernel"][0])))
    return out


def test_discriminative_backbone_updates_are_the_multiplier_times_the_head_updates():
    for body, head in updates_over_steps("discriminative", 3, backbone_lr_multiplier=0.1):
        assert body == pytest.approx(0.1 * head, rel=1e-6)
    assert updates_over_steps("finetune", 1)[0] == (-0.5, -0.5)


def test_staged_freezes_then_unfreezes_with_a_fresh_momentum():
    # frozen_epochs=1.5 at 2 steps per epoch: 3 frozen steps.
    out = updates_over_steps("staged", 5, frozen_epochs=1.5, backbone_lr_multiplier=0.1)
    assert [body for body, _ in out[:3]] == [0.0, 0.0, 0.0]
    assert [head for _, head in out] == pytest.approx([-0.5, -0.95, -1.355, -1.7195, -2.04755])
    # Momentum starts at unfreezing: first backbone update is -lr * 0.1 * g, then the trace.
    assert [body for body, _ in out[3:]] == pytest.approx([-0.05, -0.095])
    assert updates_over_steps("linear_probe", 2) == [(0.0, -0.5), (0.0, pytest.approx(-0.95))]
