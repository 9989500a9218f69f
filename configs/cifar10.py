"""CIFAR-10 recipes.

    python -m cv_jax.main --config=configs/cifar10.py --workdir=runs/c10
    python -m cv_jax.main --config=configs/cifar10.py:cpu,epochs=5 --workdir=runs/c10_cpu
    python -m cv_jax.main --config=configs/cifar10.py:model=resnet20,epochs=30 --workdir=...
    ... --config.optimizer.learning_rate=0.05   (any key below can be overridden)

Recipes (the bare word in the config string):
  headline  airbench94 (KellerJordan/cifar10-airbench legacy/airbench94.py): its net (whitening
            stem, conv-pool-BN-GELU groups), batch 1024, 9.9 epochs, Nesterov SGD at its step
            size, BN biases at 64x, whitening bias frozen after 3 epochs, Lookahead, label
            smoothing 0.2, alternating flips, flip+translate TTA at the end; bf16. For
            accelerators. docs/recipes-and-configs.md maps each ingredient to its key.
  cpu       the same recipe on a narrower net, batch 256, 7 epochs: about 15 minutes on a
            2-core CPU.
  cpu15     the best test accuracy in 15 minutes on a 2-core CPU: the net at widths 64/128/128
            (the cpu recipe's saturates), as many epochs as fit in 15 minutes on this machine
            (a time budget: minutes=15), evaluated once, at the end.
  smoke     a tiny net on a 512-image subset for a few steps: seconds, for tests.
  keras     the Keras example CIFAR-10 workflow: the small Keras CNN, RMSprop 1e-4, batch 32,
            ImageDataGenerator-style shifts and flips, up to 100 epochs with early stopping
            on a 5,000-image validation split (patience 10, best weights restored).
  timm      a modern regularisation stack on ResNet-18 (CIFAR stem): SGD+Nesterov, cosine with
            5 warmup epochs, label smoothing, mixup/CutMix, RandAugment, random erasing, 200 epochs.
  resnet_paper  He et al. 2016 (arXiv:1512.03385) section 4.2 on ResNet-20 (model=resnet32, 44,
            56 or 110 for the others): batch 128, SGD momentum 0.9, weight decay 1e-4, LR 0.1
            divided by 10 at 32k and 48k iterations, 64k iterations, 4-pixel pad-crop + flip,
            one view at test time; ResNet-110 warms up at 0.01 for 400 iterations, as the paper.
With no recipe named, 'headline' runs on GPU/TPU and 'cpu' on a CPU backend.
Any other model (model=resnet20, ...) gets the classic He et al. SGD recipe instead:
lr 0.1 per 128 images, momentum 0.9, weight decay 5e-4, 4-pixel pad-and-crop + flip.

Shortcuts: model, epochs, steps, batch_size, lr, seed, data_dir, dtype, minutes.
  minutes=14  train as many epochs as fit in 14 minutes on this machine, timed before the run
              (config.training.time_budget_minutes; the recipe's schedule is scaled to them;
              epochs= or steps= alone turn a recipe's budget off):
              python -m cv_jax.main --config=configs/cifar10.py:cpu,minutes=14 --workdir=...

Recipe toolkit (any recipe; every key is off at its default). --explain=SECTION prints every key
of a config section (or of all of them: --explain=all) with its value in this config, its
default, the values it accepts and what it does, without training:
  python -m cv_jax.main --config=configs/cifar10.py:cpu --explain=optimizer
  --config.optimizer.name=sgd|adam|adamw|rmsprop|adagrad|adadelta|lamb|lars|lion|sam|
      schedule_free_sgd|schedule_free_adamw
  --config.optimizer.sam_base=sgd --config.optimizer.sam_rho=0.05   (one SAM update = 2 steps)
  --config.optimizer.accumulate_steps=4  --config.optimizer.agc_clip=0.01
  --config.schedule.name=multistep --config.schedule.boundaries='(100,150)'  (0.1->0.01->0.001)
  --config.schedule.name=sgdr --config.schedule.cycle_epochs=10 --config.schedule.cycle_mult=2
  --config.schedule.name=reduce_on_plateau --config.schedule.plateau_patience=5
  --config.augment.rotation_range=15 --config.augment.zoom_range=0.1 (Keras ImageDataGenerator
      names: width/height_shift_range, shear_range, fill_mode, brightness_range, ...)
  --config.augment.auto_augment=randaugment|trivialaugment_wide  --config.augment.erasing_prob=0.25
  --config.mixup.mixup_alpha=0.2 --config.mixup.cutmix_alpha=1.0 --config.loss.label_smoothing=0.1
  --config.loss.l2_penalty=5e-4 (vs optimizer.weight_decay)  --config.noise.input_std=0.1
  --config.loss.class_weights=balanced  --config.dataset.balance=oversample
  --config.dataset.imbalance_ratio=100   (long-tailed CIFAR-10)
  --config.early_stopping.patience=10 --config.early_stopping.monitor=validation_loss
      --config.dataset.validation_size=5000   (Keras EarlyStopping: mode, min_delta,
      start_epoch, restore_best; monitor '' = the best-checkpoint metric)
  --config.training.ema_decay=0.999 --config.training.best_by_ema=True
  --config.data_seed=0   (the example order, fixed while config.seed changes init/augmentation)
  --config.dataset.classes=0-4   (a subset of the classes, relabelled; or 'cat,dog')
  --config.transfer.init_from=runs/source --config.transfer.mode=linear_probe|finetune|
      discriminative|staged  (backbone_lr_multiplier, frozen_epochs, checkpoint, weights)
  --config.distill.teacher=runs/teacher --config.distill.alpha=0.9 --config.distill.temperature=4
  --config.dataset.num_folds=5 --config.dataset.fold=0   (k-fold; make cv runs every fold)
  --config.dataset.num_labelled=4000   (class-balanced labelled subset; make pseudo-label)
  --config.dataset.resample_seed=0     (bootstrap resample; make ensemble)
  --config.dataset.pipeline=streaming  (Grain streams the training set; 'auto' picks; docs/data.md)
  python -m cv_jax.tools.schedules --config=configs/cifar10.py:cpu --out=lr.png  (LR plot)
  python -m cv_jax.workflows.lr_find --config=configs/cifar10.py:cpu             (range test)
  python -m cv_jax.tools.augmentations --config=configs/cifar10.py:cpu --out=grid.png

Models (`python -m cv_jax.models` lists them with parameters and GFLOPs; `python -m cv_jax.models
NAME` shows one layer by layer). Plain names are the ImageNet forms, built like torchvision's
(resnet18, vgg16_bn, densenet121, googlenet, alexnet); the *_cifar names are the 32x32 forms
(resnet18_cifar, vgg11_bn_cifar, googlenet_cifar, alexnet_cifar); CIFAR-only designs have one
name (lenet5, keras_cifar_cnn, resnet20..110, preact_resnet18, wrn28_10, wrn16_8,
densenet_bc_100_12, airbench). Every field of the chosen model is a key of config.model.

The configurable ConvNet (model=convnet) takes every CNN hyper-parameter from config.model:
  --config.model.layers="conv:32,conv:32:k5:s2:valid,pool:max:3:s2,dropout:0.25,conv:64"
      conv:FILTERS[:kK][:sS][:same|:valid]  KxK conv, stride S, zero padding on (same) or off
      pool:max|avg:SIZE[:sS]                pooling; stride S < SIZE overlaps (AlexNet)
      dropout:RATE
  --config.model.fc="512,256"               hidden dense widths ("" = none)
  --config.model.flatten=flatten|avg|max    how the feature map becomes a vector
  --config.model.activation=relu|leaky_relu:0.1|elu|gelu|tanh|sigmoid|selu|silu|mish|...
  --config.model.kernel_init=he_normal[:fan_in|fan_out|fan_avg]|he_uniform|glorot_normal|
      glorot_uniform|lecun_normal|lecun_uniform|normal:STD|truncated_normal:STD|uniform:LIMIT
  --config.model.batch_norm=True|False  --config.model.fc_dropout=0.5
"""

import jax

from cv_jax.config import apply_shortcuts, base_config, model_section, parse_arg

RECIPES = ("headline", "cpu", "cpu15", "smoke", "keras", "timm", "resnet_paper")
# The CIFAR ResNets of He et al. (2016), section 4.2, trained by resnet_paper.
PAPER_RESNETS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")
# airbench keeps the whitening filters and BatchNorm scales fixed; only biases of BN learn.
AIRBENCH_FREEZE = r"whiten/kernel|scale$"
# airbench94's optimizer hyper-parameters (KellerJordan/cifar10-airbench, legacy/airbench94.py),
# in its own units: lr and weight_decay per 1024 examples of a summed loss (airbench_step).
AIRBENCH94 = dict(lr=11.5, momentum=0.85, weight_decay=0.0153, bias_scaler=64.0,
                  label_smoothing=0.2, whiten_bias_epochs=3, epochs=9.9)


def get_config(arg=None):
    arg = parse_arg(arg, recipes=RECIPES, model="", epochs=0.0, steps=0, batch_size=0, lr=0.0,
                    seed=0, data_dir="", dtype="", minutes=0.0)
    config = base_config()
    config.recipe, config.recipe_reason = _choose_recipe(arg.recipe)
    {"headline": _headline, "cpu": _cpu, "cpu15": _cpu15, "smoke": _smoke, "keras": _keras,
     "timm": _timm, "resnet_paper": _resnet_paper}[config.recipe](config)
    if arg.model and arg.model != config.model.name:
        if config.recipe == "resnet_paper":
            _resnet_paper(config, arg.model)
        else:
            _classic_sgd(config, arg.model)
    apply_shortcuts(config, arg)
    return config


def _choose_recipe(named):
    if named:
        return named, "named in the config string"
    backend = jax.default_backend()
    recipe = "cpu" if backend == "cpu" else "headline"
    return recipe, f"no recipe named; the JAX backend is {backend}"


def airbench_step(batch_size, lr, momentum, weight_decay):
    """airbench's learning rate and weight decay as this codebase's: ``(learning_rate, l2)`` of
    SGD on the mean loss over ``batch_size`` images.

    airbench states them per 1024 examples ("decoupled", after myrtle.ai): PyTorch SGD on the
    *summed* loss at ``lr / (1024 * k)`` with ``k = 1 + 1 / (1 - momentum)`` (Nesterov's
    step-size gain), and a coupled weight decay whose step, ``lr_torch * wd_torch``, is
    ``weight_decay * batch_size / (1024 * k)``. On the mean loss the same update is made by
    ``learning_rate = lr * batch_size / (1024 * k)`` and ``l2 = weight_decay / lr``.
    """
    k = 1 + 1 / (1 - momentum)
    return lr * batch_size / (1024 * k), weight_decay / lr


def _airbench_optimizer(config, epochs):
    """airbench94's optimizer and training-side conventions: Nesterov SGD at airbench's step
    size (``airbench_step``), coupled weight decay on every trained
    parameter with the same decay per step for every group, BatchNorm biases at 64 x the
    learning rate, the whitening bias frozen after 3 epochs, Lookahead every 5 steps, the
    one-cycle triangle 0.2 -> 1 -> 0.07 (peak at 23%), label smoothing 0.2, alternating flips
    and 2-pixel reflect translations, flip TTA."""
    hyp = AIRBENCH94
    lr, l2 = airbench_step(config.training.batch_size, hyp["lr"], hyp["momentum"],
                           hyp["weight_decay"])
    config.optimizer.update(
        name="sgd", learning_rate=lr, momentum=hyp["momentum"], nesterov=True,
        weight_decay=l2, decay_mask=".*", decay_ignores_multipliers=True,
        freeze=AIRBENCH_FREEZE, lr_multipliers=rf"norm\d/bias$={hyp['bias_scaler']:g}",
        freeze_after=f"whiten/bias={hyp['whiten_bias_epochs']}", lookahead_every=5,
        lookahead_decay=0.95**5, lookahead_power=3.0)
    config.schedule.update(name="linear", warmup_fraction=0.23, warmup_init_factor=0.2,
                           end_factor=0.07)
    config.loss.label_smoothing = hyp["label_smoothing"]
    config.augment.update(crop_padding=2, padding_mode="reflect", flip=True,
                          flip_mode="alternate")
    config.eval.tta_flip = True
    config.training.num_epochs = epochs


def _headline(config):
    """airbench94: its net, optimizer, 9.9 epochs at batch 1024, evaluated once at the end."""
    config.model = model_section("airbench")
    config.training.update(batch_size=1024, compute_dtype="bfloat16", log_every_steps=10,
                           eval_every_epochs=1000.0)
    _airbench_optimizer(config, epochs=AIRBENCH94["epochs"])
    config.eval.update(tta_translate=1, batch_size=2000)  # airbench94's TTA: + translations


def _cpu(config):
    config.model = model_section("airbench", widths=(32, 64, 64))
    config.training.update(batch_size=256, log_every_steps=20)
    _airbench_optimizer(config, epochs=7.0)


def _cpu15(config):
    """At 15 minutes on the Intel machine of experiments/speed/RESULTS.md, the cpu recipe's
    32/64/64 net reached 83.24% in 21.9 epochs (7 epochs: 83.08%), and 64/128/128 85.40% in
    8.9 (this recipe: the same, in 13:17 for the whole `make train`). Evaluating only at the
    end leaves that time to training; a checkpoint every 200 steps keeps a crash from losing
    the run."""
    config.model = model_section("airbench", widths=(64, 128, 128))
    config.training.update(batch_size=256, log_every_steps=20, time_budget_minutes=15.0,
                           eval_every_epochs=1000.0, checkpoint_every_steps=200)
    _airbench_optimizer(config, epochs=7.0)  # the schedule's shape, scaled


def _smoke(config):
    config.model = model_section("airbench", widths=(8, 16, 16))
    config.dataset.update(max_train_examples=512, max_eval_examples=256)
    config.training.update(batch_size=64, log_every_steps=2, eval_every_epochs=1.0)
    config.model_init_examples = 512
    _airbench_optimizer(config, epochs=2.0)
    config.eval.batch_size = 128


def _keras(config):
    """keras-team/keras examples/cifar10_cnn.py: RMSprop(lr=1e-4), batch 32, 100 epochs,
    ImageDataGenerator(width_shift_range=0.1, height_shift_range=0.1, horizontal_flip=True)."""
    config.model = model_section("keras_cifar_cnn")
    config.training.update(batch_size=32, num_epochs=100.0, log_every_steps=200)
    config.optimizer.update(name="rmsprop", learning_rate=1e-4, rho=0.9, eps=1e-7, momentum=0.0,
                            nesterov=False, weight_decay=0.0, freeze="", lr_multipliers="")
    config.schedule.update(name="constant", warmup_epochs=0.0)
    config.augment.update(crop_padding=0, flip=True, width_shift_range=0.1,
                          height_shift_range=0.1, fill_mode="nearest")
    # model.fit(validation_split=0.1, callbacks=[EarlyStopping("val_loss", patience=10,
    # restore_best_weights=True)]): 5,000 training images held out to stop on.
    config.dataset.validation_size = 5000
    config.early_stopping.update(monitor="validation_loss", patience=10, restore_best=True)


def _timm(config):
    """Mixup/CutMix (switch 0.5) with label smoothing, RandAugment(2, 9), random erasing 0.25,
    SGD + Nesterov at 0.1 per 128 images, cosine with 5 warmup epochs, weight decay 5e-4."""
    _classic_sgd(config, "resnet18_cifar")
    config.training.num_epochs = 200.0
    config.schedule.update(warmup_epochs=5.0, warmup_init_factor=0.01)
    config.loss.label_smoothing = 0.1
    config.mixup.update(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5)
    config.augment.update(auto_augment="randaugment", randaugment_num_ops=2,
                          randaugment_magnitude=9, erasing_prob=0.25)


def _resnet_paper(config, model="resnet20"):
    """He et al. 2016, section 4.2: "a weight decay of 0.0001 and momentum of 0.9 ... a
    mini-batch size of 128 ... We start with a learning rate of 0.1, divide it by 10 at 32k and
    48k iterations, and terminate training at 64k iterations"; for ResNet-110, 0.01 "until the
    training error is below 80% (about 400 iterations)", then 0.1. The boundaries are in epochs
    of CIFAR-10's 50,000 training images (390 steps). Weight decay on every parameter, as
    PyTorch's SGD ``weight_decay`` applies it; single-view evaluation."""
    if model not in PAPER_RESNETS:
        raise ValueError(f"resnet_paper trains {', '.join(PAPER_RESNETS)}; got model={model!r}")
    config.model = model_section(model, shortcut="A")
    config.training.update(batch_size=128, num_steps=64_000, eval_every_epochs=10.0,
                           checkpoint_every_steps=1000, log_every_steps=100)
    config.optimizer.update(name="sgd", learning_rate=0.1, momentum=0.9, nesterov=False,
                            weight_decay=1e-4, decay_mask=".*", freeze="", lr_multipliers="")
    spe = 50_000 // 128
    boundaries, factors = (32_000 / spe, 48_000 / spe), (0.1, 0.1)
    if model == "resnet110":
        config.optimizer.learning_rate = 0.01
        boundaries, factors = (400 / spe, *boundaries), (10.0, *factors)
    config.schedule.update(name="multistep", boundaries=boundaries, decay_factors=factors,
                           warmup_epochs=0.0, warmup_fraction=0.0)
    config.loss.label_smoothing = 0.0
    config.augment.update(crop_padding=4, padding_mode="constant", flip=True)
    config.eval.update(tta_flip=False, tta_translate=0)


def _classic_sgd(config, model):
    """He et al. (2016) CIFAR recipe, scaled linearly with the batch size."""
    config.model = model_section(model)
    batch = config.training.batch_size
    config.optimizer.update(name="sgd", learning_rate=0.1 * batch / 128, momentum=0.9,
                            nesterov=True, weight_decay=5e-4, freeze="", lr_multipliers="")
    config.schedule.update(name="cosine", warmup_epochs=1.0, warmup_fraction=0.0,
                           warmup_init_factor=0.1, end_factor=0.0)
    config.loss.label_smoothing = 0.0
    config.augment.update(crop_padding=4, padding_mode="constant", flip=True)
    config.eval.tta_flip = False
