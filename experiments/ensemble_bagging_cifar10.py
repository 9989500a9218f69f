"""A 5-member bagged ensemble of the default CIFAR-10 recipe vs its members.

The recipe `make train` runs (configs/cifar10.py: `headline` on a GPU/TPU, `cpu` on a CPU);
member i (seed i) trains on its own bootstrap sample of the 50,000 training images (about 63%
distinct). Reports each member's test accuracy, their mean ± sample std, and the ensemble's
(mean probabilities and majority vote). About 5x the time of `make train`.

    make ensemble CONFIG=experiments/ensemble_bagging_cifar10.py
    (writes runs/ensemble/ensemble_bagging_cifar10/)

Sized for a 2-core CPU (the cpu recipe cut to 1.6 epochs, ~5 minutes a member):

    make ensemble CONFIG=experiments/ensemble_bagging_cifar10.py:cpu,epochs=1.6
    (writes experiments/results/ensemble_bagging_cifar10_cpu_epochs=1.6.md)
"""

import ml_collections as mlc

from cv_jax.workflows.multirun import recipe_config


def get_config(arg=None):
    config = recipe_config(arg or "")
    config.ensemble = mlc.ConfigDict(dict(method="bagging", members=5))
    return config
