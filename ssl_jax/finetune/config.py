"""The fine-tuning config: the pretraining schema plus the task's data and the `finetune` section.

Files in `configs/finetune/` start from `base_config(...)`. Added keys:

  config.data.task            GLUE task name (label names, metrics, TSV columns; glue_tsv and
                              tfds need one: a TSV of another task borrows the GLUE task with
                              its columns, e.g. sst2, and sets data.labels), or a free name
                              (conllu, squad_json)
  config.data.format          'glue_tsv' | 'tfds' (glue/<task>) | 'conllu' | 'squad_json'
  config.data.train_file / eval_file       the files (glue_tsv, conllu, squad_json)
  config.data.train_split / eval_split / tfds_data_dir                  (tfds)
  config.data.max_train_examples / max_eval_examples   0 = all; else the first N of the file
  config.data.labels          comma-separated label (tag) names; '' = the task's own
  config.data.tag_column      tagging: the CoNLL-U column, 'upos' (the UD tags) | 'xpos' (the
                              treebank's own, e.g. Penn tags in English EWT; labels '' = the tags
                              of train_file)
  config.data.metrics         comma-separated metric names; '' = the task's own
  config.data.qa              max_query_length, doc_stride (tokens between window starts),
                              max_answer_length (tokens), allow_no_answer (SQuAD 2.0),
                              null_score_threshold
  config.finetune.init        'none' | 'hf:DIR' | an ssl_jax workdir (the CLI's --init sets it)
  config.finetune.num_epochs  > 0: train.num_steps = ceil(epochs * train rows / batch) (a
                              num_steps given as well is refused: set num_epochs=0 for it)
  config.finetune.warmup_ratio  > 0: optim.warmup_steps = ceil(ratio * num_steps) (HF's), unless
                              optim.warmup_steps > 0 (steps win, as in HF TrainingArguments)
"""
import math
from typing import Callable

from absl import logging
import ml_collections

from ssl_jax import config as config_lib
from ssl_jax.finetune import formats
from ssl_jax.finetune import metrics

FORMATS = ("glue_tsv", "tfds", "conllu", "squad_json")
# A fine-tuning config carries the pretraining schema, but reads its task's files: these
# settings (a section: each of its keys) choose and corrupt the pretraining stream only.
STREAM_SETTINGS = ("data.source", "data.text_files", "data.tfds_name", "data.mixture",
                   "data.shuffle_buffer", "data.corpus", "data.mlm", "data.span_corruption",
                   "data.denoising")


def base_config(objective: str, task: str, data_format: str, *,
                preset: str = "tiny") -> ml_collections.ConfigDict:
  """A fine-tuning config with BERT-paper defaults (lr 5e-5 scaled for tiny models, 3 epochs,
  10% warmup, batch 32, no periodic eval: the full eval set is scored at the end)."""
  c = config_lib.base_config(objective=objective, family="bert", preset=preset)
  c.data.update(dict(
      task=task, format=data_format, train_file="", eval_file="", train_split="train",
      eval_split="validation", tfds_data_dir="", max_train_examples=0, max_eval_examples=0,
      labels="", metrics="", tag_column="upos"))
  c.data.sequence_length = 128
  c.data.qa = ml_collections.ConfigDict(dict(
      max_query_length=64, doc_stride=128, max_answer_length=30, allow_no_answer=True,
      null_score_threshold=0.0))
  c.finetune = ml_collections.ConfigDict(dict(init="none", num_epochs=3.0, warmup_ratio=0.1))
  c.train.update(global_batch_size=32, num_steps=1000, log_every=50, eval_every=1000,
                 eval_steps=0, save_every=1000, keep_checkpoints=1)
  c.optim.update(learning_rate=5e-5, weight_decay=0.01, eps=1e-8, warmup_steps=0)
  return c


def use_tiny_model(config: ml_collections.ConfigDict, learning_rate: float = 1e-3) -> None:
  """For `--init none` or a tiny pretrained model: the default vocabulary, a shorter sequence and
  a learning rate a 2-layer model from scratch can use."""
  config.data.vocab.kind = "default"
  config.model.vocab_size = -1  # the default vocabulary's size
  config.data.sequence_length = 64
  config.model.dropout_rate = 0.1
  config.optim.learning_rate = learning_rate


def glue_config(task: str, arg: str) -> ml_collections.ConfigDict:
  """GLUE `task` from GLUE-format TSV files (`--config.data.format=tfds` reads TFDS glue/<task>).

  Variants: 'pretrained' (lr 5e-5; model and vocabulary come from --init) and 'tiny' (a 2-layer
  model over the default vocabulary, lr 1e-3: `--init none` or a tiny ssl_jax pretraining run).
  """
  spec = formats.glue_spec(task)
  c = base_config("classification" if spec.label_names else "regression", task, "glue_tsv")
  if task == "mnli":
    c.data.eval_split = "validation_matched"
  set_variant(c, arg)
  return c


def set_variant(config, arg: str) -> None:
  """'pretrained': leave as is (the model comes from --init); 'tiny': `use_tiny_model`."""
  if arg == "tiny":
    use_tiny_model(config)
  elif arg != "pretrained":
    raise ValueError(f"config variant {arg!r} is unknown; use 'pretrained' or 'tiny'.")


def set_schedule(config: ml_collections.ConfigDict, train_rows: Callable[[], int],
                 default_steps: int) -> None:
  """train.num_steps from finetune.num_epochs (> 0) and `train_rows()`, and optim.warmup_steps
  from finetune.warmup_ratio (> 0) when optim.warmup_steps is 0. Raises for a train.num_steps
  other than `default_steps` (the config's own) that the epochs would replace."""
  f = config.finetune
  if f.num_epochs > 0 and config.train.num_steps != default_steps:
    raise ValueError(
        f"config.train.num_steps={config.train.num_steps} is not read: "
        f"config.finetune.num_epochs={f.num_epochs} sets the step count. Pass "
        "--config.finetune.num_epochs=0 to train that many steps, or leave num_steps at "
        f"{default_steps}.")
  if f.num_epochs > 0:
    config.train.num_steps = max(
        1, math.ceil(f.num_epochs * train_rows() / config.train.global_batch_size))
  if f.warmup_ratio > 0 and config.optim.warmup_steps > 0:
    logging.info("optim.warmup_steps=%d is set: finetune.warmup_ratio=%s is not used.",
                 config.optim.warmup_steps, f.warmup_ratio)
  elif f.warmup_ratio > 0:
    # HF TrainingArguments.get_warmup_steps: ceil (a ratio of 0.105 over 60 steps warms up for 7)
    config.optim.warmup_steps = math.ceil(f.warmup_ratio * config.train.num_steps)


def refuse_unread(config, defaults, settings, reason: str) -> None:
  """Raises for a setting of `settings` (dotted paths; a section stands for each of its keys)
  whose value differs from `defaults`'s: the run would not read it, and its config.json would
  name a change that did nothing."""
  for path in settings:
    value, default = config, defaults
    for key in path.split("."):
      value, default = value[key], default[key]
    if isinstance(default, ml_collections.ConfigDict):
      refuse_unread(config, defaults, [f"{path}.{k}" for k in default], reason)
    elif value != default:
      raise ValueError(f"config.{path}={value!r} is invalid: {reason}; leave it at {default!r}.")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the fine-tuning keys (the rest is `ssl_jax.config.validate`'s)."""
  d, f = config.data, config.finetune
  refuse_unread(config, base_config(config.objective, d.task, d.format),
                (*STREAM_SETTINGS, "data.pack"),
                "fine-tuning reads the task's examples (data.format, train_file, eval_file), one "
                "per row, not a pretraining stream")

  def check(ok, setting, value, fix):
    if not ok:
      raise ValueError(f"config.{setting}={value!r} is invalid: {fix}")

  check(d.format in FORMATS, "data.format", d.format, f"use one of {', '.join(FORMATS)}.")
  check(f.num_epochs >= 0, "finetune.num_epochs", f.num_epochs,
        "use 0 (train.num_steps decides) or a positive number of epochs.")
  check(0 <= f.warmup_ratio < 1, "finetune.warmup_ratio", f.warmup_ratio, "use a ratio in [0, 1).")
  check(d.max_train_examples >= 0, "data.max_train_examples", d.max_train_examples,
        "use 0 (all) or a positive count.")
  if d.metrics:
    unknown = sorted(set(d.metrics.split(",")) - set(metrics.CLASSIFICATION))
    check(not unknown, "data.metrics", d.metrics,
          f"{unknown} are unknown; use comma-separated names from "
          f"{sorted(metrics.CLASSIFICATION)}.")
    check(config.objective in ("classification", "regression"), "data.metrics", d.metrics,
          f"objective {config.objective!r} scores its own metrics; leave data.metrics ''.")
    if "f1" in d.metrics.split(",") and config.objective == "classification":
      num_labels = len(formats.label_names(d.task, d.labels))
      check(num_labels == 2, "data.metrics", d.metrics,
            f"'f1' is the binary F1 of label 1, and task {d.task!r} has {num_labels} labels; "
            "use accuracy or matthews_corr.")
  check(d.tag_column in formats.TAG_COLUMNS, "data.tag_column", d.tag_column,
        f"use one of {', '.join(formats.TAG_COLUMNS)}.")
  check(d.max_eval_examples >= 0, "data.max_eval_examples", d.max_eval_examples,
        "use 0 (all) or a positive count.")
  if config.objective != "extractive_qa":
    return
  qa = d.qa
  check(qa.doc_stride > 0, "data.qa.doc_stride", qa.doc_stride, "use a positive token count.")
  check(qa.max_answer_length > 0, "data.qa.max_answer_length", qa.max_answer_length,
        "use a positive token count.")
  check(0 < qa.max_query_length < d.sequence_length - 3, "data.qa.max_query_length",
        qa.max_query_length, f"use 1..{d.sequence_length - 4} (data.sequence_length minus "
        "[CLS], two [SEP] and one passage token).")
