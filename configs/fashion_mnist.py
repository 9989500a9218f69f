"""Fashion-MNIST and MNIST recipes: 28x28 grey images in one channel, read from the IDX files
(or Keras' mnist.npz) that Keras' ``fashion_mnist.load_data()`` / ``mnist.load_data()``
download (docs/data.md).

    python -m cv_jax.main --config=configs/fashion_mnist.py --workdir=runs/fashion
    python -m cv_jax.main --config=configs/fashion_mnist.py:lenet5 --workdir=runs/fashion_lenet
    python -m cv_jax.main --config=configs/fashion_mnist.py:dataset=mnist --workdir=runs/mnist

Recipes (the bare word in the config string):
  cnn     (default) the network of the Keras MNIST example (keras-team/keras
          examples/mnist_cnn.py): conv32-conv64 (3x3, unpadded, ReLU), 2x2 max pool, dropout
          0.25, dense 128, dropout 0.5; Adadelta (lr 1.0, rho 0.95), batch 128, 12 epochs.
          Added: 2-pixel translations, and horizontal flips for Fashion-MNIST.
  lenet5  LeNet-5 (cv_jax/models/lenet.py) with C1 padded by 2 pixels, so 28x28 images get the
          paper's 32x32 field: tanh, average pooling, Adam 1e-3 with a cosine decay, batch 128,
          20 epochs, the same augmentation.
  smoke   a one-layer net on a 256-image subset for a few steps: seconds, for tests.
Every recipe normalises with the training set's mean and std (dataset.normalization=
featurewise: one value each, written to the run's config.json). These recipes are starting
points whose accuracy has not been measured here.

Shortcuts: dataset (fashion_mnist or mnist: digits are not flipped), model, epochs, steps,
batch_size, lr, seed, data_dir, dtype, minutes; any key can be overridden as in
configs/cifar10.py, whose docstring lists the recipe toolkit.
"""

from cv_jax.config import ConfigError, apply_shortcuts, base_config, model_section, parse_arg

RECIPES = ("cnn", "lenet5", "smoke")
DATASETS = ("fashion_mnist", "mnist")
# keras-team/keras examples/mnist_cnn.py, as layers of the configurable ConvNet.
KERAS_MNIST_LAYERS = "conv:32:valid,conv:64:valid,pool:max:2,dropout:0.25"


def get_config(arg=None):
    arg = parse_arg(arg, recipes=RECIPES, dataset="fashion_mnist", model="", epochs=0.0,
                    steps=0, batch_size=0, lr=0.0, seed=0, data_dir="", dtype="", minutes=0.0)
    if arg.dataset not in DATASETS:
        raise ConfigError(f"dataset={arg.dataset!r} in the config string; choose one of "
                          f"{', '.join(DATASETS)}")
    config = base_config()
    config.recipe = arg.recipe or "cnn"
    config.recipe_reason = "named in the config string" if arg.recipe else "the default recipe"
    config.dataset.update(name=arg.dataset, normalization="featurewise")
    # Small shifts for both; mirrored clothes are still clothes, mirrored digits are not.
    config.augment.update(crop_padding=2, padding_mode="constant",
                          flip=arg.dataset == "fashion_mnist")
    config.eval.update(tta_flip=False, tta_translate=0)
    config.loss.label_smoothing = 0.0
    {"cnn": _cnn, "lenet5": _lenet5, "smoke": _smoke}[config.recipe](config)
    if arg.model and arg.model != config.model.name:
        config.model = model_section(arg.model)
    apply_shortcuts(config, arg)
    return config


def _cnn(config):
    """mnist_cnn.py: Adadelta() at Keras 2's defaults (lr 1.0, rho 0.95, epsilon 1e-7),
    batch 128, 12 epochs, glorot_uniform kernels, no weight decay."""
    config.model = model_section("convnet", layers=KERAS_MNIST_LAYERS, fc="128",
                                 flatten="flatten", fc_dropout=0.5, batch_norm=False,
                                 kernel_init="glorot_uniform")
    config.training.update(batch_size=128, num_epochs=12.0, log_every_steps=100)
    config.optimizer.update(name="adadelta", learning_rate=1.0, rho=0.95, eps=1e-7,
                            weight_decay=0.0)
    config.schedule.update(name="constant", warmup_epochs=0.0)


def _lenet5(config):
    config.model = model_section("lenet5", pad=2)
    config.training.update(batch_size=128, num_epochs=20.0, log_every_steps=100)
    config.optimizer.update(name="adam", learning_rate=1e-3, weight_decay=0.0)
    config.schedule.update(name="cosine", warmup_epochs=0.0, end_factor=0.0)


def _smoke(config):
    config.model = model_section("convnet", layers="conv:8,pool:max:2", fc="",
                                 batch_norm=False)
    config.dataset.update(max_train_examples=256, max_eval_examples=128)
    config.training.update(batch_size=32, num_epochs=2.0, log_every_steps=2)
    config.model_init_examples = 256
    config.optimizer.update(name="sgd", learning_rate=0.05, weight_decay=0.0)
    config.eval.batch_size = 64
