"""Members of a vectorised run that differ in hyper-parameters: parsing and checking ``--vary``,
their configs and folders, and runs equal to the members trained one by one."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import convnet_config

from cv_jax.config import ConfigError
from cv_jax.training import runs, sharding, train
from cv_jax.training.results import read_results
from cv_jax.workflows import members, vectorized

SEEDS = (1,)
VARY = {"optimizer.learning_rate": (0.05, 0.1), "model.fc_dropout": (0.2, 0.5),
        "optimizer.weight_decay": (1e-3,), "loss.label_smoothing": (0.1,),
        "mixup.mixup_alpha": (0.4,)}


def varied_config(data_dir, cache_dir):
    """The quick convnet with a dropout layer after a 16-unit hidden layer, momentum SGD with
    weight decay, label smoothing and mixup (the keys VARY changes): 8 steps."""
    config = convnet_config(data_dir, cache_dir, num_epochs=2.0, eval_every_epochs=1.0)
    config.model.update(fc="16", fc_dropout=0.3)
    config.optimizer.update(name="sgd", momentum=0.9, weight_decay=5e-4)
    config.loss.label_smoothing = 0.2
    config.mixup.mixup_alpha = 0.2
    config.data_seed = 3
    return config


def test_vary_is_parsed_to_the_config_types(tiny_folder, cache_dir):
    config = varied_config(tiny_folder, cache_dir)
    vary = members.parse_vary(["optimizer.learning_rate = 0.05, 0.1", "augment.crop_padding=2,4"],
                              config)
    assert vary == {"optimizer.learning_rate": (0.05, 0.1), "augment.crop_padding": (2, 4)}
    assert [type(v) for v in vary["augment.crop_padding"]] == [int, int]
    assert members.member_overrides(vary) == [
        {"optimizer.learning_rate": 0.05, "augment.crop_padding": 2},
        {"optimizer.learning_rate": 0.05, "augment.crop_padding": 4},
        {"optimizer.learning_rate": 0.1, "augment.crop_padding": 2},
        {"optimizer.learning_rate": 0.1, "augment.crop_padding": 4}]
    assert members.member_overrides({}) == [{}]


@pytest.mark.parametrize("item, message", [
    ("optimizer.learning_rat=0.1", "did you mean learning_rate"),
    ("optimizer.learning_rate", "write KEY=V1,V2"),
    ("dataset.max_train_examples=100,200", "read outside the train step"),
    ("schedule.plateau_patience=1,2", "read outside the train step"),
    ("training.batch_size=8,16", "read outside the train step"),
    ("optimizer.name=sgd,adam", "is a str, not a number"),
    ("augment.flip=true,false", "is a bool, not a number"),
    ("optimizer.learning_rate=0.1,fast", "takes float values"),
    ("optimizer.learning_rate=0.1,0.1", "list each value"),
    ("optimizer.weight_decay=0,5e-4", "a 0 switches that part of the step off"),
])
def test_vary_refuses_what_cannot_vary_in_one_program(tiny_folder, cache_dir, item, message):
    config = varied_config(tiny_folder, cache_dir)
    with pytest.raises(ConfigError, match=message) as error:
        members.parse_vary([item], config)
    assert item.split("=")[0] in str(error.value)


def test_a_key_given_twice_is_refused(tiny_folder, cache_dir):
    config = varied_config(tiny_folder, cache_dir)
    with pytest.raises(ConfigError, match="'loss.label_smoothing' is given twice"):
        members.parse_vary(["loss.label_smoothing=0.1", "loss.label_smoothing=0.2"], config)


def test_member_configs_and_folders(tiny_folder, cache_dir, tmp_path):
    config = varied_config(tiny_folder, cache_dir)
    overrides = {"optimizer.learning_rate": 0.1, "model.fc_dropout": 0.5}
    member = members.member_config(config, 7, overrides)
    assert (member.seed, member.data_seed) == (7, 3)
    assert (member.optimizer.learning_rate, member.model.fc_dropout) == (0.1, 0.5)
    assert config.optimizer.learning_rate == 0.05  # the given config is unchanged
    assert members.member_dir("w", 7, overrides) == os.path.join(
        "w", "learning_rate=0.1,fc_dropout=0.5", "seed_7")
    assert members.member_dir("w", 7) == os.path.join("w", "seed_7")
    with pytest.raises(ConfigError, match="label_smoothing"):
        members.member_config(config, 0, {"loss.label_smoothing": 1.5})


def test_traced_values_reach_the_config(tiny_folder, cache_dir):
    config = varied_config(tiny_folder, cache_dir)
    values = {"optimizer.learning_rate": np.float32(0.5), "model.fc_dropout": np.float32(0.1)}
    copy = members.with_values(config, values)
    assert copy.optimizer.learning_rate == np.float32(0.5) and copy.model.fc_dropout == 0.1
    assert config.optimizer.learning_rate == 0.05


@pytest.fixture(scope="module")
def separate(tiny_folder, cache_dir, tmp_path_factory):
    """Each member of SEEDS x VARY trained alone with train.train_and_evaluate."""
    config = varied_config(tiny_folder, cache_dir)
    out = {}
    for overrides in members.member_overrides(VARY):
        for seed in SEEDS:
            workdir = str(tmp_path_factory.mktemp("single"))
            train.train_and_evaluate(members.member_config(config, seed, overrides), workdir)
            out[seed, tuple(overrides.values())] = workdir
    return out


def test_unrolled_members_each_build_their_step_from_their_own_config(tiny_folder, cache_dir,
                                                                     monkeypatch):
    """In unroll mode each member's copy of the step comes from its own config (the vmapped
    mode, which traces the values instead, is checked against separate runs below)."""
    built = []
    monkeypatch.setattr(members, "_step_of", lambda config, *args: built.append(config))
    config = varied_config(tiny_folder, cache_dir)
    overrides = members.member_overrides(VARY)
    configs = [members.member_config(config, 0, o) for o in overrides]
    members.make_vectorized_step(configs, list(VARY), None, None, sharding.make_mesh(),
                                 mode="unroll")
    assert built == configs
    assert [(c.optimizer.learning_rate, c.model.fc_dropout) for c in built] == [
        (0.05, 0.2), (0.05, 0.5), (0.1, 0.2), (0.1, 0.5)]


def test_varied_members_equal_separate_runs(tiny_folder, cache_dir, tmp_path, separate):
    """Every member (2 learning rates x 2 dropout rates, with weight decay, label
    smoothing and mixup alpha traced too) of a vmapped run ends with the weights of its run
    trained alone.
    Tolerance as tests/test_vectorized.py: rtol=1e-5, atol=5e-6 (float32 sums in another
    order; the schedule's peak is a float32 product here, a float64 one in a single run).
    Swapping two members' values moves weights by ~1e-2."""
    config = varied_config(tiny_folder, cache_dir)
    results = vectorized.train_seeds(config, str(tmp_path), SEEDS, mode="vmap", vary=VARY)
    assert len(results) == 4
    for overrides in members.member_overrides(VARY):
        for seed in SEEDS:
            workdir = members.member_dir(str(tmp_path), seed, overrides)
            mine, alone = runs.load_run(workdir), runs.load_run(separate[seed, tuple(
                overrides.values())])
            assert mine.config.to_dict() == alone.config.to_dict()
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-6),
                         jax.device_get(mine.state.params), jax.device_get(alone.state.params))
            result = read_results(workdir)
            assert result["vectorized_seeds"] == list(SEEDS)
            assert result["vectorized_vary"] == {k: list(v) for k, v in VARY.items()}


def test_dropout_takes_a_rate_array():
    """A Python rate follows flax exactly; an array rate (as traced in a vmapped run) draws the
    same mask from the same key; an array rate of 0 keeps every unit."""
    import flax.linen as nn

    from cv_jax.models.layers import Dropout

    x = jax.random.normal(jax.random.key(0), (4, 6, 6, 3))
    rngs = {"dropout": jax.random.key(1)}

    def apply(layer):
        return layer.apply({}, x, rngs=rngs)

    expected = apply(nn.Dropout(0.3, deterministic=False))
    assert 0 < np.mean(np.asarray(expected) == 0) < 0.6
    np.testing.assert_array_equal(apply(Dropout(0.3, deterministic=False)), expected)
    np.testing.assert_allclose(apply(Dropout(np.float32(0.3), deterministic=False)), expected,
                               rtol=1e-6)
    np.testing.assert_array_equal(apply(Dropout(np.float32(0.0), deterministic=False)), x)
    np.testing.assert_array_equal(apply(Dropout(np.float32(0.3), deterministic=True)), x)
    rates = jnp.asarray([0.3, 0.0])
    mapped = jax.vmap(lambda r: Dropout(r, deterministic=False).apply({}, x, rngs=rngs))(rates)
    np.testing.assert_allclose(mapped[0], expected, rtol=1e-6)
    np.testing.assert_array_equal(mapped[1], x)


def test_members_of_other_shapes_are_refused_by_name():
    a = {"params": {"w": np.zeros((3, 4))}, "opt": (np.zeros(2),)}
    wider = {"params": {"w": np.zeros((3, 8))}, "opt": (np.zeros(2),)}
    other_tree = {"params": {"w": np.zeros((3, 4))}, "opt": ()}
    vectorized.check_same_shapes(["seed 0", "seed 1"], [a, a])
    for b in (wider, other_tree):
        with pytest.raises(ConfigError,
                           match=r"^seed 1 \(width=8\) has parameters or optimizer state of "
                                 r"other shapes than seed 0 \(width=4\)"):
            vectorized.check_same_shapes(["seed 0 (width=4)", "seed 1 (width=8)"], [a, b])
