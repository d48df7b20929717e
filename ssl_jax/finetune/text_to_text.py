"""Text-to-text fine-tuning of T5 / BART, evaluated by decoding.

    ssl-jax finetune --config configs/finetune/text_to_text.py --init /tmp/t5_tiny \\
        --workdir /tmp/t5_sst2 --config.data.train_file=SST-2/train.tsv \\
        --config.data.eval_file=SST-2/dev.tsv

    pairs = glue_pairs('sst2', formats.read_glue_tsv('sst2', 'SST-2/dev.tsv'))
    evaluate(model, params, vocab, pairs, 'sst2', decoding='beam')     # {'accuracy': ...}

A task is (input text, target text) pairs, trained with the encoder-decoder loss of pretraining
(`config.objective='span_corruption'`: cross-entropy of the decoder targets; T5 and BART alike)
on the sharded trainer (`trainer.Experiment`, its compiled train step, Orbax checkpoints,
metrics.jsonl; re-running resumes). The pairs become a seqio Task (tokenize, EOS,
`EncDecFeatureConverter`, packing with `config.data.pack`); each decoder input starts with the
model's `decoder_start_token_id`, the token decoding starts from. Evaluation decodes every
input of the eval split (greedy, or beam search with `config.eval.decoding='beam'`) and scores
the decoded text with the task's metrics; predictions and references are compared as the
vocabulary decodes them (a lower-casing WordPiece vocabulary writes 'hello , world').

- format glue_tsv / tfds: input '{task} {field}: {text} [{field2}: {text2}]' (T5's format,
  e.g. 'sst2 sentence: a fine film'), target the label name ('positive'; STS-B: the score
  rounded to 0.2, '3.4'); the task's GLUE metrics.
- squad_json: input 'question: {q} context: {c}', target the first answer ('' when the
  question has none); SQuAD exact and F1 (percent) over all answers.
- tsv: `input<TAB>target` lines; accuracy (exact match of the decoded text).

`--init` ('none' | run directory | 'hf:DIR', see `ssl_jax.finetune.lm_init`) gives the
pretrained model; its config and vocabulary replace config.model and config.data.vocab.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
import logging
import os
import sys
from typing import Sequence

import jax
import ml_collections
import numpy as np
import seqio
import tensorflow as tf
from jax.experimental import multihost_utils

from ssl_jax import config as config_lib
from ssl_jax import metrics as metrics_lib
from ssl_jax import trainer
from ssl_jax.data import packing
from ssl_jax.data import pipeline
from ssl_jax.data import vocabularies
from ssl_jax.finetune import config as finetune_config
from ssl_jax.finetune import formats
from ssl_jax.finetune import lm_init
from ssl_jax.finetune import metrics as task_metrics
from ssl_jax.models import decoding as decoding_lib

FORMATS = ('glue_tsv', 'tfds', 'squad_json', 'tsv')
PREDICTIONS_FILE = 'eval_predictions.jsonl'


@dataclasses.dataclass(frozen=True)
class TextPair:
  """An input text, the target text trained on, and every acceptable answer (for scoring)."""
  inputs: str
  targets: str
  references: tuple[str, ...]


# ------------------------------------------------------------------------------ tasks
def glue_pairs(task: str, examples: Sequence[formats.TextExample]) -> list[TextPair]:
  """GLUE examples in T5's format; unlabelled ones (test splits) are left out."""
  spec = formats.glue_spec(task)
  pairs = []
  for ex in examples:
    if ex.label is None:
      continue
    texts = [ex.text_a] + ([ex.text_b] if ex.text_b is not None else [])
    # T5 writes the fields sorted by name (MNLI: hypothesis before premise).
    inputs = ' '.join([task] + [f'{f}: {t}' for f, t in sorted(zip(spec.tfds_fields, texts))])
    # STS-B: T5 writes the score rounded to 0.2 as text.
    target = spec.label_names[ex.label] if spec.label_names else f'{round(ex.label * 5) / 5:.1f}'
    pairs.append(TextPair(inputs, target, (target,)))
  return pairs


def squad_pairs(examples: Sequence[formats.QAExample]) -> list[TextPair]:
  return [TextPair(f'question: {q.question} context: {q.context}',
                   q.answers[0].text if q.answers else '', tuple(a.text for a in q.answers))
          for q in examples]


def read_tsv_pairs(path: str) -> list[TextPair]:
  """`input<TAB>target` lines (no header; quotes are literal)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'TSV file {path!r} does not exist; set config.data.train_file / '
                            'eval_file to a file of input<TAB>target lines.')
  csv.field_size_limit(sys.maxsize)
  pairs = []
  with formats.open_text(path, 'TSV', newline='') as f:
    for number, row in enumerate(csv.reader(f, delimiter='\t', quoting=csv.QUOTE_NONE), 1):
      if row and row != ['']:
        if len(row) != 2:
          raise ValueError(f"{path} line {number} has {len(row)} tab-separated fields; "
                           "config.data.format='tsv' reads input<TAB>target lines.")
        pairs.append(TextPair(row[0].strip(), row[1].strip(), (row[1].strip(),)))
  return pairs


def read_pairs(config, split: str) -> list[TextPair]:
  """The pairs of `split` ('train' | 'validation') that config.data names."""
  d = config.data
  if d.format not in FORMATS:
    raise ValueError(f'config.data.format={d.format!r} cannot feed text-to-text fine-tuning; '
                     f'use one of {", ".join(FORMATS)}.')
  setting = 'train_file' if split == 'train' else 'eval_file'
  if d.format == 'tfds':
    pairs = glue_pairs(d.task, formats.read_glue_tfds(
        d.task, d.train_split if split == 'train' else d.eval_split, d.tfds_data_dir or None))
  elif not d[setting]:
    raise ValueError(f'config.data.{setting} is empty; set --config.data.{setting}=PATH to a '
                     f'{d.format} file.')
  elif d.format == 'glue_tsv':
    pairs = glue_pairs(d.task, formats.read_glue_tsv(d.task, d[setting]))
  elif d.format == 'squad_json':
    pairs = squad_pairs(formats.read_squad(d[setting]))
  else:
    pairs = read_tsv_pairs(d[setting])
  limit = d.max_train_examples if split == 'train' else d.max_eval_examples
  pairs = pairs[:limit] if limit > 0 else pairs
  if not pairs:
    raise ValueError(f'the {split} split of config.data has no labelled examples; check '
                     f'config.data.{setting}.')
  return pairs


def scored_as(config) -> str:
  """The `task` argument of `score` for config.data: the metric follows the format (a GLUE
  task's metrics for glue_tsv/tfds, SQuAD's for squad_json, exact match for tsv), whatever
  config.data.task names."""
  return {'squad_json': 'squad', 'tsv': 'tsv'}.get(config.data.format, config.data.task)


def canonical(vocab, texts: Sequence[str]) -> list[str]:
  """Each text as the vocabulary decodes its tokens (how predictions come out of a model)."""
  return [vocab.decode(ids).strip() for ids in vocabularies.encode_batch(vocab, list(texts))]


def score(task: str, predictions: Sequence[str], pairs: Sequence[TextPair], vocab) -> dict:
  """Metrics of decoded `predictions`: GLUE's for a GLUE task, SQuAD exact/F1 (percent) for
  'squad', else the fraction that equal the target exactly (`scored_as` picks `task` for a
  config)."""
  if task == 'squad':
    scores = task_metrics.squad_scores(
        {str(i): canonical(vocab, p.references) for i, p in enumerate(pairs)},
        {str(i): text for i, text in enumerate(predictions)})
    return {'exact': scores['exact'], 'f1': scores['f1']}
  targets = canonical(vocab, [p.targets for p in pairs])
  if task not in formats.GLUE:
    return {'accuracy': task_metrics.accuracy(list(predictions), targets)}
  spec = formats.glue_spec(task)
  if not spec.label_names:   # STS-B; T5 counts a prediction that is no number as -1
    def number(text):
      try:
        return float(text.replace(' ', ''))   # a WordPiece vocabulary decodes '3.4' as '3 . 4'
      except ValueError:
        return -1.0
    return task_metrics.compute(spec.metrics, [number(t) for t in predictions],
                                [float(p.targets) for p in pairs])
  names = canonical(vocab, spec.label_names)
  label = lambda text: names.index(text) if text in names else -1   # noqa: E731
  return task_metrics.compute(spec.metrics, [label(t) for t in predictions],
                              [label(t) for t in targets])


# ------------------------------------------------------------------------------ data
def make_task(name: str, splits: dict[str, Sequence[TextPair]], vocab) -> seqio.Task:
  """An (unregistered) seqio Task over in-memory pairs: 'inputs' and 'targets' tokenized, EOS
  appended after trimming. Register it (`seqio.TaskRegistry.add_provider`) to mix it with
  others. With shuffling, every epoch is a new permutation."""
  def dataset_fn(split, shuffle_files, seed=None):
    pairs = splits[split]
    with tf.init_scope():
      inputs = tf.constant([p.inputs for p in pairs], tf.string)
      targets = tf.constant([p.targets for p in pairs], tf.string)
    ids = tf.data.Dataset.range(len(pairs))
    if shuffle_files:   # indices, not texts, in the buffer: small iterator checkpoints
      ids = ids.shuffle(len(pairs), seed=seed, reshuffle_each_iteration=True)
    return ids.map(lambda i: {'inputs': inputs[i], 'targets': targets[i]})

  feature = seqio.Feature(vocab, add_eos=True)
  return seqio.Task(
      name, seqio.FunctionDataSource(dataset_fn, splits=list(splits),
                                     num_input_examples={k: len(v) for k, v in splits.items()}),
      output_features={'inputs': feature, 'targets': feature},
      preprocessors=[functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
                     seqio.preprocessors.append_eos_after_trim])


def _model_features(ex, decoder_start_token_id: int, pack: bool):
  """Converter output -> the trainer's batch: segment ids and positions also when unpacked
  (as ssl_jax.data.pipeline), and every example's first decoder input the start token."""
  ex = dict(ex)
  if not pack:
    for prefix, tokens in (('encoder', 'encoder_input_tokens'),
                           ('decoder', 'decoder_target_tokens')):
      real = tf.cast(ex[tokens] != 0, tf.int32)
      ex[f'{prefix}_segment_ids'] = real
      ex[f'{prefix}_positions'] = tf.range(tf.shape(real)[-1], dtype=tf.int32) * real
  starts = (ex['decoder_positions'] == 0) & (ex['decoder_segment_ids'] > 0)
  ex['decoder_input_tokens'] = tf.where(starts, decoder_start_token_id, ex['decoder_input_tokens'])
  return ex


def make_train_iterator(config, task: seqio.Task, model_config, batch_sharding=None):
  """This process's endless, shuffled stream of train batches (a checkpointable
  `pipeline.DataIterator`; numpy batches when batch_sharding is None)."""
  lengths = {'inputs': config.data.sequence_length, 'targets': config.data.targets_length}
  count = jax.process_count()
  # The source shuffles each epoch; seqio's shuffle buffer (1000 by default), after its repeat,
  # mixed epochs: examples were drawn as if with replacement (a third unseen after an epoch).
  ds = task.get_dataset(lengths, split='train', shuffle=True, seed=int(config.data.seed),
                        shard_info=seqio.ShardInfo(jax.process_index(), count) if count > 1
                        else None, num_epochs=None, try_in_mem_cache=False,
                        shuffle_buffer_size=1)
  pack = bool(config.data.pack)
  # No length check, as in pipeline.feature_converter: the Task trims inputs and targets already.
  ds = packing.EncDecFeatureConverter(pack=pack, apply_length_check=False)(
      ds, task_feature_lengths=lengths)
  ds = ds.map(functools.partial(_model_features, pack=pack,
                                decoder_start_token_id=model_config.decoder_start_token_id),
              num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(int(config.train.global_batch_size) // count, drop_remainder=True).prefetch(2)
  return pipeline.DataIterator(ds.with_options(pipeline.dataset_options()), batch_sharding)


# ------------------------------------------------------------------------------ decoding
def predict(model, params, vocab, inputs: Sequence[str], *, max_input_length: int,
            max_decode_len: int, decoding: str = 'greedy', beam_size: int = 4,
            length_penalty: float = 0.6, batch_size: int = 32, batch_sharding=None
            ) -> list[str]:
  """Decoded outputs of an EncoderDecoder for `inputs` (each cut to max_input_length tokens
  with EOS): greedy, or the best beam of beam search.

  batch_sharding (e.g. the trainer's `exp.batch_sharding`) splits each batch's rows over its
  devices (batch_size is rounded up to a multiple of their number); every process passes all
  inputs and gets all outputs.
  """
  _check_decoding(decoding)
  eos = vocab.eos_id
  if batch_sharding is not None:
    devices = len(batch_sharding.device_set)
    batch_size = -(-batch_size // devices) * devices
  keep = max_input_length - (eos is not None)
  encoded = [ids[:keep] + ([eos] if eos is not None else [])
             for ids in vocabularies.encode_batch(vocab, list(inputs))]
  texts = []
  for start in range(0, len(encoded), batch_size):
    chunk = encoded[start:start + batch_size]
    tokens = np.zeros((batch_size, max_input_length), np.int32)
    for row, ids in enumerate(chunk):
      tokens[row, :len(ids)] = ids
    segments = (tokens != 0).astype(np.int32)
    segments[:, 0] = 1   # an empty filler row still attends somewhere (no 0/0 softmax)
    if batch_sharding is not None:
      tokens, segments = (jax.make_array_from_callback(x.shape, batch_sharding,
                                                       lambda index, x=x: x[index])
                          for x in (tokens, segments))
    if decoding == 'greedy':
      out = decoding_lib.seq2seq_generate(model, params, tokens, max_decode_len,
                                          encoder_segment_ids=segments, eos_id=eos)
    else:
      out = decoding_lib.beam_search(model, params, tokens, max_decode_len, beam_size,
                                     encoder_segment_ids=segments, eos_id=eos,
                                     length_penalty=length_penalty)[0][:, 0]
    out = np.asarray(multihost_utils.process_allgather(out, tiled=True))
    for row in out[:len(chunk), 1:].tolist():   # [1:]: drop the start token
      texts.append(vocab.decode(row[:row.index(eos)] if eos in row else row).strip())
  return texts


def _check_decoding(decoding: str) -> None:
  if decoding not in ('greedy', 'beam'):
    raise ValueError(f"config.eval.decoding={decoding!r}; use 'greedy' or 'beam'.")


def check_eval(config, model) -> None:
  """Raises for a config.eval that decoding would refuse, before anything trains."""
  e = config.eval
  _check_decoding(e.decoding)
  for name in ('beam_size', 'batch_size'):
    if e[name] < 1:
      raise ValueError(f'config.eval.{name}={e[name]} is invalid: use a positive integer.')
  decoding_lib.check_decode_len(
      model, e.max_decode_len or config.data.targets_length,
      'config.eval.max_decode_len' if e.max_decode_len else 'config.data.targets_length '
      '(config.eval.max_decode_len=0)')


def evaluate(model, params, vocab, pairs: Sequence[TextPair], task: str, *,
             max_input_length: int = 128, max_decode_len: int = 16, decoding: str = 'greedy',
             beam_size: int = 4, length_penalty: float = 0.6, batch_size: int = 32,
             batch_sharding=None, return_predictions: bool = False) -> dict:
  """Decodes every pair's input (`predict`) and scores the outputs (`score`)."""
  if not pairs:
    raise ValueError('no examples to evaluate; check config.data.eval_file')
  predictions = predict(model, params, vocab, [p.inputs for p in pairs],
                        max_input_length=max_input_length, max_decode_len=max_decode_len,
                        decoding=decoding, beam_size=beam_size, length_penalty=length_penalty,
                        batch_size=batch_size, batch_sharding=batch_sharding)
  result = score(task, predictions, pairs, vocab)
  if return_predictions:
    result['predictions'] = predictions
  return result


# ------------------------------------------------------------------------------ the run
def base_config(family: str = 't5', preset: str = 'tiny') -> ml_collections.ConfigDict:
  """A text-to-text config: the pretraining schema, the fine-tuning data keys of
  `ssl_jax.finetune.config` (task, format, files, example limits), `finetune.init/num_epochs/
  warmup_ratio` (num_epochs > 0 needs data.pack=False: its steps count pairs, not rows), and
  `eval` (decoding='greedy'|'beam', beam_size, length_penalty (HF's:
  log-probability / length ** alpha, not T5's GNMT penalty), max_decode_len (0:
  data.targets_length), batch_size)."""
  c = config_lib.base_config('span_corruption', family, preset)
  c.data.update(dict(task='sst2', format='glue_tsv', train_file='', eval_file='',
                     train_split='train', eval_split='validation', tfds_data_dir='',
                     max_train_examples=0, max_eval_examples=0, pack=False,
                     sequence_length=128, targets_length=16))
  c.finetune = ml_collections.ConfigDict(dict(init='none', num_epochs=0.0, warmup_ratio=0.0))
  c.eval = ml_collections.ConfigDict(dict(decoding='greedy', beam_size=4, length_penalty=0.6,
                                          max_decode_len=0, batch_size=32))
  c.train.update(global_batch_size=32, num_steps=1000, log_every=50, eval_every=1000,
                 eval_steps=0, save_every=1000, keep_checkpoints=1)
  c.optim.update(learning_rate=1e-4, schedule='constant', warmup_steps=0, weight_decay=0.0)
  return c


def prepare(config, init: str = 'none'):
  """The config the run trains: the init's model and vocabulary (`lm_init`), train.num_steps
  and optim.warmup_steps from config.finetune (`finetune.config.set_schedule`)."""
  finetune_config.refuse_unread(
      config, base_config(), finetune_config.STREAM_SETTINGS,
      'text-to-text fine-tuning trains on the (input, target) pairs of data.format, '
      'train_file and eval_file, not a pretraining stream, and corrupts none')
  if config.data.pack and config.finetune.num_epochs > 0:
    # The epochs' steps count pairs; a packed row holds several, how many depending on each
    # epoch's order (a run of num_epochs=1 was measured to train 2.0 epochs).
    raise ValueError(
        f'config.data.pack=True and config.finetune.num_epochs={config.finetune.num_epochs}: '
        'the epochs set train.num_steps from the number of pairs, but a packed row holds '
        'several pairs, so the run would train several times the epochs asked. Set '
        '--config.finetune.num_epochs=0 and --config.train.num_steps=N, or '
        '--config.data.pack=False.')
  config = lm_init.config_from_init(config, init, families=('t5', 'bart'))
  finetune_config.set_schedule(config, lambda: len(read_pairs(config, 'train')),
                               base_config().train.num_steps)
  return config


def _warn_if_truncated(pairs, vocab, config, split: str) -> None:
  data, decode_len = config.data, config.eval.max_decode_len
  cut = ' (EOS included) and are cut; raise it to keep them whole'
  fields = [('inputs', data.sequence_length, 'data.sequence_length', 1, cut)]
  if split == 'train':
    fields.append(('targets', data.targets_length, 'data.targets_length', 1, cut))
  else:   # decoding stops after that many tokens: such a target can never be matched
    fields.append(('targets', decode_len or data.targets_length,
                   'eval.max_decode_len' if decode_len else 'data.targets_length', 0,
                   ', the most decoding writes, and cannot be matched; raise it to score them'))
  for field, length, setting, eos, consequence in fields:
    ids = vocabularies.encode_batch(vocab, [getattr(p, field) for p in pairs])
    long = sum(len(x) + eos > length for x in ids)
    if long:
      logging.warning('%d of %d %s %s are longer than config.%s=%d tokens%s.', long,
                      len(pairs), split, field, setting, length, consequence)


def _evaluate(exp, params, vocab, pairs, config) -> dict:
  e = config.eval
  return evaluate(exp.model, params, vocab, pairs, scored_as(config),
                  max_input_length=config.data.sequence_length,
                  max_decode_len=e.max_decode_len or config.data.targets_length,
                  decoding=e.decoding, beam_size=e.beam_size, length_penalty=e.length_penalty,
                  batch_size=e.batch_size, batch_sharding=exp.batch_sharding,
                  return_predictions=True)


def _write_results(workdir, config, step, scores, pairs, predictions) -> None:
  if jax.process_index() != 0:
    return
  # The task the scores are of: data.task names a GLUE task; tsv and squad_json ignore it.
  metrics_lib.write_results(workdir, {'task': scored_as(config), 'objective': 'text_to_text',
                                      'init': config.finetune.init, 'step': step, 'scores': scores})
  with tf.io.gfile.GFile(os.path.join(workdir, PREDICTIONS_FILE), 'w') as f:
    for pair, prediction in zip(pairs, predictions):
      f.write(json.dumps({'inputs': pair.inputs, 'targets': pair.targets,
                          'prediction': prediction}) + '\n')


def finetune(config, workdir: str, init: str = 'none', devices=None) -> dict:
  """Fine-tunes from `init` to train.num_steps on `devices` (default all), resuming from
  `workdir`; decodes and scores the eval split every train.eval_every steps and at the end.

  Writes eval rows to metrics.jsonl, and the final scores and predictions to
  eval_results.json and eval_predictions.jsonl. Returns the final scores.
  """
  config = prepare(config, init)
  exp = trainer.Experiment.build(config, devices)
  check_eval(config, exp.model)
  vocab = vocabularies.get_vocabulary(config.data.vocab)
  train_pairs, eval_pairs = read_pairs(config, 'train'), read_pairs(config, 'validation')
  _warn_if_truncated(train_pairs, vocab, config, 'train')
  _warn_if_truncated(eval_pairs, vocab, config, 'eval')
  train_iter = make_train_iterator(
      config, make_task(f'text_to_text_{config.data.task}', {'train': train_pairs}, vocab),
      exp.model_config, exp.batch_sharding)
  result = {}

  def init_params(params):
    loaded = lm_init.params_from_init(config, config.finetune.init, exp.layout)
    return params if loaded is None else loaded

  def evaluate_fn(params, step, logger, replace=False):
    result.clear()
    result.update(_evaluate(exp, params, vocab, eval_pairs, config))
    logger.write_eval(step, {k: (v, 1.0) for k, v in result.items() if k != 'predictions'},
                      replace=replace)

  state = trainer.train_and_evaluate(config, workdir, init_params, exp=exp,
                                     train_iter=train_iter, evaluate_fn=evaluate_fn)
  step = int(jax.device_get(state.step))
  if not result:  # a finished run, re-run: score its last state (a preempted one raised)
    with metrics_lib.MetricsLogger(workdir, num_steps=config.train.num_steps, log_every=1,
                                   start_step=step) as logger:
      evaluate_fn(state.params, step, logger, replace=True)   # its row, not a second one
  predictions = result.pop('predictions')
  _write_results(workdir, config, step, result, eval_pairs, predictions)
  return result
