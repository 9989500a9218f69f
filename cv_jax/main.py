"""Command line: ``python -m cv_jax.main --config=configs/cifar10.py[:variant] --workdir=DIR``.

Config values can be overridden with ``--config.section.key=value``; a key that does not
exist is an error (the config is locked).
"""

import logging

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from cv_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (and :variant).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # quiet orbax/jax INFO chatter
    logging.getLogger("cv_jax").setLevel(logging.INFO)
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
