"""The experiment config schema: every section with its defaults, and validation of every value.

Config files in `configs/` start from `base_config(...)` and change what differs, so every run has
every key (and `--config.a.b=v` overrides can only name keys that exist). `validate(config)` runs
before anything is built or compiled and raises a `ValueError` that names the setting, the value
and the fix.
"""
import importlib.util
import math
import os

import ml_collections
from absl import logging

from ssl_jax import objectives
from ssl_jax.models import config as model_config_lib

_SOURCES = ("default_corpus", "text_files", "tfds")
_ON_NONFINITE = ("skip", "abort")
_SENTENCE_TASKS = ("nsp", "sop", "none")
_VOCAB_KINDS = ("default", "wordpiece", "sentencepiece", "byte")

DEFAULT_LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("length", None),
    ("layers", None),
)


def load_config_file(path: str, variant: str = "") -> ml_collections.ConfigDict:
  """`get_config(variant)` of the config file at `path` (what `--config=PATH:VARIANT` loads).

  The file is loaded under a name of its own and never enters `sys.modules`, so two config files
  with the same base name (configs/finetune/sst2.py, configs/finetune/in_context/sst2.py) never
  shadow each other.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} does not exist.")
  spec = importlib.util.spec_from_file_location(f"ssl_jax_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def base_config(objective: str, family: str, preset: str) -> ml_collections.ConfigDict:
  """All sections with defaults; the model section is the named preset of `family`."""
  c = ml_collections.ConfigDict()
  c.objective = objective
  c.model = model_config_lib.config_to_dict(model_config_lib.get_preset(family, preset))

  c.data = ml_collections.ConfigDict()
  c.data.source = "default_corpus"
  c.data.text_files = ""
  c.data.tfds_name = "c4/en:3.1.0"
  c.data.tfds_data_dir = ""  # '' = TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets)
  c.data.mixture = ""
  c.data.seed = 0
  c.data.shuffle_buffer = 1024
  c.data.pack = True
  # Logical input shards; the batch stream depends on this, not on the process count (0 = one per
  # process of the run that starts it). See ssl_jax/data/shards.py.
  c.data.num_shards = 0
  c.data.sequence_length = 128
  c.data.targets_length = 32
  c.data.corpus = ml_collections.ConfigDict(dict(num_documents=20_000, seed=0))
  c.data.vocab = ml_collections.ConfigDict(
      dict(kind="default", path="", extra_ids=100, lower_case=True))
  # mlm.predictions_per_row: a packed row's masked_* length; 0 = the most a row can hold
  # (`objectives.mlm.most_predictions_per_row`: 21 at 128 tokens). Set it to resume a data position
  # saved before 2026-12-02, when that length was sized more loosely (24 at 128 tokens).
  c.data.mlm = ml_collections.ConfigDict(dict(
      mask_rate=0.15, mask_token_ratio=0.8, random_token_ratio=0.1, whole_word=False,
      max_predictions=20, sentence_task="nsp", predictions_per_row=0))
  c.data.span_corruption = ml_collections.ConfigDict(dict(
      noise_density=0.15, mean_span_length=3.0))
  c.data.denoising = ml_collections.ConfigDict(dict(
      mask_ratio=0.0, random_ratio=0.0, delete_ratio=0.0, infill_ratio=0.3, poisson_lambda=3.0,
      whole_word=False, permute_sentence_ratio=1.0, rotate_ratio=0.0))

  c.train = ml_collections.ConfigDict(dict(
      global_batch_size=32, num_steps=1000, microbatches=1, log_every=50, eval_every=250,
      eval_steps=10, save_every=500, keep_checkpoints=3, log_spaced_checkpoints=False, seed=0,
      on_nonfinite="skip", z_loss=0.0))
  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=1e-3, warmup_steps=100, schedule="linear", min_lr_ratio=0.0,
      weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, adafactor_momentum=0.0, grad_clip_norm=1.0))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.logical_axis_rules = DEFAULT_LOGICAL_AXIS_RULES
  return c


def use_tiny_run(config: ml_collections.ConfigDict, learning_rate: float = 2e-3) -> None:
  """A run that shows learning in minutes on 2 CPU cores: default corpus, no dropout, 300 steps."""
  config.model.vocab_size = -1  # the default corpus vocabulary
  config.model.dropout_rate = config.model.attention_dropout_rate = 0.0
  config.data.sequence_length = 128
  config.train.update(global_batch_size=32, num_steps=300, log_every=25, eval_every=100,
                      save_every=100)
  config.optim.update(learning_rate=learning_rate, warmup_steps=30)


def use_pod_run(config: ml_collections.ConfigDict, *, vocab_kind: str, sequence_length: int,
                global_batch_size: int, num_steps: int, learning_rate: float,
                warmup_steps: int) -> None:
  """A published-size run: real text from TFDS, a real vocabulary, parameters sharded (FSDP)."""
  config.data.vocab.kind = vocab_kind
  # T5's 100 sentinels are span corruption's alone: BERT's vocab.txt is its 30522 rows.
  config.data.vocab.extra_ids = 100 if config.objective == "span_corruption" else 0
  config.data.source = "tfds"
  config.data.sequence_length = sequence_length
  config.train.update(global_batch_size=global_batch_size, num_steps=num_steps,
                      save_every=10_000, eval_every=10_000)
  config.optim.update(learning_rate=learning_rate, warmup_steps=warmup_steps)
  config.mesh.update(data=1, fsdp=-1)


def _check(ok: bool, setting: str, value, fix: str) -> None:
  if not ok:
    raise ValueError(f"config.{setting}={value!r} is invalid: {fix}")


def _one_of(setting: str, value, choices) -> None:
  _check(value in choices, setting, value, f"use one of {', '.join(map(repr, choices))}.")


def validate(config: ml_collections.ConfigDict):
  """Checks every value that does not need devices or files; returns the model dataclass.

  Mesh/device and batch/device checks live in `partitioning`, optimizer checks in `optim`,
  vocabulary and file checks in `data`; all of them run before the first compile.
  """
  _one_of("objective", config.objective, objectives.NAMES)
  model_cfg = model_config_lib.config_from_dict(dict(config.model))
  if model_cfg.param_dtype == "bfloat16":
    logging.warning(
        "config.model.param_dtype='bfloat16': the optimizer keeps no float32 copy of the weights, "
        "so updates smaller than half a bfloat16 step of a weight are lost (at lr 3e-5 most "
        "BERT-sized weights do not move, and weight decay does nothing). For mixed precision "
        "use config.model.dtype='bfloat16' with param_dtype='float32'.")
  family = model_config_lib.family_of(model_cfg)
  objective = objectives.get(config.objective)
  _check(family in objective.family, "model.family", family,
         f"objective {config.objective!r} trains {' or '.join(objective.family)} models; pick a "
         "config of that family (see configs/).")

  d = config.data
  _one_of("data.source", d.source, _SOURCES)
  _one_of("data.vocab.kind", d.vocab.kind, _VOCAB_KINDS)
  # A file named for another source or vocabulary kind was ignored: the run trained on the
  # default corpus or vocabulary while its config.json named the user's file.
  # With a mixture, data.source is not read, and text_files only for a 'text_files' entry.
  mixed = [e.rpartition(":")[0].strip() for e in d.get("mixture", "").split(",") if e.strip()]
  _check(not mixed or d.source == "default_corpus", "data.source", d.source,
         f"config.data.mixture={d.mixture!r} replaces the source, which is not read; name it in "
         "the mixture (e.g. 'text_files:1' or 'tfds:1'), and leave data.source at default_corpus.")
  if mixed:
    _check(not d.text_files or "text_files" in mixed, "data.text_files", d.text_files,
           f"config.data.mixture={d.mixture!r} has no 'text_files' entry, so the files are not "
           "read; add one (e.g. 'text_files:0.5'), or leave text_files ''.")
  else:
    _check(not d.text_files or d.source == "text_files", "data.text_files", d.text_files,
           f"it is read only with config.data.source='text_files' (this config's source is "
           f"{d.source!r}); set --config.data.source=text_files, or leave text_files ''.")
  _check(not d.vocab.get("path") or d.vocab.kind in ("wordpiece", "sentencepiece"),
         "data.vocab.path", d.vocab.get("path"), f"vocab.kind={d.vocab.kind!r} reads no file; set "
         "--config.data.vocab.kind=wordpiece (a BERT vocab.txt or tokenizer.json) or sentencepiece "
         "(a .model), or leave vocab.path ''.")
  _check(d.vocab.get("extra_ids", 0) >= 0, "data.vocab.extra_ids", d.vocab.get("extra_ids"),
         "use 0 or a positive number of sentinel ids (T5: 100).")
  _check(d.num_shards >= 0, "data.num_shards", d.num_shards,
         "use 0 (one shard per process) or a positive number of shards.")
  _check(d.sequence_length > 0, "data.sequence_length", d.sequence_length, "use a positive length.")
  _check(d.targets_length > 0, "data.targets_length", d.targets_length, "use a positive length.")
  # T5's relative positions and ALiBi have no position table: any length works.
  if family != "t5" and getattr(model_cfg, "position_embedding", "learned") != "alibi":
    _check(d.sequence_length <= model_cfg.max_length, "data.sequence_length", d.sequence_length,
           f"the model has {model_cfg.max_length} positions (config.model.max_length); use a "
           "sequence length at most that, or a model with more positions.")
  if family == "bart" and config.objective == "span_corruption":  # decoder's learned positions
    _check(d.targets_length <= model_cfg.max_length, "data.targets_length", d.targets_length,
           f"the model has {model_cfg.max_length} positions (config.model.max_length); use a "
           "targets length at most that, or a model with more positions.")
  _check(d.get("shuffle_buffer", 0) >= 0, "data.shuffle_buffer", d.get("shuffle_buffer"),
         "use a positive buffer size, or 0 for seqio's default.")
  # data.mlm, data.span_corruption and data.denoising are read by that objective alone: another
  # objective's run accepted a change to them and trained without it, while config.json named it.
  defaults = base_config(config.objective, family, "tiny")
  for section in ("mlm", "span_corruption", "denoising"):
    changed = [k for k in d[section] if d[section][k] != defaults.data[section][k]]
    if changed and section != config.objective:
      _check(False, f"data.{section}.{changed[0]}", d[section][changed[0]],
             f"it is read by config.objective={section!r} only, and this run's objective is "
             f"{config.objective!r}; leave data.{section} at its defaults.")
  if config.objective != "span_corruption":   # the others' targets are sequence_length long
    _check(d.targets_length == defaults.data.targets_length, "data.targets_length",
           d.targets_length,
           f"it is read by config.objective='span_corruption' only, and this run's objective is "
           f"{config.objective!r}; leave it at {defaults.data.targets_length}.")
  _check(0 < d.mlm.mask_rate < 1, "data.mlm.mask_rate", d.mlm.mask_rate, "use a rate in (0, 1).")
  _check(d.mlm.mask_token_ratio + d.mlm.random_token_ratio <= 1, "data.mlm.random_token_ratio",
         d.mlm.random_token_ratio, "mask_token_ratio + random_token_ratio must be at most 1.")
  _check(d.mlm.max_predictions > 0, "data.mlm.max_predictions", d.mlm.max_predictions,
         "use a positive number.")
  _one_of("data.mlm.sentence_task", d.mlm.sentence_task, _SENTENCE_TASKS)
  per_row = d.mlm.get("predictions_per_row", 0)
  _check(per_row >= 0, "data.mlm.predictions_per_row", per_row,
         "use 0 (the most a packed row can hold) or a length.")
  _check(per_row == 0 or d.pack, "data.mlm.predictions_per_row", per_row,
         "it sizes packed rows, and config.data.pack=False pads one example per row to "
         "max_predictions; leave it at 0.")
  if config.objective == "mlm" and d.mlm.sentence_task != "none":
    _check(model_cfg.type_vocab_size >= 2, "model.type_vocab_size", model_cfg.type_vocab_size,
           f"sentence_task={d.mlm.sentence_task!r} rows have two segments (token types 0 and 1); "
           "use 2, or config.data.mlm.sentence_task='none'.")
  _check(0 < d.span_corruption.noise_density < 1, "data.span_corruption.noise_density",
         d.span_corruption.noise_density, "use a density in (0, 1).")
  _check(d.span_corruption.mean_span_length >= 1, "data.span_corruption.mean_span_length",
         d.span_corruption.mean_span_length, "use a mean span length of at least 1.")
  for name in ("mask_ratio", "random_ratio", "delete_ratio", "infill_ratio",
               "permute_sentence_ratio", "rotate_ratio"):
    value = d.denoising[name]
    _check(0 <= value <= 1, f"data.denoising.{name}", value, "use a ratio in [0, 1].")
  masks = d.denoising.mask_ratio > 0 or d.denoising.infill_ratio > 0
  _check(d.denoising.random_ratio == 0 or masks, "data.denoising.random_ratio",
         d.denoising.random_ratio, "it makes a share of the [MASK]s of token masking "
         "(mask_ratio) and text infilling (infill_ratio) random tokens, and both are 0. Set "
         "random_ratio=0, or one of them.")

  # AdamW's settings, which Adafactor does not read (its second-moment decay is T5's, fixed).
  if config.optim.get("name", "adamw") == "adafactor":
    for name in ("b1", "b2", "eps"):
      _check(config.optim[name] == defaults.optim[name],
             f"optim.{name}", config.optim[name],
             "it is AdamW's, and config.optim.name='adafactor' does not read it (Adafactor's "
             "momentum is optim.adafactor_momentum); leave it at its default.")

  t = config.train
  for name in ("global_batch_size", "num_steps", "microbatches", "log_every", "eval_every",
               "save_every", "keep_checkpoints"):
    _check(t[name] > 0, f"train.{name}", t[name], "use a positive integer.")
  _check(t.eval_steps >= 0, "train.eval_steps", t.eval_steps, "use 0 (no eval) or more.")
  _check(t.global_batch_size % t.microbatches == 0, "train.microbatches", t.microbatches,
         f"it must divide train.global_batch_size={t.global_batch_size}.")
  _one_of("train.on_nonfinite", t.on_nonfinite, _ON_NONFINITE)
  z_loss = t.get("z_loss", 0.0)
  _check(math.isfinite(z_loss) and z_loss >= 0, "train.z_loss", z_loss,
         "use 0 (none) or a small positive weight (T5.1.1 and PaLM: 1e-4).")
  _check(z_loss == 0 or config.objective in objectives.PRETRAINING, "train.z_loss", z_loss,
         f"the z-loss acts on a vocabulary softmax, which objective {config.objective!r} does not "
         f"have (it is for {', '.join(objectives.PRETRAINING)}); use 0.")

  return model_cfg
