"""Knowledge distillation: the loss's closed form, alpha=0 is plain training, the teacher sees
the student's images at its own size and normalisation, and bad teachers are refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config, tiny_config

from cv_jax import models
from cv_jax.config import model_kwargs, model_section
from cv_jax.optim import chain, lr
from cv_jax.training import distill, losses, sharding, steps, train
from cv_jax.training.state import create_train_state, init_variables


def test_distillation_loss_is_t_squared_kl_of_the_softened_distributions():
    student = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    teacher = np.array([[2.0, 0.0, 1.0], [0.5, 0.5, 0.5]])
    t = 3.0

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = softmax(teacher / t), softmax(student / t)
    expected = t * t * np.sum(p * np.log(p / q), axis=-1)
    np.testing.assert_allclose(losses.distillation_loss(student, teacher, t), expected,
                               rtol=1e-6)
    assert np.allclose(losses.distillation_loss(teacher, teacher, t), 0.0, atol=1e-6)


def small_model_state(config, image_shape=(16, 16, 3), seed=0):
    model = models.create_model(config.model.name, num_classes=4,
                                **model_kwargs(config.model))
    key = jax.random.key_data(jax.random.key(seed))
    variables = init_variables(model, key, image_shape)
    tx = chain.create_optimizer(config, lr.schedule(config, 10, 10))
    return model, variables, create_train_state(model, tx, variables, key)


def teacher_from(model, variables, config, image_size=(16, 16), **kw):
    return distill.Teacher(variables={"params": variables["params"],
                                      "batch_stats": variables.get("batch_stats", {})},
                           apply_fn=model.apply, mean=tuple(config.dataset.mean),
                           std=tuple(config.dataset.std), image_size=image_size, **kw)


def test_alpha_zero_is_plain_training_and_alpha_one_uses_only_the_teacher():
    config = load_config("smoke")
    config.augment.update(crop_padding=0, flip=False)
    config.optimizer.lookahead_every = 0  # one step, from a state without a slow copy
    model, variables, state = small_model_state(config)
    settings = steps.TrainSettings.from_config(config, lambda c: 0.1)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 255, (8, 16, 16, 3), dtype=np.uint8),
             "label": rng.integers(0, 4, 8)}
    step = jax.jit(lambda s, b, t: steps.train_step(s, b, settings, t))
    plain, plain_metrics = step(state, batch, None)
    _, teacher_vars, _ = small_model_state(config, seed=1)
    off = teacher_from(model, teacher_vars, config, alpha=0.0)
    same, same_metrics = step(state, batch, off)
    assert float(same_metrics["loss"]) == pytest.approx(float(plain_metrics["loss"]), rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 same.params, plain.params)
    only = teacher_from(model, teacher_vars, config, alpha=1.0, temperature=2.0)
    _, metrics = step(state, batch, only)

    @jax.jit
    def expected_loss(x):
        student = model.apply(variables, x, train=True, mutable=["batch_stats"])[0]
        norm = settings.normalization
        return losses.distillation_loss(student, only.logits(x, norm.mean, norm.std), 2.0)

    expected = expected_loss(steps.normalize(batch["image"], settings.normalization))
    # Two separately compiled programs: float32 sums in another order (the KL is ~4e-3 here).
    assert float(metrics["loss"]) == pytest.approx(float(jnp.mean(expected)), rel=1e-4)


def test_teacher_sees_the_images_at_its_own_size_and_normalisation():
    config = load_config("smoke,model=resnet20")
    model, variables, _ = small_model_state(config, image_shape=(24, 24, 3))
    student_mean, student_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    teacher = teacher_from(model, variables, config, image_size=(24, 24))
    pixels = np.array([0.2, 0.6, 0.9], np.float32)  # a constant image resizes to itself
    x_student = np.broadcast_to((pixels - student_mean) / student_std, (2, 16, 16, 3))
    x_teacher = np.broadcast_to((pixels - np.array(config.dataset.mean)) /
                                np.array(config.dataset.std), (2, 24, 24, 3))
    logits = jax.jit(lambda x: teacher.logits(x, student_mean, student_std))
    direct = jax.jit(lambda x: model.apply(variables, x, train=False))
    np.testing.assert_allclose(logits(jnp.asarray(x_student)), direct(x_teacher), rtol=1e-4,
                               atol=1e-5)


def test_a_teacher_of_other_classes_is_refused(trained_run):
    config = load_config("smoke")
    config.distill.teacher = trained_run[0]
    with pytest.raises(distill.DistillError, match="was trained on classes"):
        distill.load_teacher(config, ("a", "b", "c", "d"), sharding.make_mesh())
    config.distill.teacher = ""
    assert distill.load_teacher(config, ("a",), sharding.make_mesh()) is None


def test_a_student_of_another_architecture_learns_from_a_run(trained_run, tiny_folder,
                                                            cache_dir, tmp_path):
    config = tiny_config(tiny_folder, cache_dir, num_epochs=1.0)
    config.model = model_section("convnet", layers="conv:8,pool:max:2,conv:8", fc="")
    config.dataset.image_size = (12, 12)  # the teacher was trained at 16x16
    config.distill.update(teacher=trained_run[0], checkpoint="latest", alpha=0.5)
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["steps"] == 6 and np.isfinite(results["test_loss"])
