"""Shared by test files: a config parsed from `ssl-jax train` flags, trained in this process, or
saved untrained as a run directory."""
import os

import jax
import tensorflow as tf
from absl import flags as absl_flags
from ml_collections import config_flags

from ssl_jax import checkpointing
from ssl_jax import trainer
from ssl_jax.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli_config(name: str, *flags: str):
  """`--config=configs/<name>.py:tiny` with `--config.x.y=v` overrides, parsed by the parser the
  CLI uses (so the test and a CLI run get the same config from the same flags)."""
  argv = ["ssl-jax", f"--config={os.path.join(REPO, 'configs', name + '.py')}:tiny", *flags]
  values = absl_flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
  values(argv)
  return values.config


def train_here(name: str, workdir, *flags: str, num_devices: int = 0) -> None:
  """What `ssl-jax train --config=configs/<name>.py:tiny --workdir=WORKDIR FLAGS` runs, in this
  process, on its first `num_devices` devices (0: all of conftest's 8). A run on 1 device of 8
  gives bit for bit the metrics and state of a 1-device `ssl-jax train` process."""
  config = cli_config(name, *flags)
  exp = trainer.Experiment.build(config, devices=jax.devices()[:num_devices or None])
  trainer.train_and_evaluate(config, str(workdir), exp=exp)


def save_untrained_run(run_dir: str, config, devices):
  """An ssl_jax run directory (config.json + a step-1 checkpoint) of `config`, untrained; returns
  its params (host arrays)."""
  exp = trainer.Experiment.build(config, devices)
  state = exp.init_state()
  manager = checkpointing.make_manager(run_dir, config.train, enable_async=False)
  data_position = pipeline.DataIterator(tf.data.Dataset.range(3), None)
  checkpointing.save(manager, 1, state, data_position, config, force=True)
  manager.close()
  trainer.write_config(config, run_dir)
  return jax.device_get(state.params)
