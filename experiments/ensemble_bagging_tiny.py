"""A bagged ensemble of 3 smoke-recipe members: minutes on a 2-core CPU.

The smoke recipe (configs/cifar10.py: airbench at widths 8/16/16, 2 epochs, a fixed 512-image
subset of CIFAR-10 train, tested on a fixed 256-image subset of test); member i has seed i and
trains on the bootstrap sample of seed i. Reports each member's and the ensemble's test accuracy
(mean probabilities and majority vote). It checks the machinery; the accuracies are low.

    make ensemble CONFIG=experiments/ensemble_bagging_tiny.py
    (writes runs/ensemble/ensemble_bagging_tiny/)
"""

import ml_collections as mlc

from cv_jax.workflows.multirun import recipe_config


def get_config(arg=None):
    config = recipe_config(f"smoke,{arg or ''}")
    config.ensemble = mlc.ConfigDict(dict(method="bagging", members=3))
    return config
