"""Pseudo-labelling with 400 labels out of 2,000 CIFAR-10 images: minutes on a 2-core CPU.

The smoke recipe's tiny airbench (widths 8/16/16) at 10 epochs, on a fixed 2,000-image subset
of CIFAR-10 train of which 400 (40 per class) keep their labels; tested on a fixed 256-image
subset of test; seed 0; label smoothing off (see cv_jax/workflows/pseudo_label.py). Round 0
(supervised
only) and 2 pseudo-labelling rounds, each adding the 60 most confident predictions of each
class (no threshold: so weak a model is rarely confident). It checks the machinery; so small a
model and training set give low accuracies and noisy pseudo-labels.

    make pseudo-label CONFIG=experiments/pseudo_label_tiny.py
    (writes runs/pseudo-label/pseudo_label_tiny/)
"""

import ml_collections as mlc

from cv_jax.workflows.multirun import recipe_config


def get_config(arg=None):
    config = recipe_config(f"smoke,epochs=10,{arg or ''}")
    config.dataset.update(max_train_examples=2000, num_labelled=400)
    config.loss.label_smoothing = 0.0
    config.pseudo_label = mlc.ConfigDict(dict(rounds=2, threshold=0.0, top_k=60))
    return config
