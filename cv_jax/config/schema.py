"""Every config key, declared once: its default, the values it accepts and a one-line doc.

The sections below are the config tree: ``base_config()`` is built from them, ``validate``
checks a config against them and ``python -m cv_jax.main --config=... --explain=SECTION``
prints them. A key's default fixes its type (a value of another type is refused); ``ok``
narrows the values further and ``allowed`` says which, in the words that error messages and
--explain use. A key is off at its zero / empty default unless its doc says otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Callable
from typing import Any

import ml_collections as mlc

from cv_jax.config.values import parse_fill_value, parse_multipliers

# optimizer.name: the update rules, and the wrappers among them (cv_jax/optim/chain.py).
OPTIMIZERS = ("adadelta", "adagrad", "adam", "adamw", "lamb", "lars", "lion", "rmsprop", "sam",
              "schedule_free_adamw", "schedule_free_sgd", "sgd")
WRAPPERS = ("sam", "schedule_free_sgd", "schedule_free_adamw")
# dataset.bad_files: what loading does with files it cannot decode (cv_jax/data/sources.py).
BAD_FILES_POLICIES = ("strict", "skip")
# dataset.pipeline: how training batches reach the devices (cv_jax/training/datasets.py).
PIPELINES = ("resident", "streaming", "auto")
RESIZES = ("antialias", "bilinear")  # dataset.stream_resize (cv_jax/data/decode.py)
# augment.padding_mode, fill_mode and auto_augment (cv_jax/data/augment.py).
PADDING_MODES = ("reflect", "constant", "edge")
FILL_MODES = ("constant", "nearest", "reflect", "wrap")
AUTO_AUGMENT_POLICIES = ("", "randaugment", "trivialaugment_wide")
# augment: keys a Keras or torchvision user may reach for, and what this config calls them.
AUGMENT_KEY_HINTS = {"horizontal_flip": "flip", "random_erasing": "erasing_prob",
                     "randaugment": "auto_augment='randaugment'",
                     "brightness": "brightness_range"}
# Top-level sections read by the multirun workflows, which check their own keys.
WORKFLOW_SECTIONS = ("crossval", "ensemble", "pseudo_label")
# The pseudo-section of the keys at the top level of the config (config.seed, ...).
TOP = "top"


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


# A value must have its default's type (ConfigDict lets a bool into an int field, and a
# section replaced wholesale or built from a dict is not type-checked at all).
TYPES: dict[type, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "True or False"),
    int: (_is_int, "an integer"),
    float: (_is_number, "a finite number"),
    str: (lambda v: isinstance(v, str), "a string"),
    tuple: (lambda v: isinstance(v, (tuple, list)), "a tuple"),
}


@dataclasses.dataclass(frozen=True)
class Key:
    """One config key: its default, a one-line doc, and the values that work.

    ``ok`` is the check after the type check: a falsy result refuses the value with
    "use <allowed>"; it may instead raise ConfigError with its own message, or re.error for a
    regular expression that does not compile. ``allowed`` is '' for any value of the default's
    type. A key with ``choices`` takes one of those names; another name "is unknown".
    """

    default: Any
    doc: str
    allowed: str = ""
    ok: Callable[[Any], Any] | None = None
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        """The values that work, in words."""
        if self.choices:
            return f"one of {list(self.choices)}"
        return self.allowed or TYPES[type(self.default)][1]


@dataclasses.dataclass(frozen=True)
class Section:
    """A config section: what it is for, and its keys in order."""

    doc: str
    keys: dict[str, Key]


def _section(doc: str, **keys: Key) -> Section:
    return Section(doc, keys)


def _words(values: tuple[str, ...]) -> str:
    """``('a', 'b', 'c')`` -> ``"'a', 'b' or 'c'"``."""
    quoted = [repr(v) for v in values]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _choice(default: str, doc: str, values: tuple[str, ...], allowed: str = "") -> Key:
    """A key that takes one of ``values``; ``allowed`` words them ('a', 'b' or 'c' by default)."""
    return Key(default, doc, allowed or _words(values), lambda v: v in values)


def _reads(parse: Callable[[str], Any]) -> Callable[[str], bool]:
    """A check that passes when ``parse`` reads the value (it raises on a value it cannot)."""
    return lambda v: parse(v) is not None


def _is_regex(value: str) -> bool:
    try:
        re.compile(value)
    except re.error:
        return False
    return True


_MONITOR = r"(validation|test)(_ema)?_(balanced_accuracy|accuracy|loss)"

SCHEMA: dict[str, Section] = {
    TOP: _section(
        "keys at the top level of the config (config.seed, ...)",
        recipe=Key("", "the recipe the config file built (set by the config file)"),
        recipe_reason=Key("", "why that recipe: named in the config string, or the backend's"),
        seed=Key(0, "seeds the model init, dropout and augmentation keys",
                 "an integer >= 0", lambda v: v >= 0),
        data_seed=Key(-1, "seeds the order of the training examples; -1: the same as seed",
                      "an integer >= 0, or -1 for the same as seed", lambda v: v >= -1),
        model_init_examples=Key(5000, "training images a data-dependent init may look at",
                                "a positive number of training images", lambda v: v >= 1),
    ),
    "dataset": _section(
        "what to train and test on, and how it is split, resampled and normalised "
        "(cv_jax/data)",
        name=Key("cifar10", "the dataset data_dir='' searches for (cv_jax/data/locate.py)",
                 "a dataset name, e.g. 'cifar10'", lambda v: v != ""),
        data_dir=Key("", "'' = search (see cv_jax/data/locate.py); or a path, or 'tfds:NAME'"),
        cache_dir=Key("", "decoded-split caches; '' = $CV_JAX_CACHE or ~/.cache/cv_jax"),
        train_split=Key("train", "the split to train on"),
        test_split=Key("test", "the split to test on"),
        image_size=Key((), "() = keep the source size; (H, W) resizes every image (but the "
                           "training images stream_crop crops at their own size)",
                       "() (keep the source size) or (height, width) in pixels > 0",
                       lambda v: len(v) == 0 or (len(v) == 2 and min(v) > 0)),
        bad_files=_choice(
            "strict", "undecodable, truncated or oversized image files: 'strict' stops with one "
            "error listing them (and empty class folders); 'skip' leaves them out and lists "
            "them in results.json", BAD_FILES_POLICIES,
            "'strict' (stop, listing every bad file) or 'skip' (leave them out and report them)"),
        pipeline=_choice(
            "resident", "'resident': the decoded training split stays on every device; "
            "'streaming': Grain reads, decodes and batches it on the host, each process its "
            "share of every batch; 'auto': resident if the decoded split takes under 1/4 of a "
            "device's memory (4 GiB where the device does not say), else streaming",
            PIPELINES, "'resident', 'streaming' or 'auto'"),
        stream_workers=Key(0, "streaming: Grain worker processes decoding batches (0: the "
                              "training process, with stream_threads threads)",
                           "an integer >= 0", lambda v: v >= 0),
        stream_threads=Key(4, "streaming: threads reading and decoding images in each process",
                           "an integer >= 0", lambda v: v >= 0),
        stream_crop=Key(0, "streaming: random-resized-crop on the host, from each training "
                           "image at its own size, to this many pixels square (Inception-style, "
                           "keyed by seed, epoch and example); 0 = off",
                        "an integer >= 0 (0: off)", lambda v: v >= 0),
        stream_crop_scale=Key((0.08, 1.0), "streaming: the crop's area range, as fractions of "
                                           "the image", "(min, max) with 0 < min <= max <= 1",
                              lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1),
        stream_resize=_choice("antialias", "streaming: how stream_crop's crop is resized: "
                              "'antialias' (Pillow's bilinear, widened when shrinking, as "
                              "torchvision's RandomResizedCrop) or 'bilinear' (OpenCV, no "
                              "antialiasing, as tf.image.resize and big_vision; several times "
                              "cheaper; needs pip install 'cv_jax[opencv]')", RESIZES),
        stream_flip=Key(False, "streaming: mirror half the images on the host (keyed as "
                               "stream_crop)"),
        classes=Key("", "a subset, relabelled 0..k-1: '0-4', '5,7' or 'cat,dog'; '' = all"),
        validation_size=Key(0, "examples carved from train (the same ones every run) for model "
                               "selection", "an integer >= 0 (0: no validation)",
                            lambda v: v >= 0),
        max_train_examples=Key(0, "0 = all; else a fixed random subset (quick runs)",
                               "an integer >= 0 (0: all)", lambda v: v >= 0),
        max_eval_examples=Key(0, "0 = all; else a fixed random subset of the test split",
                              "an integer >= 0 (0: all)", lambda v: v >= 0),
        imbalance_ratio=Key(1.0, "> 1: long-tailed train set, largest / smallest class count",
                            "a number >= 1 (1: as is)", lambda v: v >= 1),
        balance=_choice("", "equal class counts, resampled once", ("", "oversample",
                                                                   "undersample")),
        normalization=_choice(
            "given", "'given': mean/std below; 'featurewise': computed from the train set",
            ("given", "featurewise"),
            "'given' (dataset.mean/std) or 'featurewise' (computed from the training set)"),
        mean=Key((0.4914, 0.4822, 0.4465), "per-channel means, of images scaled to [0, 1]",
                 "per-channel means of images scaled to [0, 1], e.g. (0.491, 0.482, 0.447)",
                 lambda v: len(v) > 0 and all(0 <= m <= 1 for m in v)),
        std=Key((0.2470, 0.2435, 0.2616), "per-channel standard deviations, same scale",
                "per-channel standard deviations > 0, e.g. (0.247, 0.243, 0.262)",
                lambda v: len(v) > 0 and all(s > 0 for s in v)),
        num_folds=Key(0, "k-fold cross-validation (cv_jax.workflows.crossval): fold `fold` of "
                         "the training set (after max_train_examples) is the validation split, "
                         "the other folds train; 0 = off",
                      "0 (off) or a number of folds >= 2", lambda v: v == 0 or v >= 2),
        fold=Key(0, "k-fold: the fold that validates", "a fold index in 0..num_folds-1",
                 lambda v: v >= 0),
        stratified_folds=Key(True, "k-fold: the same class mix in every fold (counts differ "
                                   "by <= 1)"),
        num_labelled=Key(0, "semi-supervised (cv_jax.workflows.pseudo_label): train on a "
                            "class-balanced labelled subset of this many examples; 0 = all "
                            "labelled", "an integer >= 0 (0: every training example labelled)",
                         lambda v: v >= 0),
        labelled_seed=Key(0, "semi-supervised: fixes the labelled subset",
                          "an integer seed >= 0", lambda v: v >= 0),
        pseudo_labels=Key("", "semi-supervised: an .npz `pseudo_labels` of pseudo-labelled "
                              "examples (indices into the training set, labels) to add"),
        resample_seed=Key(-1, "bagging / boosting (cv_jax.workflows.ensemble): >= 0 replaces "
                              "the training set by as many draws with replacement, fixed by "
                              "this seed; -1 = off",
                          "-1 (off) or a seed >= 0 for the resampled training set",
                          lambda v: v >= -1),
        resample_weights=Key("", "resampling: draw in proportion to the per-example weights in "
                                 "this .npy (or .npz array 'weights'); '' = uniform (a "
                                 "bootstrap sample)"),
    ),
    "model": _section(
        "the network: a registered model's name and every field of its dataclass "
        "(python -m cv_jax.models lists the models)",
        name=Key("", "the model; config files set the section with model_section(name)",
                 "a registered model's name (python -m cv_jax.models lists them)"),
    ),
    "optimizer": _section(
        "the optax chain: update rule, weight decay, clipping, accumulation, freezing and "
        "per-group learning rates (cv_jax/optim/chain.py explains each)",
        name=Key("sgd", "the update rule; sam and schedule_free_* wrap one",
                 choices=OPTIMIZERS),
        learning_rate=Key(0.1, "the peak of the schedule", "a number >= 0", lambda v: v >= 0),
        momentum=Key(0.9, "sgd/rmsprop/lars; 0 = plain SGD", "a number in [0, 1)",
                     lambda v: 0 <= v < 1),
        nesterov=Key(True, "Nesterov momentum (sgd/rmsprop/lars)"),
        b1=Key(0.9, "adam/adamw/lamb/lion first moment; the schedule_free_* interpolation "
                    "constant", "a number in [0, 1)", lambda v: 0 <= v < 1),
        b2=Key(0.999, "adam/adamw/lamb/lion second moment (lion paper: 0.99)",
               "a number in [0, 1)", lambda v: 0 <= v < 1),
        eps=Key(1e-8, "adam-family/rmsprop/adagrad/lars epsilon", "a number >= 0",
                lambda v: v >= 0),
        rho=Key(0.9, "rmsprop/adadelta decay", "a number in (0, 1)", lambda v: 0 < v < 1),
        weight_decay=Key(5e-4, "decoupled for adamw/lamb/lars/lion/schedule_free_adamw, else "
                               "L2 added to the gradient", "a number >= 0", lambda v: v >= 0),
        decay_mask=Key("kernel$", "regex over parameter paths that receive weight decay",
                       ok=_reads(re.compile)),
        grad_clip_norm=Key(0.0, "clip the global gradient norm to this; 0 = off",
                           "a number >= 0 (0: off)", lambda v: v >= 0),
        agc_clip=Key(0.0, "adaptive (unit-wise) gradient clipping ratio, NFNet-style 0.01; "
                          "0 = off", "a number >= 0 (0: off)", lambda v: v >= 0),
        accumulate_steps=Key(1, "average k mini-batch gradients per update (optax.MultiSteps); "
                                "1 = off", "an integer >= 1 (1: off)", lambda v: v >= 1),
        sam_base=Key("sgd", "sam: the optimizer SAM wraps (any name but the wrappers)"),
        sam_rho=Key(0.05, "sam: radius of the adversarial step (Foret et al.: 0.05)",
                    "a number > 0", lambda v: v > 0),
        lars_trust=Key(0.001, "lars: trust coefficient", "a number > 0", lambda v: v > 0),
        freeze=Key("", "regex of parameters that never change ('' = none)",
                   ok=_reads(re.compile)),
        lr_multipliers=Key("", "'REGEX=FACTOR,...' per-group learning-rate factors",
                           ok=_reads(parse_multipliers)),
        decay_ignores_multipliers=Key(
            False, "the weight decay per step is not scaled by lr_multipliers (airbench's "
                   "bias_scaler: a group's L2 coefficient is divided by its factor); "
                   "L2-style decay only"),
        freeze_after=Key("", "'REGEX=EPOCHS,...': matching parameters stop changing after "
                             "that many epochs (airbench: 'whiten/bias=3')",
                         ok=_reads(lambda v: parse_multipliers(
                             v, "optimizer.freeze_after", "EPOCHS"))),
        lookahead_every=Key(0, "> 0: Lookahead (Zhang et al. 2019) as airbench: every k steps "
                               "the slow copy of the weights and BatchNorm statistics moves "
                               "toward them and they are reset to it (airbench: 5); 0 = off",
                            "an integer >= 0 (0: off)", lambda v: v >= 0),
        lookahead_decay=Key(0.95**5, "the slow copy's decay at the end of the run; at step t "
                                     "it is lookahead_decay * (t / T) ** lookahead_power",
                            "a number in [0, 1]", lambda v: 0 <= v <= 1),
        lookahead_power=Key(3.0, "the decay's ramp over the run (airbench: 3; 0: constant)",
                            "a number >= 0", lambda v: v >= 0),
    ),
    "schedule": _section(
        "the learning rate per train step (cv_jax/optim/lr.py composes it, "
        "cv_jax/optim/schedules.py explains each shape; python -m cv_jax.tools.schedules "
        "plots it)",
        name=Key("cosine", "constant | multistep (= piecewise) | exponential | cosine | linear "
                           "| polynomial | sgdr | reduce_on_plateau"),
        warmup_epochs=Key(0.0, "a linear ramp from warmup_init_factor * peak to the peak",
                          "a number of epochs >= 0", lambda v: v >= 0),
        warmup_fraction=Key(0.0, "or: the warmup's length as a fraction of the run's steps "
                                 "(airbench: 0.23); 0 = warmup_epochs sets it",
                            "a fraction of the run in [0, 1) (0: warmup_epochs sets the warmup)",
                            lambda v: 0 <= v < 1),
        warmup_init_factor=Key(0.0, "warmup starts at this fraction of the peak LR",
                               "a number in [0, 1]", lambda v: 0 <= v <= 1),
        end_factor=Key(0.0, "cosine/linear/polynomial/sgdr end at end_factor * peak; "
                            "reduce_on_plateau's floor", "a number >= 0", lambda v: v >= 0),
        boundaries=Key((), "multistep: epochs at which the LR is multiplied by a factor",
                       "strictly increasing positive epochs, e.g. (30, 60, 80)",
                       lambda v: all(b > 0 for b in v) and list(v) == sorted(set(v))),
        decay_factors=Key((), "multistep: one factor per boundary; () = decay_factor at each",
                          "factors > 0, one per boundary, e.g. (0.1, 0.1); () = decay_factor "
                          "at each", lambda v: all(f > 0 for f in v)),
        decay_factor=Key(0.1, "multistep: factor at each boundary; exponential: factor per "
                              "epoch; reduce_on_plateau: factor per decay",
                         "a number in (0, 1]", lambda v: 0 < v <= 1),
        staircase=Key(False, "exponential: decay once per epoch (True) instead of every step"),
        power=Key(2.0, "polynomial: (1 - t/T)^power from peak to end_factor * peak; "
                       "1 = linear", "a number > 0", lambda v: v > 0),
        cycle_epochs=Key(10.0, "sgdr: length of the first cosine cycle, in epochs",
                         "a positive number of epochs", lambda v: v > 0),
        cycle_mult=Key(1.0, "sgdr: each cycle is this many times longer than the previous",
                       "a number >= 1", lambda v: v >= 1),
        plateau_metric=_choice("loss", "reduce_on_plateau: the eval metric to watch",
                               ("loss", "accuracy")),
        plateau_patience=Key(5, "reduce_on_plateau: evaluations without improvement before "
                                "decay", "an integer >= 0", lambda v: v >= 0),
        plateau_cooldown=Key(0, "reduce_on_plateau: evaluations to wait after a decay",
                             "an integer >= 0", lambda v: v >= 0),
        plateau_rtol=Key(1e-4, "reduce_on_plateau: relative improvement that counts",
                         "a number in (0, 1]", lambda v: 0 < v <= 1),
    ),
    "loss": _section(
        "the training loss and its regularisers (cv_jax/training/losses.py)",
        label_smoothing=Key(0.0, "mix the one-hot targets with the uniform distribution",
                            "a number in [0, 1)", lambda v: 0 <= v < 1),
        aux_weight=Key(0.3, "each auxiliary classifier's loss weight (GoogLeNet's heads; "
                            "paper 0.3)", "a number >= 0", lambda v: v >= 0),
        class_weights=Key("", "'' | 'balanced' (n / (K * n_k)) | 'w0,w1,...' per class"),
        l2_penalty=Key(0.0, "c/2 * sum(w^2) over optimizer.decay_mask, in the loss (vs "
                            "optimizer.weight_decay)", "a number >= 0 (0: off)",
                       lambda v: v >= 0),
        activity_l1=Key(0.0, "Keras-style L1 activity regularisation of activity_layers",
                        "a number >= 0 (0: off)", lambda v: v >= 0),
        activity_l2=Key(0.0, "Keras-style L2 activity regularisation of activity_layers",
                        "a number >= 0 (0: off)", lambda v: v >= 0),
        activity_layers=Key("", "the layers activity_l1/l2 act on: a regex over module "
                                "paths, e.g. 'fc1$'",
                            "a regular expression over module paths", _is_regex),
    ),
    "mixup": _section(
        "Mixup / CutMix (cv_jax/data/mixup.py): one lam per batch, as timm",
        mixup_alpha=Key(0.0, "Beta(alpha, alpha) of the mixup weight; 0 = off",
                        "a number >= 0 (0: off)", lambda v: v >= 0),
        cutmix_alpha=Key(0.0, "Beta(alpha, alpha) of the CutMix area; 0 = off",
                         "a number >= 0 (0: off)", lambda v: v >= 0),
        prob=Key(1.0, "probability that a batch is mixed at all", "a probability in [0, 1]",
                 lambda v: 0 <= v <= 1),
        switch_prob=Key(0.5, "with both alphas > 0: probability of CutMix instead of mixup",
                        "a probability in [0, 1]", lambda v: 0 <= v <= 1),
        off_epoch=Key(0.0, "> 0: no mixing from this epoch on",
                      "a number of epochs >= 0 (0: never off)", lambda v: v >= 0),
    ),
    "noise": _section(
        "Gaussian noise during training; 0 = off",
        input_std=Key(0.0, "std of the noise added to the inputs, in normalised-input units",
                      "a number >= 0 (0: off)", lambda v: v >= 0),
        weight_std=Key(0.0, "std of the noise added to the weights, in weight units",
                       "a number >= 0 (0: off)", lambda v: v >= 0),
    ),
    "augment": _section(
        "on-device augmentation, in this order: pad-and-crop and flips, one affine warp, "
        "colour, auto_augment, occlusion; each op is exactly the identity at its zero / empty "
        "value (cv_jax/data/augment.py documents every op and its ranges)",
        crop_padding=Key(4, "pad-and-crop: pixels of padding on each side",
                         "an integer >= 0 (0: off)", lambda v: v >= 0),
        padding_mode=_choice("constant", "pad-and-crop: numpy's pad mode", PADDING_MODES),
        flip=Key(True, "random left-right flip (Keras' horizontal_flip)"),
        flip_mode=_choice("random", "flip: 'random' per image and step, or 'alternate' "
                                    "(airbench): a random choice per image in epoch 0, "
                                    "then the opposite one each following epoch",
                          ("random", "alternate")),
        vertical_flip=Key(False, "random up-down flip"),
        rotation_range=Key(0.0, "affine: angle ~ U(-r, r) degrees (Keras' names and units)",
                           "degrees in [0, 180] (0: off)", lambda v: 0 <= v <= 180),
        width_shift_range=Key(0.0, "affine: shift ~ U(-r, r) * width",
                              "a fraction of the width in [0, 1] (0: off)",
                              lambda v: 0 <= v <= 1),
        height_shift_range=Key(0.0, "affine: shift ~ U(-r, r) * height",
                               "a fraction of the height in [0, 1] (0: off)",
                               lambda v: 0 <= v <= 1),
        zoom_range=Key(0.0, "affine: per-axis zoom ~ U(1-z, 1+z); as Keras, > 1 shrinks the "
                            "content", "z in [0, 1): zoom factors ~ U(1-z, 1+z) (0: off)",
                       lambda v: 0 <= v < 1),
        shear_range=Key(0.0, "affine: shear angle ~ U(-s, s) degrees",
                        "degrees in [0, 90) (0: off)", lambda v: 0 <= v < 90),
        fill_mode=_choice("nearest", "affine: what fills pixels from outside the image (Keras' "
                                     "meanings)", FILL_MODES),
        cval=Key(0.0, "affine (fill_mode 'constant') and auto_augment: the fill value",
                 "a pixel value in [0, 255]", lambda v: 0 <= v <= 255),
        brightness_range=Key((), "colour: multiply by U(lo, hi); () = off",
                             "() for off, or a pair (lo, hi) with 0 <= lo <= hi, e.g. (0.8, 1.2)",
                             lambda v: len(v) == 0 or (len(v) == 2 and 0 <= v[0] <= v[1])),
        contrast=Key(0.0, "colour (ColorJitter): factor ~ U(max(0, 1-x), 1+x)",
                     "a number >= 0 (0: off)", lambda v: v >= 0),
        saturation=Key(0.0, "colour (ColorJitter): factor ~ U(max(0, 1-x), 1+x)",
                       "a number >= 0 (0: off)", lambda v: v >= 0),
        hue=Key(0.0, "colour: hue shift ~ U(-h, h) turns",
                "a number of turns in [0, 0.5] (0: off)", lambda v: 0 <= v <= 0.5),
        channel_shift_range=Key(0.0, "colour (Keras): add U(-r, r) (0..255 units) to every "
                                     "channel", "a pixel intensity in [0, 255] (0: off)",
                                lambda v: 0 <= v <= 255),
        auto_augment=_choice("", "RandAugment or TrivialAugment-wide, torchvision's op lists",
                             AUTO_AUGMENT_POLICIES,
                             "'' (off), 'randaugment' or 'trivialaugment_wide'"),
        randaugment_num_ops=Key(2, "randaugment: N ops per image", "an integer >= 0",
                                lambda v: v >= 0 and v == int(v)),
        randaugment_magnitude=Key(9, "randaugment: every op at bin M of 0..30",
                                  "an integer bin in [0, 30] (torchvision's 31 magnitude bins)",
                                  lambda v: 0 <= v <= 30 and v == int(v)),
        cutout_size=Key(0, "occlusion: side of one square cut out of every image, pixels",
                        "an integer side in pixels >= 0 (0: off)",
                        lambda v: v >= 0 and v == int(v)),
        erasing_prob=Key(0.0, "occlusion: probability of random erasing per image",
                         "a probability in [0, 1] (0: off)", lambda v: 0 <= v <= 1),
        erasing_area=Key((0.02, 0.33), "random erasing: area ~ U(lo, hi) of the image",
                         "a pair of fractions of the image area, 0 < lo <= hi <= 1",
                         lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1),
        erasing_aspect=Key((0.3, 3.3), "random erasing: aspect (h/w) log-uniform in (lo, hi)",
                           "a pair of aspect ratios (height/width), 0 < lo <= hi",
                           lambda v: len(v) == 2 and 0 < v[0] <= v[1]),
        erasing_value=Key("0", "cutout/erasing fill: a pixel value '0'..'255' or 'random'",
                          "a pixel value in 0..255 written as text ('0') or 'random'",
                          _reads(parse_fill_value)),
    ),
    "training": _section(
        "the training loop: length, evaluation, checkpoints, EMA, precision, devices "
        "(cv_jax/training)",
        batch_size=Key(128, "global, split across devices", "a positive integer",
                       lambda v: v > 0),
        num_epochs=Key(30.0, "the run's length in epochs", "a number >= 0", lambda v: v >= 0),
        num_steps=Key(0, "> 0 overrides num_epochs", "an integer >= 0 (0: use num_epochs)",
                      lambda v: v >= 0),
        time_budget_minutes=Key(0.0, "> 0: train as many epochs as fit in this many minutes "
                                     "on this machine, timed before the run; the schedule "
                                     "keeps its shape (cv_jax.training.time_budget)",
                                "a number of minutes >= 0 (0: off)", lambda v: v >= 0),
        eval_every_epochs=Key(1.0, "evaluate every this many epochs, and at the end",
                              "a positive number of epochs", lambda v: v > 0),
        log_every_steps=Key(50, "log the training metrics every this many steps",
                            "a positive integer", lambda v: v > 0),
        steps_per_call=Key(1, "train steps per dispatch to the devices (a lax.scan of the "
                              "step, compiled beside the single step); records, evaluations "
                              "and checkpoints stay at their steps (single steps reach them)",
                           "a positive integer", lambda v: v > 0),
        profile_steps=Key((), "(start, count): trace `count` train steps from step `start` "
                              "(numbered from 1, as metrics.jsonl) with the JAX profiler into "
                              "workdir/profile/ (docs/integrations.md); () = off",
                          "() (off) or (start, count): integers >= 1, start within the run",
                          lambda v: len(v) == 0 or (len(v) == 2 and all(_is_int(x) for x in v)
                                                    and v[0] >= 1 and v[1] >= 1)),
        keep_checkpoints=Key(2, "keep the latest K, plus the best by <eval split>_accuracy",
                             "an integer >= 1", lambda v: v >= 1),
        checkpoint_every_steps=Key(0, "also checkpoint every N steps between evals; 0 = at "
                                      "evals", "an integer >= 0 (0: only at evaluations)",
                                   lambda v: v >= 0 and v == int(v)),
        ema_decay=Key(0.0, "> 0: also keep (and evaluate, as <split>_ema_*) an EMA of the "
                           "weights", "a number in [0, 1) (0: off)", lambda v: 0 <= v < 1),
        best_by_ema=Key(False, "pick the best checkpoint by the EMA weights' accuracy"),
        best_mode=_choice("max", "whether the best checkpoint's metric is the largest or "
                                 "smallest", ("max", "min")),
        compute_dtype=_choice("float32", "dtype of the forward and backward computation",
                              ("float32", "bfloat16", "float16")),
        num_devices=Key(0, "0 = every local device", "an integer >= 0 (0: every device)",
                        lambda v: v >= 0),
        nonfinite=_choice(
            "stop", "a step whose gradients are not all finite: 'stop' the run (naming the "
            "step and the last good checkpoint), or 'skip' it (weights, optimizer state, "
            "BatchNorm statistics and EMA stay, the step counter and data advance; "
            "results.json counts it as skipped_steps)", ("stop", "skip"),
            "'stop' (raise at a non-finite loss or gradient) or 'skip' (leave that step out)"),
        max_consecutive_skips=Key(10, "'skip' still stops after this many skipped steps in a "
                                      "row", "an integer >= 1", lambda v: v >= 1),
        cpu_formulations=_choice(
            "auto", "layer formulations XLA:CPU runs faster, with the same values up to float32 "
            "rounding, in the train step (models.cpu_formulations); 'auto' = on for the CPU "
            "backend (measured in experiments/speed/RESULTS.md)", ("auto", "on", "off"),
            "'auto' (on when training on a CPU), 'on' or 'off'"),
    ),
    "early_stopping": _section(
        "stop when an evaluation metric stops improving, as Keras' EarlyStopping",
        patience=Key(0, "evaluations without improvement before training stops; 0 = off",
                     "an integer >= 0 (0: off)", lambda v: v >= 0),
        monitor=Key("", "'<split>[_ema]_<accuracy|balanced_accuracy|loss>'; '' = the "
                        "best-checkpoint metric",
                    "'' or '<validation|test>[_ema]_<accuracy|balanced_accuracy|loss>'",
                    lambda v: v == "" or re.fullmatch(_MONITOR, v)),
        mode=_choice("auto", "'auto' = min for a loss, else max", ("auto", "max", "min")),
        min_delta=Key(0.0, "an improvement must beat the best by more than this",
                      "a number >= 0", lambda v: v >= 0),
        start_epoch=Key(0.0, "evaluations before this epoch are ignored",
                        "a number of epochs >= 0", lambda v: v >= 0),
        restore_best=Key(True, "after stopping, report (and leave as 'best') the best weights"),
    ),
    "transfer": _section(
        "start from another run's weights (cv_jax/training/transfer.py)",
        init_from=Key("", "a run's workdir, a .msgpack of weights, or torchvision's ImageNet "
                          "weights 'torchvision:NAME[.WEIGHTS]' (fetched once into the cache; "
                          "needs the torch extra) ('' = train from scratch)"),
        checkpoint=_choice("best", "which checkpoint of a workdir", ("best", "latest")),
        weights=_choice("raw", "which weights of a workdir", ("raw", "ema")),
        mode=_choice("finetune", "linear_probe (train the head only) | finetune | "
                                 "discriminative (a lower backbone LR) | staged (probe, then "
                                 "finetune)",
                     ("linear_probe", "finetune", "discriminative", "staged"),
                     "one of 'linear_probe', 'finetune', 'discriminative', 'staged'"),
        backbone_lr_multiplier=Key(0.1, "discriminative, and staged once unfrozen: the "
                                        "backbone's LR factor", "a number >= 0",
                                   lambda v: v >= 0),
        frozen_epochs=Key(0.0, "staged: epochs of linear probing before the backbone unfreezes",
                          "a number of epochs >= 0", lambda v: v >= 0),
        batch_norm=_choice("auto", "BatchNorm statistics: 'auto' = frozen for linear_probe and "
                                   "staged", ("auto", "train", "frozen")),
    ),
    "distill": _section(
        "knowledge distillation from a trained teacher run",
        teacher=Key("", "a trained run's workdir ('' = no distillation)"),
        checkpoint=_choice("best", "which checkpoint of the teacher", ("best", "latest")),
        weights=_choice("raw", "which weights of the teacher", ("raw", "ema")),
        alpha=Key(0.9, "weight of the distillation term; 1 - alpha on the label cross-entropy",
                  "a number in [0, 1]", lambda v: 0 <= v <= 1),
        temperature=Key(4.0, "softmax temperature of teacher and student",
                        "a positive number", lambda v: v > 0),
    ),
    "logging": _section(
        "where a run reports besides metrics.jsonl and TensorBoard: Weights & Biases "
        "(docs/integrations.md; needs pip install 'cv_jax[wandb]')",
        wandb=Key(False, "send the metrics, the config and the results to a W&B run (its id "
                         "kept in workdir/wandb_id.txt, so a resumed run resumes it)"),
        project=Key("cv_jax", "the W&B project; '' = W&B's default ($WANDB_PROJECT)"),
        entity=Key("", "the W&B user or team; '' = W&B's default ($WANDB_ENTITY, your own)"),
        name=Key("", "the W&B run's name; '' = the workdir's folder name"),
        tags=Key((), "the W&B run's tags, e.g. ('cifar10', 'baseline')", "a tuple of strings",
                 lambda v: all(isinstance(t, str) and t for t in v)),
        mode=_choice("", "'online', 'offline' (kept in workdir/wandb/ until `wandb sync`) or "
                         "'disabled'; '' = W&B's default ($WANDB_MODE, else online)",
                     ("", "online", "offline", "disabled")),
    ),
    "eval": _section(
        "evaluation and test-time augmentation",
        batch_size=Key(1000, "images per evaluation batch", "a positive integer",
                       lambda v: v > 0),
        tta_flip=Key(False, "average the logits with the mirror image's"),
        tta_translate=Key(0, "pixels: also average over two diagonal shifts (airbench: 1)",
                          "pixels, an integer >= 0 (0: off; airbench uses 1)",
                          lambda v: v >= 0 and v == int(v)),
    ),
}


def declared_keys() -> dict[str, Key]:
    """Every key by its dotted name ('seed', 'optimizer.name', ...), in the config's order."""
    return {(name if section_name == TOP else f"{section_name}.{name}"): key
            for section_name, section in SCHEMA.items() for name, key in section.keys.items()}


def base_config() -> mlc.ConfigDict:
    """Every key a run reads, with neutral defaults; recipe files override what they need."""
    config = mlc.ConfigDict({name: key.default for name, key in SCHEMA[TOP].keys.items()})
    for section_name, section in SCHEMA.items():
        if section_name != TOP:
            config[section_name] = mlc.ConfigDict(
                {name: key.default for name, key in section.keys.items()})
    return config
