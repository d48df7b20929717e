"""`ssl-jax finetune`: train a head (and the encoder) on a task with the pretraining trainer,
then score the whole eval split.

    scores = run.finetune(config, workdir, init="hf:/path/to/bert")   # or "none", or a workdir

The run is an ordinary trainer run of the task's objective (checkpoints, metrics.jsonl, resume:
re-running finishes training, or only re-scores a finished run). At the end the eval split's
task metrics are written as the last `eval` row of metrics.jsonl and to `eval_results.json`.
"""
import copy

import jax

from ssl_jax import metrics as metrics_lib
from ssl_jax import trainer
from ssl_jax.finetune import config as finetune_config
from ssl_jax.finetune import data
from ssl_jax.finetune import evaluation
from ssl_jax.finetune import pretrained
from ssl_jax.finetune import tagging



def prepare(config, init: str):
  """(config ready for the trainer, pretrained encoder or None): the init's model and
  vocabulary, and the step count and warmup from config.finetune (`set_schedule`)."""
  finetune_config.validate(config)
  config, encoder = pretrained.load(config, init)
  d = config.data
  finetune_config.set_schedule(
      config, lambda: data.num_rows(config, "train"),
      finetune_config.base_config(config.objective, d.task, d.format).train.num_steps)
  data.featurized(config, "validation")  # cached: a bad eval file fails now, not after training
  return config, encoder


def check(config, init: str) -> None:
  """Raises for what would fail `finetune(config, ..., init)` before training: its settings, the
  init's family and vocabulary, the data files and their examples. It loads no weights (the
  eval suite checks every task before the first one trains)."""
  if config.objective in ("span_corruption", "denoising"):
    from ssl_jax.finetune import text_to_text  # pylint: disable=g-import-not-at-top
    config = text_to_text.prepare(copy.deepcopy(config), init)
    for split in ("train", "validation"):
      text_to_text.read_pairs(config, split)
  elif config.objective == "causal_lm":
    from ssl_jax.finetune import in_context  # pylint: disable=g-import-not-at-top
    in_context.check(config)
  else:
    finetune_config.validate(config)
    for split in ("train", "validation"):
      examples = data.read_examples(config, split)
      if config.objective == "tagging":   # featurizing refused them only once the task trained
        tagging.check_tags(config, examples, split)


def method(config) -> str:
  """How `finetune` scores a task config: 'text_to_text', 'in_context', or its head's objective
  (the `objective` its eval_results.json and the eval-suite's scores name)."""
  return {"span_corruption": "text_to_text", "denoising": "text_to_text",
          "causal_lm": "in_context"}.get(config.objective, config.objective)


def finetune(config, workdir: str, init: str = "none") -> dict:
  """Fine-tunes from `init` into `workdir` and returns the eval split's scores.

  T5/BART configs (objective span_corruption/denoising: configs/finetune/text_to_text.py) run
  `text_to_text.finetune`; GPT configs (causal_lm: configs/finetune/in_context/) score the
  model in context (`in_context.run`, no training).
  """
  if method(config) == "text_to_text":
    from ssl_jax.finetune import text_to_text  # pylint: disable=g-import-not-at-top
    return text_to_text.finetune(copy.deepcopy(config), workdir, init)
  if method(config) == "in_context":
    from ssl_jax.finetune import in_context  # pylint: disable=g-import-not-at-top
    return in_context.run(copy.deepcopy(config), workdir, init)
  config, encoder = prepare(copy.deepcopy(config), init)
  state = trainer.train_and_evaluate(
      config, workdir, init_params=lambda params: pretrained.with_encoder(params, encoder))
  exp = trainer.Experiment.build(config)
  step = int(jax.device_get(state.step))
  scores = evaluation.evaluate(exp, state.params)
  if jax.process_index() == 0:
    with metrics_lib.MetricsLogger(workdir, num_steps=config.train.num_steps, log_every=1,
                                   start_step=step) as logger:
      logger.write_eval(step, {k: (v, 1.0) for k, v in scores.items()}, replace=True)
    results = {"task": config.data.task, "objective": config.objective, "init": init,
               "step": step, "train_rows": data.num_rows(config, "train"), "scores": scores}
    metrics_lib.write_results(workdir, results)
  return scores

