"""Command line: ``python -m cv_jax.main --config=configs/cifar10.py[:variant] --workdir=DIR``.

Config values can be overridden with ``--config.section.key=value``; a key that does not
exist is an error (the config is locked). ``--explain=SECTION`` (or ``all``) prints that
section's keys with their values, defaults, allowed values and docs, and exits without training.

Several processes (one per host) train one run together when given --coordinator_address,
--num_processes and --process_id (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES,
$JAX_PROCESS_ID), or when started by SLURM, Open MPI or on a Cloud TPU VM; see
cv_jax/runtime/distributed.py.
"""

import logging
import sys

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from cv_jax.config import EXPLAIN_SECTIONS, explain
from cv_jax.runtime import cpu_defaults, distributed
from cv_jax.training import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (and :variant).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_enum("explain", None, EXPLAIN_SECTIONS, "Print this config section's keys (value, "
                  "default, allowed values, doc) and exit without training.")
distributed.define_flags(FLAGS)
flags.mark_flags_as_required(["config"])
flags.register_multi_flags_validator(
    ["workdir", "explain"], lambda f: f["workdir"] is not None or f["explain"] is not None,
    "--workdir is required (unless --explain is given)")


def parse_flags(argv: list[str]) -> list[str]:
    """Joins the multi-process job, then parses every flag. Reading --config may start the JAX
    backend (the default recipe depends on it), and jax.distributed.initialize must come first."""
    early = flags.FlagValues()
    distributed.define_flags(early)
    try:
        early(argv, known_only=True)
    except flags.Error:
        return app.parse_flags_with_usage(argv)  # reports the bad value with usage, and exits
    try:
        distributed.initialize(distributed.job_from(early))
    except ValueError as error:
        sys.exit(f"FATAL {error}")
    return app.parse_flags_with_usage(argv)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.explain:
        print(explain(FLAGS.config, FLAGS.explain))
        return
    absl_logging.set_verbosity(absl_logging.WARNING)  # quiet orbax/jax INFO chatter
    # Every process runs the same loop; process 0 tells the story, the others only warn.
    logging.getLogger("cv_jax").setLevel(logging.INFO if jax.process_index() == 0
                                         else logging.WARNING)
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    cpu_defaults.apply()  # before JAX starts its backend
    app.run(main, flags_parser=parse_flags)
