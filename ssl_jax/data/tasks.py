"""seqio Tasks and Mixtures for the four objectives over the default corpus, text files and TFDS.

    task = get_task(config)                      # registered once per distinct setting
    ds = task.get_dataset(task_feature_lengths(config), split="train", shuffle=False)

The sources (`ssl_jax.data.sources`: default corpus, text files, TFDS, and mixtures of them) yield
documents; the objective's preprocessor (`ssl_jax.data.preprocessors`) turns them into examples:

| objective        | preprocessor       | task features (lengths from config.data)                       |
|------------------|--------------------|----------------------------------------------------------------|
| mlm              | bert_pretraining   | input_tokens, token_type_ids (L); masked_* (max_predictions);  |
|                  |                    | sentence_label (scalar)                                        |
| causal_lm        | tokenize+EOS, then causal_lm | targets (L)                                          |
| span_corruption  | span_corruption    | inputs (L), targets (targets_length or the length it needs)    |
| denoising        | bart_denoising     | inputs (L), targets (L)                                        |
"""
import functools
import hashlib
import json

import seqio
import tensorflow as tf

from ssl_jax import objectives
from ssl_jax.data import preprocessors
from ssl_jax.data import sources
from ssl_jax.data import span_corruption
from ssl_jax.data import vocabularies

OBJECTIVES = objectives.PRETRAINING   # the objectives a pretraining stream feeds


# ----------------------------------------------------------------------------- objectives


def _targets_length(config):
  data = config.data
  if config.objective == "span_corruption":
    cfg = data.span_corruption
    needed = span_corruption.span_corruption_lengths(
        data.sequence_length, cfg.noise_density, cfg.mean_span_length)[1]
    return int(sources.config_get(data, "targets_length", 0) or needed)
  return data.sequence_length


def task_feature_lengths(config) -> dict:
  """Task feature -> length, the `task_feature_lengths` of the objective's feature converter."""
  data, length = config.data, config.data.sequence_length
  if config.objective == "mlm":
    from ssl_jax.objectives import mlm  # pylint: disable=g-import-not-at-top  (imports the model stack)
    return dict(mlm.BertFeatureConverter.task_feature_lengths(length, data.mlm.max_predictions))
  if config.objective == "causal_lm":
    return {"targets": length}
  if config.objective in ("span_corruption", "denoising"):
    return {"inputs": length, "targets": _targets_length(config)}
  raise ValueError(
      f"config.objective={config.objective!r} is not an objective; use one of {', '.join(OBJECTIVES)}.")


def _output_features(config, vocab):
  if config.objective == "mlm":
    ids = seqio.PassThroughVocabulary(size=vocab.vocab_size)
    feature = functools.partial(seqio.Feature, add_eos=False)
    return {"input_tokens": feature(vocab), "token_type_ids": feature(ids), "masked_positions": feature(ids),
            "masked_targets": feature(vocab), "masked_weights": feature(ids, dtype=tf.float32),
            "masked_kinds": feature(ids), "sentence_label": feature(ids, rank=0)}
  if config.objective == "causal_lm":
    return {"targets": seqio.Feature(vocab, add_eos=True)}
  return {"inputs": seqio.Feature(vocab, add_eos=True), "targets": seqio.Feature(vocab, add_eos=True)}


def _tokenize_with_eos(ds, *, vocab):
  """Documents -> {"targets": the text's tokens + EOS} (EOS keeps documents apart once concatenated)."""
  eos = [] if vocab.eos_id is None else [vocab.eos_id]

  def tokenize(doc):
    return {"targets": tf.concat([tf.cast(vocab.encode_tf(doc["text"]), tf.int32), eos], 0)}
  return ds.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE)


def _objective_preprocessors(config, vocab):
  """The objective's preprocessor chain (documents -> examples), keyword arguments bound."""
  data, objective, seed = config.data, config.objective, int(sources.config_get(config.data, "seed", 0))
  if objective == "mlm":
    return [functools.partial(preprocessors.bert_pretraining, vocab=vocab,
                              sequence_length=data.sequence_length, mlm_cfg=data.mlm, seed=seed)]
  if objective == "causal_lm":
    if vocab.eos_id is None:
      vocabularies.require(vocab, ("eos",), objective)
    return [functools.partial(_tokenize_with_eos, vocab=vocab),
            functools.partial(preprocessors.causal_lm, sequence_length=data.sequence_length,
                              pack=bool(sources.config_get(data, "pack", True)))]
  if objective == "span_corruption":
    cfg = data.span_corruption
    return [functools.partial(
        span_corruption.span_corruption, vocab=vocab, inputs_length=data.sequence_length,
        targets_length=_targets_length(config), noise_density=cfg.noise_density,
        mean_span_length=cfg.mean_span_length, seed=seed)]
  if objective == "denoising":
    return [functools.partial(preprocessors.bart_denoising, vocab=vocab, sequence_length=data.sequence_length,
                              denoising_cfg=data.denoising, seed=seed)]
  raise ValueError(f"config.objective={objective!r} is not an objective; use one of {', '.join(OBJECTIVES)}.")


def _check_objective(config, vocab, chain):
  """Builds the chain on a one-document dataset so every setting error surfaces now, before any compile."""
  if config.data.sequence_length < 2:
    raise ValueError(f"config.data.sequence_length={config.data.sequence_length}; it must be >= 2.")
  doc = {"doc_index": tf.constant(0, tf.int64), "text": tf.constant("a b."),
         "sentences": tf.constant(["a b."])}
  ds = tf.data.Dataset.from_tensors(doc)
  for fn in chain:
    ds = fn(ds)


def _plain(x):
  return x.to_dict() if hasattr(x, "to_dict") else x


_OBJECTIVE_SETTINGS = {"mlm": "mlm", "span_corruption": "span_corruption", "denoising": "denoising"}


def _task_settings(config, source, tfds_name) -> dict:
  """Every data setting the examples of a task over `source` depend on, by config.data name,
  besides the vocabulary and where TFDS keeps its files."""
  data = config.data
  settings = {"source": source, "sequence_length": data.sequence_length,
              "seed": sources.config_get(data, "seed", 0), "pack": sources.config_get(data, "pack", True),
              "shuffle_buffer": sources.config_get(data, "shuffle_buffer")}
  if config.objective == "span_corruption":  # the only objective with its own targets length
    settings["targets_length"] = sources.config_get(data, "targets_length")
  if source == "default_corpus":
    settings["corpus"] = _plain(data.corpus)
  elif source == "text_files":
    settings["text_files"] = sources.config_get(data, "text_files")
  else:
    settings["tfds_name"] = tfds_name
  corruption = _OBJECTIVE_SETTINGS.get(config.objective)
  if corruption:
    value = _plain(sources.config_get(data, corruption))
    if isinstance(value, dict):   # mlm.predictions_per_row pads batches, not examples
      value = {k: v for k, v in value.items() if k != "predictions_per_row"}
    settings[corruption] = value
  return settings


def stream_settings(config) -> dict:
  """{config.data name: value} of every setting the batch stream of `config` depends on: those of
  its source, or of each source of its mixture and the mixture itself. A resumed run must find
  them unchanged (`checkpointing.check_compatible`)."""
  spec = sources.config_get(config.data, "mixture", "") or ""
  if not spec:
    return _task_settings(config, config.data.source, sources.config_get(config.data, "tfds_name"))
  settings = {}
  names = [source for source, _ in sources.mixture_entries(config)]
  for source in names:   # the TFDS names and rates are in the spec
    settings.update(_task_settings(config, source if source in sources.SOURCES else "tfds", None))
  settings.pop("source")
  settings.pop("tfds_name", None)
  if "tfds" in names:   # reads data.tfds_name
    settings["tfds_name"] = sources.config_get(config.data, "tfds_name")
  return {**settings, "mixture": spec}


def text_files_read(config) -> tuple:
  """The text files the batch stream of `config` reads (its source's or its mixture's)."""
  text_files = stream_settings(config).get("text_files")
  return sources.text_file_paths(text_files) if text_files is not None else ()


def _settings_key(config, source, tfds_name):
  """A short hash of every setting the task's examples depend on (so equal settings share one task),
  the vocabulary's pieces included (a file retrained at the same path makes another task). A run's
  config.json and a config file with its settings give one hash (`ssl-jax eval` names its rows
  by it): the fingerprint config.json records of the pieces is left out, as the pieces are in."""
  vocab = vocabularies.get_vocabulary(config.data.vocab)
  vocab_cfg = {k: v for k, v in _plain(config.data.vocab).items() if k != "fingerprint"}
  settings = {**_task_settings(config, source, tfds_name), "objective": config.objective,
              "vocab": vocab_cfg, "vocab_pieces": vocabularies.fingerprint(vocab),
              "tfds_data_dir": sources.config_get(config.data, "tfds_data_dir", "")}
  blob = json.dumps(settings, sort_keys=True, default=str)
  return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def _task(config, source, tfds_name=None):
  if config.objective not in OBJECTIVES:
    raise ValueError(
        f"config.objective={config.objective!r} is not an objective; use one of {', '.join(OBJECTIVES)}.")
  if source not in sources.SOURCES:
    raise ValueError(f"config.data.source={source!r} is not a source; use one of "
                     f"{', '.join(sources.SOURCES)}.")
  name = f"ssl_jax_{config.objective}_{source}_{_settings_key(config, source, tfds_name)}"
  if name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(name)
  vocab = vocabularies.get_vocabulary(config.data.vocab)
  chain = _objective_preprocessors(config, vocab)
  _check_objective(config, vocab, chain)
  return seqio.TaskRegistry.add(
      name, source=sources.data_source(config, source, tfds_name),
      output_features=_output_features(config, vocab), preprocessors=[sources.as_documents] + chain,
      shuffle_buffer_size=int(sources.config_get(config.data, "shuffle_buffer", 0)
                              or seqio.SHUFFLE_BUFFER_SIZE))


def get_task(config) -> seqio.Task:
  """The seqio Task for `config.objective` over `config.data.source` (registered once per setting).

  Raises:
    ValueError / FileNotFoundError naming the setting: unknown objective or source, a missing or empty
      text file, a TFDS name without version, a sequence length too short for the objective, or a
      vocabulary without the ids the objective needs.
  """
  return _task(config, config.data.source, sources.config_get(config.data, "tfds_name"))


def get_mixture_or_task(config):
  """`seqio.Mixture` of `config.data.mixture` ('src:rate,...'; src a source or a TFDS name), else the task."""
  spec = sources.config_get(config.data, "mixture", "") or ""
  if not spec:
    return get_task(config)
  tasks = []
  for source, rate in sources.mixture_entries(config):
    if source in sources.SOURCES:
      task = _task(config, source, sources.config_get(config.data, "tfds_name") if source == "tfds" else None)
    else:
      task = _task(config, "tfds", source)
    tasks.append((task.name, rate))
  key = hashlib.sha256(json.dumps(tasks).encode("utf-8")).hexdigest()[:12]
  name = f"ssl_jax_mixture_{config.objective}_{key}"
  if name in seqio.MixtureRegistry.names():
    return seqio.MixtureRegistry.get(name)
  return seqio.MixtureRegistry.add(name, tasks)
