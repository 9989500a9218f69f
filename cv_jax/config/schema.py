"""The default config tree and the range of values each key accepts."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import ml_collections as mlc

from cv_jax.config.values import parse_fill_value

# optimizer.name: the update rules, and the wrappers among them (cv_jax/optim/chain.py).
OPTIMIZERS = ("adadelta", "adagrad", "adam", "adamw", "lamb", "lars", "lion", "rmsprop", "sam",
              "schedule_free_adamw", "schedule_free_sgd", "sgd")
WRAPPERS = ("sam", "schedule_free_sgd", "schedule_free_adamw")
# dataset.bad_files: what loading does with files it cannot decode (cv_jax/data/sources.py).
BAD_FILES_POLICIES = ("strict", "skip")
# augment: keys a Keras or torchvision user may reach for, and what this config calls them.
AUGMENT_KEY_HINTS = {"horizontal_flip": "flip", "random_erasing": "erasing_prob",
                     "randaugment": "auto_augment='randaugment'",
                     "brightness": "brightness_range"}


def _is_regex(value: str) -> bool:
    try:
        re.compile(value)
    except re.error:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class Check:
    """One validation rule: the dotted key, a predicate on its value, and what is allowed."""

    key: str
    ok: Any
    allowed: str


_MONITOR = r"(validation|test)(_ema)?_(balanced_accuracy|accuracy|loss)"

_CHECKS = (
    Check("seed", lambda v: v >= 0, "an integer >= 0"),
    Check("data_seed", lambda v: v >= -1, "an integer >= 0, or -1 for the same as seed"),
    Check("model_init_examples", lambda v: v >= 1, "a positive number of training images"),
    Check("training.batch_size", lambda v: v > 0, "a positive integer"),
    Check("training.num_epochs", lambda v: v >= 0, "a number >= 0"),
    Check("training.num_steps", lambda v: v >= 0, "an integer >= 0 (0: use num_epochs)"),
    Check("training.time_budget_minutes", lambda v: v >= 0, "a number of minutes >= 0 (0: off)"),
    Check("training.eval_every_epochs", lambda v: v > 0, "a positive number of epochs"),
    Check("training.log_every_steps", lambda v: v > 0, "a positive integer"),
    Check("training.keep_checkpoints", lambda v: v >= 1, "an integer >= 1"),
    Check("training.checkpoint_every_steps", lambda v: v >= 0 and v == int(v),
          "an integer >= 0 (0: only at evaluations)"),
    Check("training.compute_dtype", lambda v: v in ("float32", "bfloat16", "float16"),
          "'float32', 'bfloat16' or 'float16'"),
    Check("training.num_devices", lambda v: v >= 0, "an integer >= 0 (0: every device)"),
    Check("training.ema_decay", lambda v: 0 <= v < 1, "a number in [0, 1) (0: off)"),
    Check("training.best_mode", lambda v: v in ("max", "min"), "'max' or 'min'"),
    Check("training.nonfinite", lambda v: v in ("stop", "skip"),
          "'stop' (raise at a non-finite loss or gradient) or 'skip' (leave that step out)"),
    Check("training.max_consecutive_skips", lambda v: v >= 1, "an integer >= 1"),
    Check("training.cpu_formulations", lambda v: v in ("auto", "on", "off"),
          "'auto' (on when training on a CPU), 'on' or 'off'"),
    Check("transfer.checkpoint", lambda v: v in ("best", "latest"), "'best' or 'latest'"),
    Check("transfer.weights", lambda v: v in ("raw", "ema"), "'raw' or 'ema'"),
    Check("transfer.mode",
          lambda v: v in ("linear_probe", "finetune", "discriminative", "staged"),
          "one of 'linear_probe', 'finetune', 'discriminative', 'staged'"),
    Check("transfer.backbone_lr_multiplier", lambda v: v >= 0, "a number >= 0"),
    Check("transfer.frozen_epochs", lambda v: v >= 0, "a number of epochs >= 0"),
    Check("transfer.batch_norm", lambda v: v in ("auto", "train", "frozen"),
          "'auto', 'train' or 'frozen'"),
    Check("distill.checkpoint", lambda v: v in ("best", "latest"), "'best' or 'latest'"),
    Check("distill.weights", lambda v: v in ("raw", "ema"), "'raw' or 'ema'"),
    Check("distill.alpha", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    Check("distill.temperature", lambda v: v > 0, "a positive number"),
    Check("early_stopping.patience", lambda v: v >= 0, "an integer >= 0 (0: off)"),
    Check("early_stopping.monitor",
          lambda v: v == "" or re.fullmatch(_MONITOR, v),
          "'' or '<validation|test>[_ema]_<accuracy|balanced_accuracy|loss>'"),
    Check("early_stopping.mode", lambda v: v in ("auto", "max", "min"), "'auto', 'max' or 'min'"),
    Check("early_stopping.min_delta", lambda v: v >= 0, "a number >= 0"),
    Check("early_stopping.start_epoch", lambda v: v >= 0, "a number of epochs >= 0"),
    Check("optimizer.learning_rate", lambda v: v >= 0, "a number >= 0"),
    Check("optimizer.momentum", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    Check("optimizer.weight_decay", lambda v: v >= 0, "a number >= 0"),
    Check("optimizer.grad_clip_norm", lambda v: v >= 0, "a number >= 0 (0: off)"),
    Check("optimizer.agc_clip", lambda v: v >= 0, "a number >= 0 (0: off)"),
    Check("optimizer.accumulate_steps", lambda v: v >= 1, "an integer >= 1 (1: off)"),
    Check("optimizer.b1", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    Check("optimizer.b2", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    Check("optimizer.rho", lambda v: 0 < v < 1, "a number in (0, 1)"),
    Check("optimizer.eps", lambda v: v >= 0, "a number >= 0"),
    Check("optimizer.sam_rho", lambda v: v > 0, "a number > 0"),
    Check("optimizer.lars_trust", lambda v: v > 0, "a number > 0"),
    Check("schedule.warmup_epochs", lambda v: v >= 0, "a number of epochs >= 0"),
    Check("schedule.warmup_init_factor", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    Check("schedule.end_factor", lambda v: v >= 0, "a number >= 0"),
    Check("schedule.decay_factor", lambda v: 0 < v <= 1, "a number in (0, 1]"),
    Check("schedule.boundaries",
          lambda v: all(b > 0 for b in v) and list(v) == sorted(set(v)),
          "strictly increasing positive epochs, e.g. (30, 60, 80)"),
    Check("schedule.decay_factors", lambda v: all(f > 0 for f in v),
          "factors > 0, one per boundary, e.g. (0.1, 0.1); () = decay_factor at each"),
    Check("schedule.power", lambda v: v > 0, "a number > 0"),
    Check("schedule.cycle_epochs", lambda v: v > 0, "a positive number of epochs"),
    Check("schedule.cycle_mult", lambda v: v >= 1, "a number >= 1"),
    Check("schedule.plateau_metric", lambda v: v in ("loss", "accuracy"),
          "'loss' or 'accuracy'"),
    Check("schedule.plateau_patience", lambda v: v >= 0, "an integer >= 0"),
    Check("schedule.plateau_cooldown", lambda v: v >= 0, "an integer >= 0"),
    Check("schedule.plateau_rtol", lambda v: 0 < v <= 1, "a number in (0, 1]"),
    Check("loss.label_smoothing", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    Check("loss.aux_weight", lambda v: v >= 0, "a number >= 0"),
    Check("loss.l2_penalty", lambda v: v >= 0, "a number >= 0 (0: off)"),
    Check("loss.activity_l1", lambda v: v >= 0, "a number >= 0 (0: off)"),
    Check("loss.activity_l2", lambda v: v >= 0, "a number >= 0 (0: off)"),
    Check("loss.activity_layers", _is_regex, "a regular expression over module paths"),
    Check("mixup.mixup_alpha", lambda v: v >= 0, "a number >= 0 (0: off)"),
    Check("mixup.cutmix_alpha", lambda v: v >= 0, "a number >= 0 (0: off)"),
    Check("mixup.prob", lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    Check("mixup.switch_prob", lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    Check("mixup.off_epoch", lambda v: v >= 0, "a number of epochs >= 0 (0: never off)"),
    Check("noise.input_std", lambda v: v >= 0, "a number >= 0 (0: off)"),
    Check("noise.weight_std", lambda v: v >= 0, "a number >= 0 (0: off)"),
    Check("augment.crop_padding", lambda v: v >= 0, "an integer >= 0 (0: off)"),
    Check("augment.padding_mode", lambda v: v in ("reflect", "constant", "edge"),
          "'reflect', 'constant' or 'edge'"),
    Check("augment.rotation_range", lambda v: 0 <= v <= 180, "degrees in [0, 180] (0: off)"),
    Check("augment.width_shift_range", lambda v: 0 <= v <= 1,
          "a fraction of the width in [0, 1] (0: off)"),
    Check("augment.height_shift_range", lambda v: 0 <= v <= 1,
          "a fraction of the height in [0, 1] (0: off)"),
    Check("augment.zoom_range", lambda v: 0 <= v < 1,
          "z in [0, 1): zoom factors ~ U(1-z, 1+z) (0: off)"),
    Check("augment.shear_range", lambda v: 0 <= v < 90, "degrees in [0, 90) (0: off)"),
    Check("augment.fill_mode", lambda v: v in ("constant", "nearest", "reflect", "wrap"),
          "'constant', 'nearest', 'reflect' or 'wrap'"),
    Check("augment.cval", lambda v: 0 <= v <= 255, "a pixel value in [0, 255]"),
    Check("augment.brightness_range",
          lambda v: len(v) == 0 or (len(v) == 2 and 0 <= v[0] <= v[1]),
          "() for off, or a pair (lo, hi) with 0 <= lo <= hi, e.g. (0.8, 1.2)"),
    Check("augment.contrast", lambda v: v >= 0, "a number >= 0 (0: off)"),
    Check("augment.saturation", lambda v: v >= 0, "a number >= 0 (0: off)"),
    Check("augment.hue", lambda v: 0 <= v <= 0.5, "a number of turns in [0, 0.5] (0: off)"),
    Check("augment.channel_shift_range", lambda v: 0 <= v <= 255,
          "a pixel intensity in [0, 255] (0: off)"),
    Check("augment.auto_augment", lambda v: v in ("", "randaugment", "trivialaugment_wide"),
          "'' (off), 'randaugment' or 'trivialaugment_wide'"),
    Check("augment.randaugment_num_ops", lambda v: v >= 0 and v == int(v),
          "an integer >= 0"),
    Check("augment.randaugment_magnitude", lambda v: 0 <= v <= 30 and v == int(v),
          "an integer bin in [0, 30] (torchvision's 31 magnitude bins)"),
    Check("augment.cutout_size", lambda v: v >= 0 and v == int(v),
          "an integer side in pixels >= 0 (0: off)"),
    Check("augment.erasing_prob", lambda v: 0 <= v <= 1, "a probability in [0, 1] (0: off)"),
    Check("augment.erasing_area", lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1,
          "a pair of fractions of the image area, 0 < lo <= hi <= 1"),
    Check("augment.erasing_aspect", lambda v: len(v) == 2 and 0 < v[0] <= v[1],
          "a pair of aspect ratios (height/width), 0 < lo <= hi"),
    Check("augment.erasing_value",
          lambda v: parse_fill_value(v) != "",
          "a pixel value in 0..255 written as text ('0') or 'random'"),
    Check("eval.batch_size", lambda v: v > 0, "a positive integer"),
    Check("eval.tta_translate", lambda v: v >= 0 and v == int(v),
          "pixels, an integer >= 0 (0: off; airbench uses 1)"),
    Check("dataset.normalization", lambda v: v in ("given", "featurewise"),
          "'given' (dataset.mean/std) or 'featurewise' (computed from the training set)"),
    Check("dataset.imbalance_ratio", lambda v: v >= 1, "a number >= 1 (1: as is)"),
    Check("dataset.bad_files",
          lambda v: v in BAD_FILES_POLICIES,
          "'strict' (stop, listing every bad file) or 'skip' (leave them out and report them)"),
    Check("dataset.balance", lambda v: v in ("", "oversample", "undersample"),
          "'', 'oversample' or 'undersample'"),
    Check("dataset.validation_size", lambda v: v >= 0, "an integer >= 0 (0: no validation)"),
    Check("dataset.name", lambda v: v != "", "a dataset name, e.g. 'cifar10'"),
    Check("dataset.image_size", lambda v: len(v) == 0 or (len(v) == 2 and min(v) > 0),
          "() (keep the source size) or (height, width) in pixels > 0"),
    Check("dataset.max_train_examples", lambda v: v >= 0, "an integer >= 0 (0: all)"),
    Check("dataset.max_eval_examples", lambda v: v >= 0, "an integer >= 0 (0: all)"),
    Check("dataset.mean", lambda v: len(v) > 0 and all(0 <= m <= 1 for m in v),
          "per-channel means of images scaled to [0, 1], e.g. (0.491, 0.482, 0.447)"),
    Check("dataset.std", lambda v: len(v) > 0 and all(s > 0 for s in v),
          "per-channel standard deviations > 0, e.g. (0.247, 0.243, 0.262)"),
    Check("dataset.num_folds", lambda v: v == 0 or v >= 2, "0 (off) or a number of folds >= 2"),
    Check("dataset.fold", lambda v: v >= 0, "a fold index in 0..num_folds-1"),
    Check("dataset.num_labelled", lambda v: v >= 0,
          "an integer >= 0 (0: every training example labelled)"),
    Check("dataset.labelled_seed", lambda v: v >= 0, "an integer seed >= 0"),
    Check("dataset.resample_seed", lambda v: v >= -1,
          "-1 (off) or a seed >= 0 for the resampled training set"),
)


# Top-level sections read by the multirun workflows, which check their own keys.
WORKFLOW_SECTIONS = ("crossval", "ensemble", "pseudo_label")


def base_config() -> mlc.ConfigDict:
    """Every key a run reads, with neutral defaults; recipe files override what they need."""
    c = mlc.ConfigDict()
    c.recipe = ""
    c.recipe_reason = ""
    c.seed = 0  # model init, dropout and augmentation keys
    c.data_seed = -1  # the order of the training examples; -1: the same as seed
    c.model_init_examples = 5000  # training images a data-dependent init may look at

    c.dataset = mlc.ConfigDict(dict(
        name="cifar10",
        data_dir="",  # '' = search (see cv_jax/data/locate.py); or a path, or 'tfds:NAME'
        cache_dir="",  # '' = $CV_JAX_CACHE or ~/.cache/cv_jax
        train_split="train",
        test_split="test",
        image_size=(),  # () = keep the source size; (H, W) resizes every image
        # Undecodable/truncated/oversized image files: 'strict' stops with one error listing
        # them (and empty class folders); 'skip' leaves them out and lists them in results.json.
        bad_files="strict",
        classes="",  # a subset, relabelled 0..k-1: '0-4', '5,7' or 'cat,dog'; '' = all
        validation_size=0,  # examples carved from train (same ones every run) for model selection
        max_train_examples=0,  # 0 = all; else a fixed random subset (quick runs)
        max_eval_examples=0,
        imbalance_ratio=1.0,  # > 1: long-tailed train set, largest / smallest class count
        balance="",  # '' | 'oversample' | 'undersample': equal class counts, resampled once
        normalization="given",  # 'given': mean/std below; 'featurewise': from the train set
        mean=(0.4914, 0.4822, 0.4465),  # per-channel, of images scaled to [0, 1]
        std=(0.2470, 0.2435, 0.2616),
        # k-fold cross-validation (cv_jax.workflows.crossval): fold `fold` of the training set
        # (after
        # max_train_examples) is the validation split, the other folds train; 0 = off.
        num_folds=0,
        fold=0,
        stratified_folds=True,  # the same class mix in every fold (counts differ by <= 1)
        # Semi-supervised (cv_jax.workflows.pseudo_label): train on a class-balanced labelled
        # subset of
        # this many examples (fixed by labelled_seed), plus the pseudo-labelled examples listed
        # in the .npz `pseudo_labels` (indices into the training set, labels); 0 = all labelled.
        num_labelled=0,
        labelled_seed=0,
        pseudo_labels="",
        # Bagging / boosting (cv_jax.workflows.ensemble): >= 0 replaces the training set by as many
        # draws
        # with replacement, fixed by this seed; uniform (a bootstrap sample), or in proportion
        # to the per-example weights in `resample_weights` (.npy, or .npz array 'weights').
        # -1 = off.
        resample_seed=-1,
        resample_weights="",
    ))
    c.model = mlc.ConfigDict({"name": ""})
    c.optimizer = mlc.ConfigDict(dict(
        # sgd | adam | adamw | rmsprop | adagrad | adadelta | lamb | lars | lion | sam |
        # schedule_free_sgd | schedule_free_adamw (cv_jax/optim/chain.py explains each)
        name="sgd",
        learning_rate=0.1,  # the peak of the schedule
        momentum=0.9,  # sgd/rmsprop/lars; 0 = plain SGD
        nesterov=True,
        # b1, b2: adam/adamw/lamb/lion moments (lion paper: b2=0.99); b1 is also the
        # schedule_free_* interpolation constant. eps: adam-family/rmsprop/adagrad/lars.
        b1=0.9, b2=0.999, eps=1e-8, rho=0.9,
        weight_decay=5e-4,  # decoupled for adamw/lamb/lars/lion/schedule_free_adamw, else L2
        decay_mask="kernel$",  # regex over parameter paths that receive weight decay
        grad_clip_norm=0.0,  # clip the global gradient norm to this; 0 = off
        agc_clip=0.0,  # adaptive (unit-wise) gradient clipping ratio, NFNet-style 0.01; 0 = off
        accumulate_steps=1,  # average k mini-batch gradients per update (optax.MultiSteps); 1 = off
        sam_base="sgd",  # sam: the optimizer SAM wraps (any name above except the wrappers)
        sam_rho=0.05,  # sam: radius of the adversarial step (Foret et al.: 0.05)
        lars_trust=0.001,  # lars: trust coefficient
        freeze="",  # regex of parameters that never change ('' = none)
        lr_multipliers="",  # 'REGEX=FACTOR,...' per-group learning-rate factors
    ))
    c.schedule = mlc.ConfigDict(dict(
        # constant | multistep (= piecewise) | exponential | cosine | linear | polynomial |
        # sgdr | reduce_on_plateau (cv_jax/optim/schedules.py explains each)
        name="cosine",
        warmup_epochs=0.0,
        warmup_init_factor=0.0,  # warmup starts at this fraction of the peak LR
        # cosine/linear/polynomial/sgdr end at end_factor * peak; reduce_on_plateau's floor
        end_factor=0.0,
        boundaries=(),  # multistep: epochs at which the LR is multiplied by a factor
        decay_factors=(),  # multistep: one factor per boundary; () = decay_factor at each
        # multistep factor at each boundary; exponential: factor per epoch; reduce_on_plateau
        decay_factor=0.1,
        staircase=False,  # exponential: decay once per epoch (True) instead of every step
        power=2.0,  # polynomial: (1 - t/T)^power from peak to end_factor * peak; 1 = linear
        cycle_epochs=10.0,  # sgdr: length of the first cosine cycle, in epochs
        cycle_mult=1.0,  # sgdr: each cycle is this many times longer than the previous
        plateau_metric="loss",  # reduce_on_plateau: eval 'loss' or 'accuracy' to watch
        plateau_patience=5,  # reduce_on_plateau: evaluations without improvement before decay
        plateau_cooldown=0,  # reduce_on_plateau: evaluations to wait after a decay
        plateau_rtol=1e-4,  # reduce_on_plateau: relative improvement that counts
    ))
    c.loss = mlc.ConfigDict(dict(
        label_smoothing=0.0,
        aux_weight=0.3,  # each auxiliary classifier's loss weight (GoogLeNet's heads; paper 0.3)
        class_weights="",  # '' | 'balanced' (n / (K * n_k)) | 'w0,w1,...' per class
        # c/2 * sum(w^2) over optimizer.decay_mask in the loss (cv_jax.training.losses)
        l2_penalty=0.0,
        activity_l1=0.0,  # Keras-style activity regularisation of the layers matched by
        activity_l2=0.0,  # activity_layers (regex over module paths, e.g. 'fc1$')
        activity_layers="",
    ))
    # Mixup / CutMix (cv_jax.data.mixup): alpha 0 = off; one lam per batch, as timm.
    c.mixup = mlc.ConfigDict(dict(
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        prob=1.0,  # probability that a batch is mixed at all
        switch_prob=0.5,  # with both alphas > 0: probability of CutMix instead of mixup
        off_epoch=0.0,  # > 0: no mixing from this epoch on
    ))
    # Gaussian noise (std in normalised-input units / weight units); 0 = off.
    c.noise = mlc.ConfigDict(dict(input_std=0.0, weight_std=0.0))
    # On-device augmentation; cv_jax/data/augment.py documents every op, its order and its ranges.
    # Each op is off at its zero / empty value and is then exactly the identity.
    c.augment = mlc.ConfigDict(dict(
        crop_padding=4, padding_mode="constant",  # pad-and-crop; numpy pad modes
        flip=True,  # random left-right flip (Keras' horizontal_flip)
        vertical_flip=False,
        # One affine warp per image; Keras ImageDataGenerator names and units.
        rotation_range=0.0,  # degrees: angle ~ U(-r, r)
        width_shift_range=0.0, height_shift_range=0.0,  # fractions of the width / height
        zoom_range=0.0,  # z: per-axis zoom ~ U(1-z, 1+z); as Keras, > 1 shrinks the content
        shear_range=0.0,  # degrees
        fill_mode="nearest", cval=0.0,  # constant | nearest | reflect | wrap; cval in 0..255
        # Colour, in this order.
        brightness_range=(),  # (lo, hi): multiply by U(lo, hi); () = off
        contrast=0.0, saturation=0.0,  # ColorJitter: factor ~ U(max(0, 1-x), 1+x)
        hue=0.0,  # hue shift ~ U(-h, h) turns, h <= 0.5
        channel_shift_range=0.0,  # Keras: add U(-r, r) (0..255 units) to every channel
        auto_augment="",  # '' | 'randaugment' | 'trivialaugment_wide'
        randaugment_num_ops=2, randaugment_magnitude=9,  # N ops at bin M of 0..30
        cutout_size=0,  # side of one square cut out of every image, pixels
        erasing_prob=0.0, erasing_area=(0.02, 0.33), erasing_aspect=(0.3, 3.3),
        erasing_value="0",  # cutout/erasing fill: a pixel value '0'..'255' or 'random'
    ))
    c.training = mlc.ConfigDict(dict(
        batch_size=128,  # global, split across devices
        num_epochs=30.0,
        num_steps=0,  # > 0 overrides num_epochs
        # > 0: train as many epochs as fit in this many minutes on this machine, timed before
        # the run; the schedule keeps its shape (cv_jax.training.time_budget)
        time_budget_minutes=0.0,
        eval_every_epochs=1.0,
        log_every_steps=50,
        keep_checkpoints=2,  # latest K, plus the best by <eval split>_accuracy
        checkpoint_every_steps=0,  # also checkpoint every N steps between evals; 0 = at evals
        ema_decay=0.0,  # > 0: also keep (and evaluate, as <split>_ema_*) an EMA of the weights
        best_by_ema=False,  # pick the best checkpoint by the EMA weights' accuracy
        best_mode="max",
        compute_dtype="float32",
        num_devices=0,  # 0 = every local device
        # A step whose gradients are not all finite: 'stop' the run (naming the step and the
        # last good checkpoint), or 'skip' it: weights, optimizer state, BatchNorm statistics
        # and EMA stay as they were, the step counter and the data position advance, and
        # results.json counts it (skipped_steps). 'skip' still stops after this many in a row.
        nonfinite="stop",
        max_consecutive_skips=10,
        # Layer formulations XLA:CPU runs faster, with the same values up to float32 rounding,
        # in the train step (models.cpu_formulations: convolutions on cv_jax's CPU kernels or
        # with inputs kept in memory, max-pool gradients by shifted comparisons). 'auto' = on
        # for the CPU backend; measured in experiments/speed/RESULTS.md.
        cpu_formulations="auto",
    ))
    c.early_stopping = mlc.ConfigDict(dict(
        patience=0,  # evaluations without improvement before training stops; 0 = off
        # '<split>[_ema]_<accuracy|balanced_accuracy|loss>'; '' = the best-checkpoint metric
        monitor="",
        mode="auto",  # 'max' | 'min' | 'auto' (min for a loss, else max)
        min_delta=0.0,  # an improvement must beat the best by more than this
        start_epoch=0.0,  # evaluations before this epoch are ignored
        restore_best=True,  # after stopping, report (and leave as 'best') the best weights
    ))
    c.transfer = mlc.ConfigDict(dict(
        init_from="",  # a run's workdir or a .msgpack of weights ('' = train from scratch)
        checkpoint="best",  # of a workdir: 'best' | 'latest'
        weights="raw",  # of a workdir: 'raw' | 'ema'
        mode="finetune",  # linear_probe | finetune | discriminative | staged
        backbone_lr_multiplier=0.1,  # discriminative, and staged once unfrozen
        frozen_epochs=0.0,  # staged: epochs of linear probing before the backbone unfreezes
        batch_norm="auto",  # 'auto' (frozen for linear_probe, staged) | 'train' | 'frozen'
    ))
    c.distill = mlc.ConfigDict(dict(
        teacher="",  # a trained run's workdir ('' = no distillation)
        checkpoint="best",  # 'best' | 'latest'
        weights="raw",  # 'raw' | 'ema'
        alpha=0.9,  # weight of the distillation term; 1 - alpha on the label cross-entropy
        temperature=4.0,
    ))
    c.eval = mlc.ConfigDict(dict(
        batch_size=1000,
        tta_flip=False,  # average the logits with the mirror image's
        tta_translate=0,  # pixels: also average over two diagonal shifts (airbench: 1)
    ))
    return c
