"""5-fold cross-validation of the default CIFAR-10 recipe.

The recipe `make train` runs (configs/cifar10.py: `headline` on a GPU/TPU, `cpu` on a CPU),
seed 0, on the 50,000 training images dealt into 5 stratified folds of 10,000: 5 fold runs
(validation accuracy mean ± sample std) plus one on the whole training set for the test
accuracy of the setting. About 6x the time of `make train`.

    make cv CONFIG=experiments/crossval_cifar10.py K=5      (runs/cv/crossval_cifar10/)
"""

import ml_collections as mlc

from cv_jax.workflows.multirun import recipe_config


def get_config(arg=None):
    config = recipe_config(arg or "")
    config.crossval = mlc.ConfigDict(dict(folds=5, full=True))
    return config
