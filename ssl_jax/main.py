r"""The `ssl-jax` command line. It parses flags and dispatches; the work happens in importable modules.

  ssl-jax train --config configs/bert.py:tiny --workdir /tmp/bert [--config.train.num_steps=100]
  ssl-jax eval  --workdir /tmp/bert   (the run's config.json; or --config C [--config.* ...])
  ssl-jax convert --to_hf WORKDIR --out DIR [--steps N]   (a Hugging Face model directory)
  ssl-jax vocab train --config configs/t5.py:tiny --vocab_size 8000 --out /tmp/spm.model
  ssl-jax probe --workdir /tmp/bert [--probes pos_accuracy,linear_probe] [--conllu F.conllu]
  ssl-jax finetune --config configs/finetune/sst2.py --init hf:DIR --workdir /tmp/sst2 \
      --config.data.train_file=train.tsv --config.data.eval_file=dev.tsv   (--init none | WORKDIR)
  ssl-jax eval-suite --config configs/finetune/suite.py --init hf:DIR --workdir /tmp/suite \
      --config.data_dir=DIR
  ssl-jax finetune --config configs/finetune/text_to_text.py --init T5_OR_BART_WORKDIR ...
  ssl-jax finetune --config configs/finetune/in_context/sst2.py --init GPT_WORKDIR ...  (no training)

Multi-process (one process per host or GPU; see launch/): the same command on every process, plus
--coordinator_address=HOST:PORT --num_processes=N --process_id=I where JAX cannot detect them.
"""
import functools
import gc
import json
import logging as std_logging
import os
import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ssl_jax import distributed

COMMANDS = ("train", "eval", "convert", "vocab", "finetune", "eval-suite", "probe")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and variant, e.g. configs/bert.py:tiny. Override any value "
    "with --config.<section>.<key>=<value>. `ssl-jax eval` without it: the run's config.json.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory: config.json, metrics.jsonl, tensorboard/, checkpoints/. "
    "Re-running on the same workdir resumes.")
_TO_HF = flags.DEFINE_string(
    "to_hf", None, "convert: the --workdir of an `ssl-jax train` run, written as a Hugging Face "
    "model directory (a Hugging Face directory needs no conversion: --init hf:DIR).")
_OUT = flags.DEFINE_string("out", None, "convert / vocab / probe: where to write the result "
                           "(probe: a JSON-lines file, default <workdir>/probes.jsonl).")
_INIT = flags.DEFINE_string(
    "init", None, "finetune / eval-suite: the model to start from: 'none' (random), "
    "'hf:DIR' (a Hugging Face BERT directory; T5/BART for text-to-text configs, GPT-2 for "
    "in-context configs) or the --workdir of an `ssl-jax train` BERT run (a T5/BART one for "
    "text-to-text configs, a GPT one for in-context configs): its latest checkpoint, or "
    "WORKDIR/checkpoints/STEP for another.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 8000, "vocab train: SentencePiece pieces.")
_PROBES = flags.DEFINE_list(
    "probes", None, "probe: probes to run (default: all that apply to the run's objective); see "
    "ssl_jax/probes/__init__.py.")
_CONLLU = flags.DEFINE_list(
    "conllu", [], "probe: CoNLL-U files for probe sentences (default: the default corpus).")
_PROBE_SENTENCES = flags.DEFINE_integer("probe_sentences", 256, "probe: number of sentences.")
_STEPS = flags.DEFINE_list(
    "steps", None, "probe: checkpoint steps (default: all); convert: the one step (default: the "
    "latest).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-process: HOST:PORT of process 0. Detected on TPU VMs and "
    "under srun/mpirun; elsewhere give it with --num_processes and --process_id.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-process: number of processes (1 = single process, no detection).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_s", distributed.HEARTBEAT_TIMEOUT_S,
    "Multi-process: a process silent this long counts as dead and the whole job stops.")


# The flags each command reads; any other of these given to it is refused, not ignored.
_FLAGS_OF = {
    "train": ("config", "workdir"), "eval": ("config", "workdir"),
    "convert": ("to_hf", "out", "steps"), "vocab": ("config", "vocab_size", "out"),
    "finetune": ("config", "workdir", "init"), "eval-suite": ("config", "workdir", "init"),
    "probe": ("workdir", "probes", "conllu", "probe_sentences", "steps", "out"),
}


# The flags each command cannot run without.
_REQUIRED = {
    "train": ("config", "workdir"), "eval": ("workdir",), "convert": ("to_hf", "out"),
    "vocab": ("config", "out"), "finetune": ("config", "workdir", "init"),
    "eval-suite": ("config", "workdir", "init"), "probe": ("workdir",),
}


def _check_flags(command: str, arguments) -> None:
  """Exits, in one line, for a flag `command` does not read or one it needs and lacks, or an
  argument it takes none of (an override typed without its dashes was dropped, and the run
  trained with the default): before TensorFlow and JAX start (seconds), and without absl's page
  of usage above the reason."""
  problem = None
  if arguments and command != "vocab":   # `ssl-jax vocab train`: its own check
    dashes = [a for a in arguments if a.startswith("config.") and "=" in a]
    problem = (f"`ssl-jax {command}` takes no arguments besides its flags, but got "
               f"{' '.join(arguments)!r}"
               + (f"; a config override needs its dashes: --{dashes[0]}" if dashes else
                  "; remove them"))
  for name in sorted({n for names in _FLAGS_OF.values() for n in names} - set(_FLAGS_OF[command])):
    if problem is None and flags.FLAGS[name].present:
      users = ", ".join(c for c, names in _FLAGS_OF.items() if name in names)
      problem = f"--{name} is not a flag of `ssl-jax {command}` (it is for: {users}); remove it."
      break
  missing = [name for name in _REQUIRED[command] if not flags.FLAGS[name].value]
  if problem is None and missing:
    problem = (f"`ssl-jax {'vocab train' if command == 'vocab' else command}` needs "
               f"{' and '.join('--' + name for name in missing)}; see `ssl-jax --help`.")
  if problem:
    _flag_error(problem)


def _flag_error(problem: str):
  """Exits with `problem` on one line (app.UsageError would print the page of usage above it)."""
  sys.exit(f"FATAL Flags parsing error: {problem}")


def main(argv):
  if len(argv) < 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: ssl-jax {{{'|'.join(COMMANDS)}}} [flags]; see --help.")
  command = argv[1]
  _check_flags(command, argv[2:])
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_quieter_orbax)
  # Only a training loop asks the runtime about preemptions; in-context scoring (a causal_lm
  # fine-tuning config) trains nothing, and the runtime would swallow its SIGTERM.
  in_context = command == "finetune" and getattr(_CONFIG.value, "objective", None) == "causal_lm"
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         heartbeat_timeout_s=_HEARTBEAT.value,
                         preemption=command in ("train", "finetune", "eval-suite")
                         and not in_context)
  with distributed.fail_fast():
    distributed.check_same_everywhere(_settings(command))
    _dispatch(command, argv)


def _quieter_orbax(record) -> bool:
  """Orbax narrates every save at INFO, and warns that the checkpoints eval, probe and convert
  open read-only are read-only; keep its other warnings and its errors. (Records carry the
  standard library's levels; absl's logging.WARNING is its own scale, 1.)"""
  if "/orbax/" not in record.pathname:
    return True
  return (record.levelno >= std_logging.WARNING
          and not str(record.msg).startswith("Given directory is read only"))


def _settings(command: str) -> dict:
  """The command and the flags it reads (the config as JSON): the same in every process."""
  settings = {"command": command}
  for name in _FLAGS_OF[command]:
    value = flags.FLAGS[name].value
    settings[name] = json.loads(value.to_json_best_effort()) if name == "config" and value else value
  return settings


def _dispatch(command: str, argv):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # tf.data and the TensorBoard writer run on the host; the accelerators are JAX's.
  tf.config.set_visible_devices([], "GPU")
  work = _command(command, argv)
  # What is imported by now (TensorFlow, JAX, seqio, Flax: ~0.5M Python objects) lives as long as
  # the process. Out of the garbage collector's sight, its full collections and the interpreter's
  # exit take less time: ~3 s less per run of the tiny BERT, 2 s of it at exit.
  gc.freeze()
  from ssl_jax import checkpointing  # pylint: disable=g-import-not-at-top
  try:
    work()
  except checkpointing.Preempted as stop:   # saved; nothing after the training may run
    logging.warning("%s", stop)


def _steps():
  """--steps as integers (None when not given)."""
  if _STEPS.value is None:
    return None
  if not _STEPS.value:   # `--steps=`: probe would write an empty file over its results
    _flag_error("--steps= names no step; give checkpoint steps, e.g. --steps=64,128, or leave "
                "--steps out for every checkpoint.")
  try:
    return [int(s) for s in _STEPS.value]
  except ValueError:
    _flag_error(f"--steps={','.join(_STEPS.value)}: give checkpoint steps as integers, "
                "e.g. --steps=64,128.")


def _command(command: str, argv) -> Callable[[], object]:
  """Imports what `command` needs; returns the work to do (main checked its flags)."""
  if command in ("train", "eval"):
    from ssl_jax import trainer  # pylint: disable=g-import-not-at-top
    if command == "train":
      return functools.partial(trainer.train_and_evaluate, _CONFIG.value, _WORKDIR.value)
    return functools.partial(trainer.evaluate_workdir, _CONFIG.value, _WORKDIR.value)
  if command == "convert":
    from ssl_jax.interop import convert  # pylint: disable=g-import-not-at-top
    steps = _steps()
    if steps is not None and len(steps) != 1:
      _flag_error(f"--steps={','.join(_STEPS.value)}: `ssl-jax convert` writes one "
                  "checkpoint; give one step (default: the latest).")
    return functools.partial(convert.to_hf, _TO_HF.value, _OUT.value,
                             None if steps is None else steps[0])
  if command in ("finetune", "eval-suite"):
    from ssl_jax.finetune import run as finetune_run  # pylint: disable=g-import-not-at-top
    from ssl_jax.finetune import suite  # pylint: disable=g-import-not-at-top
    run = finetune_run.finetune if command == "finetune" else suite.run
    return functools.partial(run, _CONFIG.value, _WORKDIR.value, _INIT.value)
  if command == "probe":
    from ssl_jax.probes import runner  # pylint: disable=g-import-not-at-top
    return functools.partial(
        runner.probe_workdir, _WORKDIR.value, _PROBES.value, conllu=_CONLLU.value,
        num_sentences=_PROBE_SENTENCES.value,
        steps=_steps(), out=_OUT.value)
  assert command == "vocab", command  # main() accepts only COMMANDS
  from ssl_jax.data import vocabularies  # pylint: disable=g-import-not-at-top
  if argv[2:] != ["train"]:
    raise app.UsageError("usage: ssl-jax vocab train --config C --vocab_size N --out F.model")
  return functools.partial(vocabularies.train_vocab_for_task, _CONFIG.value, _VOCAB_SIZE.value,
                           _OUT.value)


def _parse_flags(argv):
  """absl's flag parsing; a `--config.a.b=v` override of a key the config lacks becomes a usage
  error naming it (ml_collections raises a bare AttributeError from deep inside)."""
  for i, arg in enumerate(argv):   # ml_collections would run a JSON file as Python: a NameError
    value = arg[len("--config="):] if arg.startswith("--config=") else (
        argv[i + 1] if arg == "--config" and i + 1 < len(argv) else "")
    path = value.split(":", 1)[0]
    if path and not path.endswith(".json") and not os.path.exists(path):
      sys.exit(f"FATAL Flags parsing error: --config={value} names {path}, which does not exist "
               f"(the working directory is {os.getcwd()}); pass a config file, e.g. "
               "--config=configs/bert.py:tiny.")
    if path.endswith(".json"):
      sys.exit(f"FATAL Flags parsing error: --config={value} is a JSON file; --config takes a "
               "Python config file and variant, e.g. configs/bert.py:tiny. To repeat a run, pass "
               "the file it started with and its --config.* overrides (its config.json lists "
               "every value); `ssl-jax eval` without --config reads the run's config.json.")
  overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
  if overrides and not any(a == "--config" or a.startswith("--config=") for a in argv):
    sys.exit(f"FATAL Flags parsing error: {' '.join(overrides)} overrides a config, but no "
             "--config names one; pass the config file too (e.g. --config=configs/bert.py:tiny), "
             "or, for `ssl-jax eval`, drop the overrides to use the run's config.json.")
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    cause = e.args[0] if isinstance(e, AttributeError) and e.args else e
    message = str(cause.args[0] if isinstance(cause, KeyError) and cause.args else cause)
    key, _, hint = message.partition("\n")
    key = key.strip("'\"")
    named = [a.split("=", 1)[0] for a in argv
             if a.startswith("--config.") and key in a.split("=", 1)[0].split(".")]
    if not named:   # not an override's key
      if "get_config" in message:
        sys.exit(f"FATAL Flags parsing error: the --config file defines no get_config "
                 f"({message}); a config file needs `def get_config(arg=...)` returning an "
                 "ml_collections.ConfigDict.")
      raise
    sys.exit(f"FATAL Flags parsing error: {' '.join(named)} sets a key "
             f"the config does not have: {key!r}.{' ' + hint if hint else ''} Overrides can only "
             "set keys the config file defines: fix the spelling, or add the key there.")


def run():
  """Console entry point (`ssl-jax`)."""
  # absl's --help prints the __main__ module's docstring and the flags keyed to sys.argv[0]; under
  # the console script, __main__ is a wrapper and these flags belong to ssl_jax.main.
  sys.modules["__main__"].__doc__ = __doc__
  for flag in flags.FLAGS.get_key_flags_for_module(__name__):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main, argv=sys.argv, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
