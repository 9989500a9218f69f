"""3-fold cross-validation of the smoke recipe: minutes on a 2-core CPU.

The smoke recipe (configs/cifar10.py: airbench at widths 8/16/16, 2 epochs, a fixed 512-image
subset of CIFAR-10 train dealt into 3 stratified folds of ~171, tested on a fixed 256-image
subset of test), seed 0: 3 fold runs plus one on all 512 images. It checks the machinery; the
accuracies of so short a training are low.

    make cv CONFIG=experiments/crossval_tiny.py          (runs/cv/crossval_tiny/)
"""

import ml_collections as mlc

from cv_jax.workflows.multirun import recipe_config


def get_config(arg=None):
    config = recipe_config(f"smoke,{arg or ''}")
    config.crossval = mlc.ConfigDict(dict(folds=3, full=True))
    return config
