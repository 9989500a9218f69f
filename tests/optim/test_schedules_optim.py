"""Schedules at chosen steps, and the optimizer chain's masks and freezing."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import load_config

from cv_jax.config import OPTIMIZERS, ConfigError, base_config, model_section, validate
from cv_jax.optim import chain, lr, opt_state, plateau, schedules


def schedule_config(**schedule):
    config = base_config()
    config.optimizer.learning_rate = 1.0
    config.schedule.update(**schedule)
    return config


def values(config, steps, spe=10, total=100):
    fn = lr.schedule(config, steps_per_epoch=spe, total_steps=total)
    return [float(fn(s)) for s in steps]


def test_piecewise_decays_at_epoch_boundaries():
    config = schedule_config(name="piecewise", boundaries=(3, 6), decay_factor=0.1)
    got = values(config, [0, 29, 30, 59, 60, 99])
    np.testing.assert_allclose(got, [1, 1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)


def test_exponential_per_epoch_and_staircase():
    smooth = values(schedule_config(name="exponential", decay_factor=0.5), [0, 5, 10, 20])
    np.testing.assert_allclose(smooth, [1, 0.5**0.5, 0.5, 0.25], rtol=1e-6)
    stairs = values(schedule_config(name="exponential", decay_factor=0.5, staircase=True),
                    [9, 10, 19])
    np.testing.assert_allclose(stairs, [1, 0.5, 0.5], rtol=1e-6)


def test_cosine_with_warmup():
    config = schedule_config(name="cosine", warmup_epochs=2, warmup_init_factor=0.0,
                             end_factor=0.0)
    got = values(config, [0, 10, 20, 60, 100])
    # 20 warmup steps, then a half cosine over the remaining 80.
    np.testing.assert_allclose(got, [0, 0.5, 1, 0.5, 0], atol=1e-6)


def test_linear_one_cycle_triangle():
    config = schedule_config(name="linear", warmup_epochs=5, warmup_init_factor=0.2,
                             end_factor=0.1)
    got = values(config, [0, 25, 50, 75, 100])
    np.testing.assert_allclose(got, [0.2, 0.6, 1.0, 0.55, 0.1], rtol=1e-6)


def test_unknown_schedule_lists_names():
    with pytest.raises(ConfigError, match="cosine.*piecewise|constant"):
        lr.schedule(schedule_config(name="cosin"), 10, 100)


class ConvBN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        return nn.Dense(3, name="head")(x.mean((1, 2)))


def params():
    return ConvBN().init(jax.random.key(0), jnp.ones((1, 8, 8, 3)))["params"]


def test_decay_mask_selects_kernels_only():
    mask = chain.path_mask(base_config().optimizer.decay_mask)(params())
    flat = {chain.param_path(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
    assert flat == {"conv/kernel": True, "conv/bias": False, "bn/scale": False,
                    "bn/bias": False, "head/kernel": True, "head/bias": False}


def test_weight_decay_applies_to_kernels_not_biases_or_bn():
    config = base_config()
    config.optimizer.update(name="sgd", momentum=0.0, nesterov=False, weight_decay=0.1)
    tx = chain.create_optimizer(config, 1.0)
    p = params()
    zero_grads = jax.tree.map(jnp.zeros_like, p)
    updates, _ = tx.update(zero_grads, tx.init(p), p)
    np.testing.assert_allclose(updates["conv"]["kernel"], -0.1 * p["conv"]["kernel"], rtol=1e-6)
    for path in (("conv", "bias"), ("bn", "scale"), ("bn", "bias"), ("head", "bias")):
        assert not np.any(updates[path[0]][path[1]]), path


def test_sgd_nesterov_matches_optax_reference():
    config = base_config()
    config.optimizer.update(name="sgd", momentum=0.9, nesterov=True, weight_decay=0.0)
    tx, ref = chain.create_optimizer(config, 0.1), optax.sgd(0.1, momentum=0.9, nesterov=True)
    p = params()
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), p)
    s, r = tx.init(p), ref.init(p)
    for _ in range(3):
        u, s = tx.update(grads, s, p)
        v, r = ref.update(grads, r, p)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), u, v)


def test_frozen_parameters_get_zero_updates_and_multipliers_scale():
    config = base_config()
    config.optimizer.update(name="sgd", momentum=0.0, nesterov=False, weight_decay=0.0,
                            freeze="^conv/", lr_multipliers="bias$=3")
    tx = chain.create_optimizer(config, 1.0)
    p = params()
    grads = jax.tree.map(jnp.ones_like, p)
    updates, _ = tx.update(grads, tx.init(p), p)
    assert not np.any(updates["conv"]["kernel"]) and not np.any(updates["conv"]["bias"])
    np.testing.assert_array_equal(updates["head"]["kernel"], -np.ones((4, 3)))
    np.testing.assert_array_equal(updates["head"]["bias"], -3 * np.ones(3))


def test_unknown_optimizer_and_bad_values_name_the_key():
    config = base_config()
    config.optimizer.name = "sgdd"
    with pytest.raises(ConfigError, match="optimizer.name='sgdd'.*adam"):
        chain.create_optimizer(config, 0.1)
    config = load_config("smoke")
    config.optimizer.learning_rate = -1.0
    with pytest.raises(ConfigError, match="optimizer.learning_rate=-1.0"):
        validate(config)
    config = load_config("smoke")
    config.schedule.boundaries = (5, 2)
    with pytest.raises(ConfigError, match="schedule.boundaries"):
        validate(config)


# --- Schedules added by the recipe toolkit ---------------------------------------------------

def test_multistep_classic_recipe_and_per_boundary_factors():
    config = schedule_config(name="multistep", boundaries=(3, 6), decay_factor=0.1)
    config.optimizer.learning_rate = 0.1
    got = values(config, [0, 29, 30, 59, 60, 99])
    np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
    config = schedule_config(name="multistep", boundaries=(3, 6), decay_factors=(0.5, 0.2))
    np.testing.assert_allclose(values(config, [29, 30, 59, 60]), [1, 0.5, 0.5, 0.1], rtol=1e-6)


def test_multistep_boundaries_count_from_the_start_of_the_run_with_warmup():
    config = schedule_config(name="multistep", boundaries=(3,), warmup_epochs=1)
    np.testing.assert_allclose(values(config, [0, 5, 10, 29, 30]), [0, 0.5, 1, 1, 0.1],
                               rtol=1e-6)


def test_multistep_bad_boundaries_and_factors_name_the_key():
    with pytest.raises(ConfigError, match="decay_factors=.*2 factors for 1 boundar"):
        values(schedule_config(name="multistep", boundaries=(3,), decay_factors=(0.1, 0.1)), [0])
    with pytest.raises(ConfigError, match="boundaries.*inside the warmup"):
        values(schedule_config(name="multistep", boundaries=(1,), warmup_epochs=2), [0])


def test_polynomial_decay():
    config = schedule_config(name="polynomial", power=2.0, end_factor=0.1)
    np.testing.assert_allclose(values(config, [0, 50, 100]), [1, 0.1 + 0.9 * 0.25, 0.1],
                               rtol=1e-6)
    config = schedule_config(name="polynomial", power=0.5, end_factor=0.0)
    np.testing.assert_allclose(values(config, [75]), [0.5], rtol=1e-6)


def test_sgdr_restarts_to_the_peak_with_growing_cycles():
    # 2-epoch first cycle (20 steps), doubling: restarts at steps 20 and 60; the third cycle
    # (80 steps) is cut off at the end of the run (step 100).
    config = schedule_config(name="sgdr", cycle_epochs=2, cycle_mult=2, end_factor=0.1)
    got = values(config, [0, 10, 19, 20, 40, 59, 60, 100])
    end = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 19 / 20))
    np.testing.assert_allclose(got, [1, 0.55, end, 1, 0.55, 0.1 + 0.9 * 0.5 * (1 + np.cos(
        np.pi * 39 / 40)), 1, 0.55], rtol=1e-5)
    assert schedules.sgdr_cycles(config.schedule, 100, 10) == [20, 40, 80]
    same = schedule_config(name="sgdr", cycle_epochs=2.5, cycle_mult=1.0)
    np.testing.assert_allclose(values(same, [0, 25, 50, 75]), [1, 1, 1, 1], rtol=1e-6)


def test_reduce_on_plateau_schedule_is_constant_after_warmup():
    config = schedule_config(name="reduce_on_plateau", warmup_epochs=1)
    np.testing.assert_allclose(values(config, [0, 5, 10, 99]), [0, 0.5, 1, 1], rtol=1e-6)


def test_bad_schedule_values_fail_validation_naming_the_key():
    for key, value in [("boundaries", (3, 3)), ("decay_factors", (0.1, 0.0)),
                       ("power", 0.0), ("cycle_mult", 0.5), ("cycle_epochs", 0.0),
                       ("plateau_metric", "acc"), ("plateau_rtol", 0.0)]:
        config = load_config("smoke")
        config.schedule[key] = value
        with pytest.raises(ConfigError, match=f"config.schedule.{key}="):
            validate(config)


# --- Optimizers added by the recipe toolkit ---------------------------------------------------

def grads_at(step, p):
    """Different, non-uniform gradients at each step."""
    keys = jax.random.split(jax.random.key(step), len(jax.tree.leaves(p)))
    leaves = [jax.random.normal(k, x.shape) for k, x in zip(keys, jax.tree.leaves(p), strict=True)]
    return jax.tree.unflatten(jax.tree.structure(p), leaves)


def run_updates(tx, p, num_steps, start=0):
    """(params after each step, updates of each step, final state) of ``tx`` from ``p``."""
    state, trail, updates = tx.init(p), [], []
    for i in range(num_steps):
        u, state = tx.update(grads_at(start + i, p), state, p)
        p = optax.apply_updates(p, u)
        trail.append(p)
        updates.append(u)
    return trail, updates, state


def assert_trees_equal(a, b, **tol):
    check = np.testing.assert_allclose if tol else np.testing.assert_array_equal
    jax.tree.map(lambda x, y: check(x, y, **tol), a, b)


def optimizer_config(**optimizer):
    config = base_config()
    config.optimizer.update(**optimizer)
    return config


REFERENCES = {
    "lamb": lambda c, mask: optax.lamb(0.01, b1=c.b1, b2=c.b2, eps=c.eps,
                                       weight_decay=c.weight_decay, mask=mask),
    "lars": lambda c, mask: optax.lars(0.01, weight_decay=c.weight_decay,
                                       weight_decay_mask=mask, trust_coefficient=c.lars_trust,
                                       eps=c.eps, trust_ratio_mask=mask, momentum=c.momentum,
                                       nesterov=c.nesterov),
    "lion": lambda c, mask: optax.lion(0.01, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay,
                                       mask=mask),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_lamb_lars_lion_match_optax(name):
    config = optimizer_config(name=name, weight_decay=0.1, b2=0.99)
    mask = chain.path_mask(config.optimizer.decay_mask)
    ours, _, _ = run_updates(chain.create_optimizer(config, 0.01), params(), 3)
    ref, _, _ = run_updates(REFERENCES[name](config.optimizer, mask), params(), 3)
    assert_trees_equal(ours, ref)
    assert not np.array_equal(ours[-1]["head"]["kernel"], params()["head"]["kernel"])


def test_sam_matches_optax_contrib_sam():
    config = optimizer_config(name="sam", sam_base="sgd", momentum=0.9, nesterov=True,
                              weight_decay=0.0, sam_rho=0.05)
    ref = optax.contrib.sam(optax.sgd(0.1, momentum=0.9, nesterov=True),
                            optax.chain(optax.contrib.normalize(), optax.sgd(0.05)),
                            sync_period=2)
    ours, _, _ = run_updates(chain.create_optimizer(config, 0.1), params(), 4)
    theirs, _, _ = run_updates(ref, params(), 4)
    assert_trees_equal(ours, theirs)


def test_sam_two_steps_are_one_update_at_the_perturbed_point():
    """Step 1 climbs rho * g1/|g1|; step 2 applies sgd's update with g2 (the gradient at the
    perturbed weights) to the clean weights. Evaluation after step 1 sees the clean weights."""
    config = optimizer_config(name="sam", sam_base="sgd", momentum=0.0, nesterov=False,
                              weight_decay=0.0, sam_rho=0.05)
    p = params()
    trail, updates, _ = run_updates(chain.create_optimizer(config, 0.1), p, 2)
    g1, g2 = grads_at(0, p), grads_at(1, p)
    norm = optax.tree.norm(g1)
    assert_trees_equal(updates[0], jax.tree.map(lambda g: 0.05 * g / norm, g1), rtol=1e-6)
    assert_trees_equal(trail[1], jax.tree.map(lambda w, g: w - 0.1 * g, p, g2), rtol=1e-5,
                       atol=1e-7)
    tx = chain.create_optimizer(config, 0.1)
    state = tx.init(p)
    _, state = tx.update(g1, state, p)
    perturbed = optax.apply_updates(p, _)
    assert_trees_equal(opt_state.eval_params(state, perturbed), p)


@pytest.mark.parametrize("name", ["schedule_free_sgd", "schedule_free_adamw"])
def test_schedule_free_matches_optax_and_evaluates_the_averaged_weights(name):
    config = optimizer_config(name=name, weight_decay=0.01, decay_mask=".", b1=0.9)
    c = config.optimizer
    if name == "schedule_free_sgd":  # sgd's decay is L2, as schedule_free_sgd's
        ref = optax.contrib.schedule_free_sgd(0.1, b1=0.9, weight_decay=0.01)
    else:
        ref = optax.contrib.schedule_free_adamw(0.1, b1=0.9, b2=c.b2, eps=c.eps,
                                                weight_decay=0.01)
    ours, _, our_state = run_updates(chain.create_optimizer(config, 0.1), params(), 3)
    theirs, _, ref_state = run_updates(ref, params(), 3)
    assert_trees_equal(ours, theirs)
    expected = optax.contrib.schedule_free_eval_params(ref_state, theirs[-1])
    assert_trees_equal(opt_state.eval_params(our_state, ours[-1]), expected)
    assert not np.allclose(expected["head"]["kernel"], ours[-1]["head"]["kernel"])


def test_schedule_free_eval_params_with_frozen_groups():
    config = optimizer_config(name="schedule_free_adamw", freeze="^conv/")
    trail, _, state = run_updates(chain.create_optimizer(config, 0.1), params(), 3)
    p = trail[-1]
    ev = opt_state.eval_params(state, p)
    assert_trees_equal(ev["conv"], params()["conv"])
    z = optax.tree.get(state, "z")  # the schedule-free state's z, MaskedNode where frozen
    assert isinstance(z["conv"]["kernel"], optax.MaskedNode)
    head = (p["head"]["kernel"] - (1 - 0.9) * z["head"]["kernel"]) / 0.9
    np.testing.assert_allclose(ev["head"]["kernel"], head, rtol=1e-6)


def test_accumulation_makes_one_update_from_the_mean_of_k_gradients():
    config = optimizer_config(name="sgd", momentum=0.9, nesterov=True, weight_decay=0.0,
                              accumulate_steps=3)

    def schedule(step):
        return 0.1 / (1.0 + step)

    p = params()
    trail, updates, _ = run_updates(chain.create_optimizer(config, schedule), p, 6)
    for i in (0, 1, 3, 4):
        assert not any(np.any(u) for u in jax.tree.leaves(updates[i])), i
    # The n-th update uses the schedule at its window's first train step, 3n.
    ref = optax.sgd(lambda n: schedule(3 * n), momentum=0.9, nesterov=True)
    state, q = ref.init(p), p
    for window in range(2):
        grads = [grads_at(3 * window + i, p) for i in range(3)]
        mean = jax.tree.map(lambda *g: sum(g) / 3, *grads)
        u, state = ref.update(mean, state, q)
        q = optax.apply_updates(q, u)
        assert_trees_equal(trail[3 * window + 2], q, rtol=1e-6, atol=1e-7)
    assert lr.steps_per_update(config) == 3
    config.optimizer.name = "sam"
    assert lr.steps_per_update(config) == 6


def test_adaptive_gradient_clipping_is_per_unit():
    config = optimizer_config(name="sgd", momentum=0.0, nesterov=False, weight_decay=0.0,
                              agc_clip=0.1)
    tx = chain.create_optimizer(config, 1.0)
    p = {"dense": {"kernel": jnp.array([[3.0, 0.0], [4.0, 1.0]]), "bias": jnp.array([0.0, 2.0])}}
    # kernel units are output columns: |w| = 5 and 1, so at most 0.5 and 0.1 of gradient norm.
    g = {"dense": {"kernel": jnp.array([[0.03, 1.0], [0.04, 0.0]]),
                   "bias": jnp.array([1.0, 1.0])}}
    u, _ = tx.update(g, tx.init(p), p)
    np.testing.assert_allclose(u["dense"]["kernel"], -np.array([[0.03, 0.1], [0.04, 0.0]]),
                               rtol=1e-6)
    # A vector (bias) is one unit: |b| = 2, so its gradient [1, 1] is scaled to norm 0.2.
    np.testing.assert_allclose(u["dense"]["bias"], -np.full(2, 0.2 / np.sqrt(2)), rtol=1e-5)
    # A unit of zero weights counts as norm 1e-3 (optax's eps), so it is clipped hard.
    p["dense"]["bias"] = jnp.zeros(2)
    u, _ = tx.update(g, tx.init(p), p)
    np.testing.assert_allclose(u["dense"]["bias"], -np.full(2, 1e-4 / np.sqrt(2)), rtol=1e-5)


@pytest.mark.parametrize("name", ["lamb", "lion", "lars", "sam", "schedule_free_adamw"])
def test_frozen_parameters_stay_bit_identical(name):
    config = optimizer_config(name=name, weight_decay=0.1, freeze="^conv/|^bn/",
                              accumulate_steps=2 if name == "lion" else 1)
    p = params()
    trail, _, _ = run_updates(chain.create_optimizer(config, 0.1), p, 4)
    assert_trees_equal({k: trail[-1][k] for k in ("conv", "bn")}, {k: p[k] for k in ("conv", "bn")})
    assert not np.array_equal(trail[-1]["head"]["kernel"], p["head"]["kernel"])


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_lr_multipliers_and_freezing_work_with_every_optimizer(name):
    """The first optimizer update of the bias group is exactly 3x larger with 'bias$=3'."""
    moves = {}
    steps = lr.steps_per_update(optimizer_config(name=name))
    for spec in ("", "bias$=3"):
        config = optimizer_config(name=name, weight_decay=0.0, freeze="^conv/",
                                  lr_multipliers=spec)
        trail, _, _ = run_updates(chain.create_optimizer(config, 0.01), params(), steps)
        moves[spec] = jax.tree.map(lambda a, b: a - b, trail[-1], params())
        assert not np.any(moves[spec]["conv"]["kernel"]), name
    np.testing.assert_allclose(moves["bias$=3"]["head"]["bias"], 3 * moves[""]["head"]["bias"],
                               rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(moves["bias$=3"]["head"]["kernel"], moves[""]["head"]["kernel"],
                               rtol=1e-5, atol=1e-9)
    assert np.any(moves[""]["head"]["bias"])


def test_bad_optimizer_values_fail_naming_the_key():
    for key, value in [("accumulate_steps", 0), ("agc_clip", -1.0), ("sam_rho", 0.0),
                       ("b1", 1.0), ("lars_trust", 0.0)]:
        config = load_config("smoke")
        config.optimizer[key] = value
        with pytest.raises(ConfigError, match=f"config.optimizer.{key}="):
            validate(config)
    with pytest.raises(ConfigError, match="sam_base='sam'.*sgd"):
        chain.create_optimizer(optimizer_config(name="sam", sam_base="sam"), 0.1)
    with pytest.raises(ConfigError, match="optimizer.name='lamb2'.*lion"):
        chain.create_optimizer(optimizer_config(name="lamb2"), 0.1)
    with pytest.raises(ConfigError, match="schedule.name='sgdr2'.*sgdr"):
        lr.schedule(schedule_config(name="sgdr2"), 10, 100)


# --- Reduce on plateau -----------------------------------------------------------------------

def plateau_state(config):
    from cv_jax.training.state import create_train_state

    model = ConvBN()
    variables = model.init(jax.random.key(0), jnp.ones((1, 8, 8, 3)))
    tx = chain.create_optimizer(config, lr.schedule(config, 10, 100))
    return create_train_state(model, tx, variables, jax.random.key_data(jax.random.key(1)))


def test_reduce_on_plateau_scales_updates_after_patience_evaluations():
    config = optimizer_config(name="sgd", momentum=0.0, nesterov=False, weight_decay=0.0,
                              learning_rate=1.0)
    config.schedule.update(name="reduce_on_plateau", decay_factor=0.5, plateau_patience=2,
                           plateau_metric="accuracy", end_factor=0.2)
    update = plateau.plateau_updater(config)
    state = plateau_state(config)
    scales = []
    for accuracy in (0.5, 0.6, 0.6, 0.55, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7):
        state = update(state, {"test_accuracy": accuracy, "test_loss": 1.0})
        scales.append(plateau.plateau_lr_scale(state.opt_state))
    # Improvements at 0.5, 0.6, 0.7; two evaluations without one halve the scale, floor 0.2.
    np.testing.assert_allclose(scales, [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.2, 0.2],
                               rtol=1e-6)
    grads = jax.tree.map(jnp.ones_like, state.params)
    new = state.apply_gradients(grads=grads)
    np.testing.assert_allclose(new.params["head"]["bias"], state.params["head"]["bias"] - 0.2,
                               rtol=1e-6)
    config.dataset.validation_size = 100
    with pytest.raises(ConfigError, match="validation_accuracy"):
        plateau.plateau_updater(config)(state, {"test_accuracy": 0.5})
    assert plateau.plateau_updater(schedule_config(name="cosine")) is None


def test_plateau_and_schedule_free_run_resumes_exactly_and_evaluates_averaged_weights(
        tiny_folder, cache_dir, tmp_path):
    """12 steps, evaluated every 6 (2 evaluations). rtol=1 makes every evaluation a
    non-improvement, so with patience 1 each one halves the LR. The split run stops at step 4,
    which is evaluated (for the report) but must not count as a plateau evaluation."""
    from conftest import tiny_config

    from cv_jax.data.sources import load_split
    from cv_jax.training import evaluation, runs, sharding, steps, train

    def config():
        c = tiny_config(tiny_folder, cache_dir, eval_every_epochs=1.0, num_devices=1)
        c.model = model_section("convnet", layers="conv:8,pool:max:2", fc="")
        c.optimizer.update(name="schedule_free_sgd", learning_rate=0.05, lr_multipliers="",
                           freeze="")
        c.schedule.update(name="reduce_on_plateau", decay_factor=0.5, plateau_patience=1,
                          plateau_rtol=1.0, end_factor=0.0)
        return c

    straight = train.train_and_evaluate(config(), str(tmp_path / "straight"))
    first = train.train_and_evaluate(config(), str(tmp_path / "split"), max_steps_this_run=4)
    assert first["steps"] == 4
    resumed = train.train_and_evaluate(config(), str(tmp_path / "split"))
    a, b = runs.load_run(str(tmp_path / "straight")), runs.load_run(str(tmp_path / "split"))
    assert_trees_equal(a.state.params, b.state.params)
    assert resumed["test_loss"] == straight["test_loss"]
    assert plateau.plateau_lr_scale(a.state.opt_state) == 0.5 ** 2
    # The reported test metrics are those of the schedule-free average x, not of y.
    test = load_split(str(tiny_folder), "test", cache_dir=cache_dir)
    settings = steps.EvalSettings.from_config(a.config)
    evaluator = evaluation.Evaluator(test, 16, settings, sharding.make_mesh())
    assert evaluator(opt_state.eval_state(a.state))["loss"] == pytest.approx(straight["test_loss"],
                                                                        rel=1e-6)
    assert evaluator(a.state)["loss"] != pytest.approx(straight["test_loss"], rel=1e-6)
