"""ImageNet-style recipes, for any ImageFolder tree with ``train/`` and ``val/`` (ImageNet,
Imagenette, a folder of your own photos): the class count comes from the folders.

    python -m cv_jax.main --config=configs/imagenet.py:data_dir=/data/imagenet --workdir=runs/in1k
    python -m cv_jax.main --config=configs/imagenet.py:data_dir=DIR,epochs=30,batch_size=256 ...
    ... --config.optimizer.weight_decay=5e-5   (any key can be overridden)

Recipes (the bare word in the config string):
  resnet50  (default) ResNet-50 (the zoo's torchvision-style resnet50) at 224 pixels, as
            "Bag of Tricks" (He et al. 2019, arXiv:1812.01187) trains its baseline with the
            tricks that need no extra model: the training set streamed by Grain, each image
            read at its own size and random-resized-cropped to 224 (area 8-100%, aspect
            3/4-4/3) and flipped on the host; evaluation on every image of val/, resized to
            224x224, once each. SGD + Nesterov momentum 0.9, learning rate 0.1 per 256 images
            (Goyal et al. 2017, arXiv:1706.02677): 0.4 at batch 1024, a linear warmup from 0
            over 5 epochs, then cosine to 0; weight decay 1e-4 on conv and dense kernels only
            (no decay on BatchNorm scales and shifts or on biases); each block's last BatchNorm
            scale starts at 0; label smoothing 0.1; bfloat16 compute; 90 epochs.
  smoke     the same pipeline on a tiny net at 32 pixels for a few steps: seconds, for tests.
docs/recipes-and-configs.md gives the source of each setting.

Shortcuts: model (another model, the recipe's training unchanged), size (the training crop and
the evaluation size, in pixels), epochs, steps, batch_size (the learning rate scaled with it),
lr, seed, data_dir, dtype, minutes, as in configs/cifar10.py, whose docstring lists the recipe
toolkit.
"""

from cv_jax.config import apply_shortcuts, base_config, model_section, parse_arg

RECIPES = ("resnet50", "smoke")
# Goyal et al. (2017): learning rate 0.1 for every 256 images of the batch.
LR_PER_256 = 0.1
# The ImageNet training set's per-channel mean and standard deviation (images in [0, 1]), as
# torchvision's ImageNet models are trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def get_config(arg=None):
    arg = parse_arg(arg, recipes=RECIPES, model="", size=0, epochs=0.0, steps=0, batch_size=0,
                    lr=0.0, seed=0, data_dir="", dtype="", minutes=0.0)
    config = base_config()
    config.recipe = arg.recipe or "resnet50"
    config.recipe_reason = "named in the config string" if arg.recipe else "the default recipe"
    _recipe(config, batch_size=1024, size=224)
    if config.recipe == "smoke":
        _smoke(config)
    if arg.model and arg.model != config.model.name:
        config.model = model_section(arg.model)
        if "zero_init_residual" in config.model:  # the ResNets: last BN scale of a block at 0
            config.model.zero_init_residual = True
    if arg.size:
        config.dataset.update(stream_crop=arg.size, image_size=(arg.size, arg.size))
    apply_shortcuts(config, arg)
    return config


def _recipe(config, batch_size, size):
    """ResNet-50 at ``size`` pixels and ``batch_size``: the module docstring's recipe."""
    config.dataset.update(
        name="imagenet", train_split="train", test_split="val",
        image_size=(size, size), mean=IMAGENET_MEAN, std=IMAGENET_STD,
        # Grain reads, decodes, crops and flips the training images on the host.
        pipeline="streaming", stream_crop=size, stream_crop_scale=(0.08, 1.0), stream_flip=True,
        stream_resize="antialias")  # "bilinear": OpenCV's, several times cheaper (docs/data.md)
    config.augment.update(crop_padding=0, flip=False)  # nothing more on the device
    config.model = model_section("resnet50", zero_init_residual=True)
    config.training.update(batch_size=batch_size, num_epochs=90.0, compute_dtype="bfloat16",
                           eval_every_epochs=5.0, checkpoint_every_steps=1000,
                           log_every_steps=100)
    config.optimizer.update(name="sgd", learning_rate=LR_PER_256 * batch_size / 256,
                            momentum=0.9, nesterov=True, weight_decay=1e-4,
                            decay_mask="kernel$", freeze="", lr_multipliers="")
    config.schedule.update(name="cosine", warmup_epochs=5.0, warmup_fraction=0.0,
                           warmup_init_factor=0.0, end_factor=0.0)
    config.loss.label_smoothing = 0.1
    config.eval.update(tta_flip=False, tta_translate=0)


def _smoke(config):
    """A tiny net at 32 pixels, batch 16, 2 epochs (1 of warmup), evaluated after each."""
    _recipe(config, batch_size=16, size=32)
    config.model = model_section("convnet", layers="conv:16:s2,pool:max:2,conv:32", fc="",
                                 flatten="avg", batch_norm=True)
    config.dataset.stream_threads = 2
    config.training.update(num_epochs=2.0, eval_every_epochs=1.0, checkpoint_every_steps=0,
                           log_every_steps=1)
    config.schedule.warmup_epochs = 1.0
    config.eval.batch_size = 16
