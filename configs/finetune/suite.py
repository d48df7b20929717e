"""An evaluation suite: fine-tune one encoder on several tasks, write a score table.

  ssl-jax eval-suite --config configs/finetune/suite.py --init hf:DIR --workdir /tmp/suite \
      --config.data_dir=/data/finetune            # <data_dir>/<task>/{train,dev}.{tsv,conllu,json}
  ssl-jax eval-suite --config configs/finetune/suite.py:tiny --init /tmp/bert_tiny --workdir W \
      --config.tasks=sst2,upos --config.files.sst2.train_file=... (per-task files win)

Writes <workdir>/scores.md and scores.json (per task: every metric and a headline score; and the
average). Variants: pretrained (default), tiny (the task configs' tiny variants).
"""
import os

import ml_collections

_TASKS = ("sst2", "rte", "mrpc", "stsb", "upos", "squad")  # the default list
_ALL = ("sst2", "rte", "mnli", "mrpc", "qqp", "qnli", "cola", "stsb", "upos", "squad")


def get_config(arg: str = "pretrained"):
  c = ml_collections.ConfigDict()
  c.tasks = ",".join(_TASKS)
  c.variant = arg
  c.config_dir = os.path.dirname(os.path.abspath(__file__))
  c.data_dir = ""
  c.files = ml_collections.ConfigDict(
      {t: ml_collections.ConfigDict(dict(train_file="", eval_file="")) for t in _ALL})
  # Applied to every task; 0 keeps the task's own value.
  c.overrides = ml_collections.ConfigDict(dict(
      global_batch_size=0, num_steps=0, num_epochs=0.0, sequence_length=0, max_train_examples=0,
      max_eval_examples=0, learning_rate=0.0))
  return c
