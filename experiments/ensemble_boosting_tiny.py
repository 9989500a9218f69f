"""SAMME boosting of up to 3 smoke-recipe members: minutes on a 2-core CPU.

The smoke recipe (configs/cifar10.py: airbench at widths 8/16/16, 2 epochs, a fixed 512-image
subset of CIFAR-10 train, tested on a fixed 256-image subset of test); member m has seed m and
trains on 512 draws in proportion to its SAMME weights. Reports each member's weighted training
error, alpha and test accuracy, and the alpha-weighted vote's test accuracy.

    make ensemble CONFIG=experiments/ensemble_boosting_tiny.py
    (writes runs/ensemble/ensemble_boosting_tiny/)
"""

import ml_collections as mlc

from cv_jax.workflows.multirun import recipe_config


def get_config(arg=None):
    config = recipe_config(f"smoke,{arg or ''}")
    config.ensemble = mlc.ConfigDict(dict(method="boosting", members=3))
    return config
