"""In-context evaluation of a decoder-only LM (GPT): zero-, one- and few-shot prompts.

    ssl-jax finetune --config configs/finetune/in_context/sst2.py --init /tmp/gpt_tiny \
        --workdir /tmp/ic_sst2 --config.data.train_file=SST-2/train.tsv \
        --config.data.eval_file=SST-2/dev.tsv --config.in_context.shots=4

    examples = [Example('a gripping , funny film', ('positive',)), ...]
    fmt = PromptFormat(input_prefix='Review: ', output_prefix='\\nSentiment:')
    evaluate_in_context(model, params, vocab, examples, shots=4, shot_pool=train_examples,
                        options=('negative', 'positive'), prompt_format=fmt)
    # -> {'accuracy': ..., 'num_examples': ..., 'shots': 4, 'truncated_prompts': ...}

Every prompt is `instruction`, then `shots` demonstrations, then the query, joined by
`example_separator`; an example renders as
`{input_prefix}{text}{output_prefix}{answer_prefix}{answer}` (the query stops before
`answer_prefix`). Demonstrations are drawn from `shot_pool` (default: the evaluated examples
other than the query and those on its `passage`) without replacement by
`numpy.random.default_rng([seed, query index])`, so a query's shots depend only on the seed,
its index and the pool.

Two ways to answer:
- classification (`options` given): each option's completion `{answer_prefix}{option}` is
  scored by the sum of its tokens' log-probabilities given the prompt (optionally divided by
  its token count), all (query, option) pairs in batched forward passes; the best option is
  the prediction; metric `accuracy` (a fraction).
- generation (`options=None`): greedy decoding with the KV cache, cut at EOS and at the start
  of a next example (`stop` strings); metrics `exact` and `f1` of the official SQuAD script
  (`ssl_jax.finetune.metrics.squad_scores`: normalised answers, best over the example's
  answers, no answers = '', percentages), also over the answerable (`HasAns_*`) and
  unanswerable (`NoAns_*`) questions.

Token sequences start with `bos_id` (default 0: seqio's LM feature converter starts every
example with id 0, which is how ssl_jax GPTs are trained; a converted GPT-2 wants 50256).
Context and completion are tokenized separately and concatenated, so the completion's tokens
are those the vocabulary gives the completion alone. Prompts longer than the model's
`max_length` lose their oldest tokens (after BOS; all of a prompt's options see the same
context tokens); the result counts them.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import string
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from ssl_jax import checkpointing
from ssl_jax import config as config_lib
from ssl_jax import metrics as metrics_lib
from ssl_jax import trainer
from ssl_jax.data import vocabularies
from ssl_jax.finetune import config as finetune_config
from ssl_jax.finetune import data as data_lib
from ssl_jax.finetune import formats
from ssl_jax.finetune import lm_init
from ssl_jax.finetune import metrics as task_metrics
from ssl_jax.finetune import text_to_text
from ssl_jax.models import decoding


@dataclasses.dataclass(frozen=True)
class Example:
  """An input text and its acceptable answers: the first is shown in demonstrations; none
  means the answer is '' (an unanswerable SQuAD question). `passage` (SQuAD's context) is what
  the question is about: shots drawn from the evaluated examples skip the query's passage, whose
  other questions would show it its own passage, perhaps with its answer."""
  text: str
  answers: tuple[str, ...]
  passage: str = ''


@dataclasses.dataclass(frozen=True)
class PromptFormat:
  """How examples become prompt text (see the module docstring)."""
  input_prefix: str = 'Input: '
  output_prefix: str = '\nOutput:'
  answer_prefix: str = ' '
  example_separator: str = '\n\n'
  instruction: str = ''

  def render(self, text: str, answer: Optional[str] = None) -> str:
    """One example; without an answer, the query (ending with output_prefix)."""
    query = f'{self.input_prefix}{text}{self.output_prefix}'
    return query if answer is None else f'{query}{self.answer_prefix}{answer}'

  def completion(self, answer: str) -> str:
    return f'{self.answer_prefix}{answer}'

  def stops(self) -> list[str]:
    """Where a generated answer ends: the input prefix (a next example starts) and the
    separator, those that are not blank."""
    return [s for s in (self.input_prefix, self.example_separator) if s.strip()]


def build_prompt(query: str, demonstrations: Sequence[Example],
                 prompt_format: PromptFormat = PromptFormat()) -> str:
  """The prompt for `query` after `demonstrations` (each shown with its first answer)."""
  parts = [prompt_format.instruction] if prompt_format.instruction else []
  parts += [prompt_format.render(d.text, d.answers[0] if d.answers else '')
            for d in demonstrations]
  parts.append(prompt_format.render(query))
  return prompt_format.example_separator.join(parts)


def _query_groups(groups: Sequence) -> tuple[np.ndarray, int]:
  """Group ids of the queries (`groups[i]`: any hashable, equal within a group) and the fewest
  queries outside its own group that any query has to draw shots from."""
  ids = {}
  group_ids = np.array([ids.setdefault(g, len(ids)) for g in groups], int)
  return group_ids, len(groups) - (np.bincount(group_ids).max() if len(groups) else 1)


def _passage_groups(examples: Sequence[Example]) -> list:
  """Each example's group for `select_shots`: its passage, or itself when it has none."""
  return [ex.passage or i for i, ex in enumerate(examples)]


def select_shots(num_examples: int, shots: int, seed: int, pool_size: Optional[int] = None,
                 groups: Optional[Sequence] = None) -> list[list[int]]:
  """For each of `num_examples` queries, the indices of its `shots` demonstrations.

  Drawn without replacement from range(pool_size) by default_rng([seed, query index]);
  with pool_size None the pool is the queries themselves and a query never demonstrates
  itself, nor a query of its group (`groups[i]`, e.g. its passage; default: each query its
  own). Raises ValueError when the pool is too small.
  """
  own = pool_size is None
  if own:
    group_ids, available = _query_groups(range(num_examples) if groups is None else groups)
  else:
    available = pool_size
  if shots < 0:
    raise ValueError(f'shots={shots} must be >= 0')
  if shots > available:
    raise ValueError(f'shots={shots} but the shot pool has only {available} examples '
                     f'{"(the evaluated examples minus the query and its group)" if own else ""}'
                     '; use fewer shots or a larger shot_pool')
  chosen = []
  for i in range(num_examples):
    rng = np.random.default_rng([seed, i])
    if own:
      others = np.flatnonzero(group_ids != group_ids[i])   # not the query, nor its group
      chosen.append([int(others[p]) for p in rng.choice(len(others), shots, replace=False)])
    else:
      chosen.append([int(p) for p in rng.choice(pool_size, shots, replace=False)])
  return chosen


def build_prompts(examples: Sequence[Example], shots: int, shot_pool=None,
                  prompt_format: PromptFormat = PromptFormat(), seed: int = 0) -> list[str]:
  """The prompt of every example: `shots` demonstrations (see `select_shots`; without a
  `shot_pool`, none on the example's passage), then it."""
  pool = examples if shot_pool is None else shot_pool
  indices = select_shots(len(examples), shots, seed, None if shot_pool is None else len(pool),
                         _passage_groups(examples))
  return [build_prompt(ex.text, [pool[j] for j in picks], prompt_format)
          for ex, picks in zip(examples, indices)]


# ------------------------------------------------------------------------------ tokens
def _bucket(length: int, limit: int) -> int:
  """Padded length: the next power of two (>= 16), at most `limit`; few shapes, few compiles."""
  return min(limit, max(16, 1 << (max(length, 1) - 1).bit_length()))


def _context_ids(ids: list, bos_id: Optional[int], budget: int) -> tuple[list, bool]:
  """BOS + a prompt's ids, the oldest prompt ids dropped to fit `budget`; (ids, truncated)."""
  head = [] if bos_id is None else [bos_id]
  room = budget - len(head)
  truncated = len(ids) > room
  return head + ids[len(ids) - room:] if truncated else head + ids, truncated


def _batches(n: int, batch_size: int):
  for start in range(0, n, batch_size):
    yield start, min(start + batch_size, n)


@functools.partial(jax.jit, static_argnames=('model',))
def _completion_log_probs(model, params, tokens, weights):
  """Sum over positions t of weights[:, t] * log p(tokens[:, t] | tokens[:, :t]) -> [B]."""
  logits = model.apply({'params': params}, tokens[:, :-1]).astype(jnp.float32)
  targets = tokens[:, 1:]
  target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  log_probs = target_logits - jax.nn.logsumexp(logits, axis=-1)
  return (log_probs * weights[:, 1:]).sum(-1)


def score_completions(model, params, vocab, contexts: Sequence[str],
                      completions: Sequence[str], *, bos_id: Optional[int] = 0,
                      batch_size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """log p(completion | context) for each pair, in batched forward passes.

  Pairs with the same context see the same context tokens: a context too long for the model's
  max_length loses the oldest tokens its longest completion needs, for all its completions, so
  a prompt's options are compared given one context.
  Returns summed log-probs [N], completion token counts [N] and whether each context lost
  its oldest tokens [N].
  Raises ValueError for an empty completion, or one that leaves no room for context.
  """
  max_length = model.config.max_length
  if len(contexts) != len(completions):
    raise ValueError(f'{len(contexts)} contexts but {len(completions)} completions')
  unique = sorted(set(contexts) | set(completions))   # tokenized once, in one call
  ids = dict(zip(unique, vocabularies.encode_batch(vocab, unique)))
  longest = {}   # context -> its longest completion's token count, which sets its truncation
  for context, completion in zip(contexts, completions):
    comp = ids[completion]
    if not comp:
      raise ValueError(f'completion {completion!r} has no tokens; give non-empty options')
    if len(comp) > max_length:
      raise ValueError(f'completion {completion!r} has {len(comp)} tokens, too many for the '
                       f"model's max_length={max_length}")
    longest[context] = max(longest.get(context, 0), len(comp))
  rows, truncated = [], []
  for context, completion in zip(contexts, completions):
    comp = ids[completion]
    ctx, cut = _context_ids(ids[context], bos_id, max_length + 1 - longest[context])
    if not ctx:
      raise ValueError('with bos_id=None every context needs at least one token; '
                       f'{context!r} has none')
    rows.append((ctx, comp))
    truncated.append(cut)
  scores, counts = np.zeros(len(rows)), np.array([len(c) for _, c in rows])
  order = np.argsort([len(c) + len(x) for c, x in rows], kind='stable')   # similar lengths
  for start, stop in _batches(len(rows), batch_size):
    picked = order[start:stop]
    length = _bucket(max(len(rows[i][0]) + len(rows[i][1]) for i in picked), max_length + 1)
    tokens = np.zeros((batch_size, length), np.int32)
    weights = np.zeros((batch_size, length), np.float32)
    for r, i in enumerate(picked):
      ctx, comp = rows[i]
      tokens[r, :len(ctx) + len(comp)] = ctx + comp
      weights[r, len(ctx):len(ctx) + len(comp)] = 1.0
    scores[picked] = np.asarray(_completion_log_probs(model, params, tokens, weights))[
        :len(picked)]
  return scores, counts, np.array(truncated, bool)


def greedy_answers(model, params, vocab, prompts: Sequence[str], *, max_new_tokens: int = 16,
                   stop: Sequence[str] = (), bos_id: Optional[int] = 0,
                   batch_size: int = 16) -> tuple[list[str], int]:
  """Greedy continuations of `prompts`, cut at EOS and at the first `stop` string.

  Returns (answers, number of prompts truncated to fit max_length - max_new_tokens).
  """
  max_length = model.config.max_length
  if not 0 < max_new_tokens < max_length:
    raise ValueError(f'max_new_tokens={max_new_tokens} must be in [1, {max_length - 1}] '
                     f"(the model's max_length={max_length} holds prompt and answer)")
  contexts, truncated = [], 0
  for prompt, prompt_ids in zip(prompts, vocabularies.encode_batch(vocab, list(prompts))):
    ids, cut = _context_ids(prompt_ids, bos_id, max_length - max_new_tokens)
    if not ids:
      raise ValueError(f'with bos_id=None every prompt needs a token; {prompt!r} has none')
    contexts.append(ids)
    truncated += cut
  # Stops are compared in decoded form, where the vocabulary may respace punctuation.
  stops = [s for s in (vocab.decode(x).strip()
                       for x in vocabularies.encode_batch(vocab, list(stop))) if s]
  eos = vocab.eos_id
  answers = [''] * len(prompts)
  order = np.argsort([len(c) for c in contexts], kind='stable')
  for start, stop_index in _batches(len(prompts), batch_size):
    picked = order[start:stop_index]
    lengths = np.ones(batch_size, np.int32)
    prompt_length = _bucket(max(len(contexts[i]) for i in picked), max_length - max_new_tokens)
    tokens = np.zeros((batch_size, prompt_length + max_new_tokens), np.int32)
    for r, i in enumerate(picked):
      tokens[r, :len(contexts[i])] = contexts[i]
      lengths[r] = len(contexts[i])
    shortest = int(lengths[:len(picked)].min())
    lengths[len(picked):] = shortest
    prefill = 1 << (shortest.bit_length() - 1)   # a power of two: few compiled variants
    out = np.asarray(decoding.continue_rows(model, params, tokens, lengths, jax.random.key(0),
                                            prefill, eos_id=eos))
    for r, i in enumerate(picked):
      new = out[r, lengths[r]:lengths[r] + max_new_tokens].tolist()
      if eos is not None and eos in new:
        new = new[:new.index(eos)]
      text = vocab.decode(new)
      for s in stops:
        text = text.split(s)[0]
      answers[i] = text.strip()
  return answers, truncated


# ------------------------------------------------------------------------------ evaluation
def evaluate_in_context(model, params, vocab, examples: Sequence[Example], shots: int = 0, *,
                        shot_pool: Optional[Sequence[Example]] = None,
                        options: Optional[Sequence[str]] = None,
                        prompt_format: PromptFormat = PromptFormat(), seed: int = 0,
                        length_normalize: bool = False, max_new_tokens: int = 16,
                        stop: Optional[Sequence[str]] = None, bos_id: Optional[int] = 0,
                        batch_size: int = 16, return_predictions: bool = False,
                        metrics: Sequence[str] = ('accuracy',)) -> dict:
  """Zero-/few-shot accuracy (with `options`) or SQuAD exact match / F1 (without) of a GPT.

  Args:
    model, params: a `GPT` module and its params (any `model.apply(params, tokens)` LM).
    vocab: the seqio vocabulary the model was trained with.
    examples: the evaluated examples; with `options`, each example's first answer must be
      one of them.
    shots: demonstrations per prompt, from `shot_pool` (default the other examples).
    options: candidate answers of a classification task (e.g. ('negative', 'positive')).
    length_normalize: rank options by log-probability per completion token.
    max_new_tokens, stop: generation length and stop strings (default: the input prefix and
      the example separator, i.e. where a next example would begin).
    bos_id: the id every sequence starts with (None: none).
    metrics: with `options`, the metric names (`ssl_jax.finetune.metrics.CLASSIFICATION`) over
      label indices, e.g. ('matthews_corr',) for CoLA.
  Returns:
    {metric: value} or {'exact', 'f1'} (SQuAD percentages, with the 'HasAns_*' / 'NoAns_*'
    scores and counts of the answerable / unanswerable questions), plus 'num_examples', 'shots',
    'truncated_prompts', and with `return_predictions` the 'prompts', 'predictions' and (for
    options) 'option_scores' [N, num_options].
  """
  examples = list(examples)
  if not examples:
    raise ValueError('examples is empty: nothing to evaluate')
  prompts = build_prompts(examples, shots, shot_pool, prompt_format, seed)
  result = {'num_examples': len(examples), 'shots': shots}
  if options is not None:
    options = list(options)
    for ex in examples:
      if not ex.answers or ex.answers[0] not in options:
        raise ValueError(f'example answers {ex.answers!r} do not start with one of '
                         f"options={options}; pass the task's label names as options")
    completions = [prompt_format.completion(o) for o in options]
    scores, counts, truncated = score_completions(
        model, params, vocab, [p for p in prompts for _ in options],
        completions * len(prompts), bos_id=bos_id, batch_size=batch_size)
    scores = scores.reshape(len(prompts), len(options))
    ranked = scores / counts.reshape(scores.shape) if length_normalize else scores
    predictions = [options[j] for j in ranked.argmax(-1)]
    result.update(task_metrics.compute(metrics, ranked.argmax(-1),
                                       [options.index(ex.answers[0]) for ex in examples]))
    result['truncated_prompts'] = int(truncated.reshape(scores.shape).any(-1).sum())
    if return_predictions:
      result['option_scores'] = ranked
  else:
    if stop is None:
      stop = prompt_format.stops()
    predictions, truncated = greedy_answers(model, params, vocab, prompts,
                                            max_new_tokens=max_new_tokens, stop=stop,
                                            bos_id=bos_id, batch_size=batch_size)
    # References as the vocabulary decodes them, like the predictions ('u . s .' for 'U.S.').
    scores = task_metrics.squad_scores(
        {str(i): text_to_text.canonical(vocab, ex.answers) for i, ex in enumerate(examples)},
        {str(i): p for i, p in enumerate(predictions)})
    # exact and f1, and the answerable (HasAns_*) and unanswerable (NoAns_*) questions' own.
    result.update({k: v for k, v in scores.items() if k != 'total'}, truncated_prompts=truncated)
  if return_predictions:
    result['prompts'], result['predictions'] = prompts, predictions
  return result


# ------------------------------------------------------------------------------ the run
def base_config(task: str, data_format: str = 'glue_tsv', *, text_template: str = '{a}',
                input_prefix: str = 'Input: ', output_prefix: str = '\nOutput:',
                options: str = '', variant: str = 'pretrained') -> ml_collections.ConfigDict:
  """An in-context config (`ssl-jax finetune` / eval-suite with a GPT --init).

  Beside the fine-tuning data keys of `ssl_jax.finetune.config` (train_file, or TFDS
  train_split = the shot pool; '' = the other eval examples), `in_context` holds: shots, seed,
  text_template ('{a}' and '{b}': text_a / text_b, for SQuAD the context / question; a pair
  task's needs both), the PromptFormat fields, options (comma-separated answers for label 0,
  1, ...; '' = the task's label names; 'none' = generation), length_normalize, max_new_tokens,
  batch_size and bos_id (-1: none).
  `variant` (the config file's): 'pretrained' or 'tiny' are the same, the model comes from --init.
  """
  if variant not in ('pretrained', 'tiny'):
    raise ValueError(f"config variant {variant!r} is unknown; use 'pretrained' or 'tiny'.")
  c = config_lib.base_config('causal_lm', 'gpt', 'small')
  c.data.update(dict(task=task, format=data_format, train_file='', eval_file='',
                     train_split='train', eval_split='validation', tfds_data_dir='',
                     max_train_examples=0, max_eval_examples=0, labels=''))
  c.finetune = ml_collections.ConfigDict(dict(init='none', num_epochs=0.0, warmup_ratio=0.0))
  c.in_context = ml_collections.ConfigDict(dict(
      shots=0, seed=0, text_template=text_template, input_prefix=input_prefix,
      output_prefix=output_prefix, answer_prefix=' ', example_separator='\n\n', instruction='',
      options=options, length_normalize=False, max_new_tokens=16, batch_size=16, bos_id=0))
  return c


def prompt_format(config) -> PromptFormat:
  """The PromptFormat of config.in_context."""
  ic = config.in_context
  return PromptFormat(ic.input_prefix, ic.output_prefix, ic.answer_prefix, ic.example_separator,
                      ic.instruction)


def _options(config) -> tuple[str, ...] | None:
  """Answer strings per label id, or None for generation (SQuAD, TSV, options='none')."""
  chosen = config.in_context.options
  if chosen == 'none' or config.data.format in ('squad_json', 'tsv'):
    return None
  # Label ids index config.data.labels when it is set: the task's own names in their order gave
  # each example another label's answer.
  names = formats.label_names(config.data.task, config.data.labels)
  if not names:
    raise ValueError(f"config.data.task={config.data.task!r} is a regression task; in-context "
                     'evaluation scores classification (options) or generation.')
  options = tuple(o.strip() for o in chosen.split(',')) if chosen else names
  if len(options) != len(names):
    raise ValueError(f'config.in_context.options={chosen!r} names {len(options)} answers but '
                     f'task {config.data.task!r} has {len(names)} labels {names}; give one per '
                     'label, in label order (config.data.labels when it is set).')
  # A repeated answer made every gold answer of its labels the first (an untrained model scored
  # accuracy 1.0 with 'good,good'); an empty one has no tokens to score.
  if len(set(options)) != len(options) or not all(options):
    raise ValueError(f'config.in_context.options={chosen!r}: each label needs its own non-empty '
                     'answer, e.g. options=negative,positive.')
  return options


def _reads_train_split(config) -> bool:
  """Whether the shots come from the train split config.data names (train_file, or TFDS
  train_split): named, and not the eval split (whose queries would find their own answers among
  their shots; the pool is then the other eval examples, as without a train file)."""
  d = config.data
  if d.format == 'tfds':
    return d.train_split != d.eval_split
  return bool(d.train_file) and not (
      d.eval_file and os.path.normpath(d.train_file) == os.path.normpath(d.eval_file))


def read_examples(config, split: str) -> list[Example]:
  """The examples of `split` that config.data names, as prompt text and answers."""
  template, options = config.in_context.text_template, _options(config)
  d = config.data
  setting = 'train_file' if split == 'train' else 'eval_file'
  if d.format in ('squad_json', 'tsv') and not d[setting]:
    raise ValueError(f'config.data.{setting} is empty; set --config.data.{setting}=PATH to a '
                     f'{d.format} file.')
  if d.format == 'squad_json':
    examples = [Example(template.format(a=q.context, b=q.question),
                        tuple(a.text for a in q.answers), q.context)
                for q in formats.read_squad(d[setting])]
  elif d.format == 'tsv':
    examples = [Example(template.format(a=p.inputs, b=''), p.references)
                for p in text_to_text.read_tsv_pairs(d[setting])]
  else:   # GLUE TSV files or TFDS, read as the classification heads read them
    reader = ml_collections.ConfigDict({'objective': 'classification', 'data': d.to_dict()})
    examples = [Example(template.format(a=ex.text_a, b=ex.text_b or ''), (options[ex.label],))
                for ex in data_lib.read_examples(reader, split) if ex.label is not None]
  limit = d.max_train_examples if split == 'train' else d.max_eval_examples
  return examples[:limit] if limit > 0 else examples


def check(config) -> list[Example]:
  """Raises for a setting of config.in_context or config.data that `run` would fail on;
  returns the eval split's examples."""
  ic = config.in_context
  finetune_config.refuse_unread(   # train.seed draws an --init none model's weights
      config, base_config(config.data.task),
      (*finetune_config.STREAM_SETTINGS, 'data.pack', 'data.seed', 'data.sequence_length',
       'finetune.num_epochs', 'finetune.warmup_ratio', 'optim',
       *(f'train.{key}' for key in config.train if key != 'seed')),
      'in-context evaluation trains nothing and reads no training stream: config.in_context sets '
      'its shots, their seed and its batch size, and prompts are as long as the model allows')
  if ic.batch_size < 1:
    raise ValueError(f'config.in_context.batch_size={ic.batch_size} is invalid: '
                     'use a positive number of prompts per forward pass.')
  fields = {name for _, name, _, _ in string.Formatter().parse(ic.text_template)
            if name is not None}
  if 'a' not in fields or fields - {'a', 'b'}:
    raise ValueError(f'config.in_context.text_template={ic.text_template!r} is invalid: it must '
                     "place the example's text as {a} (a pair's second text as {b}) and name no "
                     'other field.')
  # A pair's second text (SQuAD's question) was silently left out of every prompt.
  squad = config.data.format == 'squad_json'
  pair = squad or (config.data.format in ('glue_tsv', 'tfds')
                   and len(formats.glue_spec(config.data.task).tfds_fields) > 1)
  if pair and 'b' not in fields:
    raise ValueError(f'config.in_context.text_template={ic.text_template!r} leaves out the '
                     f'{"question" if squad else "second text"} of task {config.data.task!r}: '
                     'place it as {b}, as configs/finetune/in_context/{rte,squad}.py do.')
  if ic.shots < 0:
    raise ValueError(f'config.in_context.shots={ic.shots} is invalid: use 0 or more.')
  if ic.seed < 0:
    raise ValueError(f'config.in_context.seed={ic.seed} is invalid: shots are drawn by '
                     'numpy.random.default_rng([seed, query index]), which takes 0 or more.')
  if ic.max_new_tokens < 1:
    raise ValueError(f'config.in_context.max_new_tokens={ic.max_new_tokens} is invalid: use a '
                     'positive number of tokens to generate.')
  examples = read_examples(config, 'validation')
  if ic.shots:   # the pool read now, not after the model was loaded (or other tasks trained)
    reads = _reads_train_split(config)
    pool = (len(read_examples(config, 'train')) if reads
            else _query_groups(_passage_groups(examples))[1])
    if ic.shots > pool:
      tfds = config.data.format == 'tfds'
      setting = 'config.data.train_split' if tfds else 'config.data.train_file'
      others = ' on other passages' if config.data.format == 'squad_json' else ''
      source = data_lib.source(config, 'train') if reads else (
          f'the other eval examples{others}: {setting} is '
          f'{"the eval split" if tfds or config.data.train_file else "empty"}')
      raise ValueError(f'config.in_context.shots={ic.shots} is invalid: the shot pool ({source}) '
                       f'holds only {pool} examples; use fewer shots or a larger {setting}.')
  return examples


def _check_workdir(workdir: str) -> None:
  """Raises if `workdir` holds another command's output (a training run's checkpoints, or a
  config.json that is not an in-context evaluation's), whose metrics.jsonl and config.json the
  scores would replace."""
  existing = checkpointing.workdir_config(workdir)
  if (tf.io.gfile.exists(os.path.join(workdir, 'checkpoints'))
      or (existing is not None and 'in_context' not in existing)):
    raise ValueError(
        f'--workdir={workdir!r} holds another run (checkpoints, or a config.json of another '
        'command); in-context scoring writes its own metrics.jsonl and config.json there, '
        f'replacing that run\'s. Pass a new --workdir, e.g. {os.path.join(workdir, "in_context")}.')


def run(config, workdir: str, init: str = 'none') -> dict:
  """Scores a GPT (`init`: see ssl_jax.finetune.lm_init) in context on config.data's eval
  split; writes the scores to workdir/eval_results.json (and an eval row to metrics.jsonl) and
  the prompts and predictions to workdir/eval_predictions.jsonl. Runs on one device."""
  _check_workdir(workdir)
  eval_examples = check(config)
  if jax.process_count() > 1:
    raise ValueError(f'in-context evaluation runs in one process, not {jax.process_count()}; '
                     'start `ssl-jax finetune` with a GPT config without --num_processes.')
  config = lm_init.config_from_init(config, init, families=('gpt',))
  exp = trainer.Experiment.build(config, devices=jax.devices()[:1])
  params = lm_init.params_from_init(config, config.finetune.init, exp.layout)
  if params is None:
    params = exp.init_state().params   # 'none': an untrained baseline
  ic = config.in_context
  spec = formats.GLUE.get(config.data.task)
  metric_names = spec.metrics if spec and spec.label_names else ('accuracy',)   # CoLA: MCC
  if (ic.shots and not _reads_train_split(config)
      and (config.data.train_file or config.data.format == 'tfds')):
    logging.warning('%s is the eval split: the shots are drawn from the other eval examples, as a '
                    'query\'s own answer would be among its shots.',
                    data_lib.source(config, 'train'))
  pool = read_examples(config, 'train') if ic.shots and _reads_train_split(config) else None
  result = evaluate_in_context(
      exp.model, params, vocabularies.get_vocabulary(config.data.vocab), eval_examples,
      ic.shots, shot_pool=pool, options=_options(config), prompt_format=prompt_format(config),
      seed=ic.seed, length_normalize=ic.length_normalize, max_new_tokens=ic.max_new_tokens,
      bos_id=None if ic.bos_id < 0 else ic.bos_id, batch_size=ic.batch_size,
      return_predictions=True, metrics=metric_names)
  scores = {k: v for k, v in result.items()
            if k in (*metric_names, 'exact', 'f1') or k.startswith(('HasAns_', 'NoAns_'))}
  if result['truncated_prompts']:
    logging.warning('%d of %d prompts are longer than the model\'s %d positions and lost their '
                    'oldest tokens (part of the shots or of the question); use fewer '
                    'config.in_context.shots or a model with more positions.',
                    result['truncated_prompts'], len(eval_examples), exp.model_config.max_length)
  if jax.process_index() == 0:
    tf.io.gfile.makedirs(workdir)
    trainer.write_config(config, workdir)
    # start_step=-1: the workdir's rows are an earlier run of this command's; replace them.
    with metrics_lib.MetricsLogger(workdir, num_steps=1, log_every=1, start_step=-1) as logger:
      logger.write_eval(0, {k: (v, 1.0) for k, v in scores.items()})
    metrics_lib.write_results(workdir, {'task': config.data.task, 'objective': 'in_context',
                                        'init': init, 'shots': ic.shots,
                                        'truncated_prompts': result['truncated_prompts'],
                                        'scores': scores})
    metrics_lib.write_atomically(os.path.join(workdir, 'eval_predictions.jsonl'), ''.join(
        json.dumps({'prompt': prompt, 'answers': list(ex.answers), 'prediction': prediction})
        + '\n' for ex, prompt, prediction in zip(eval_examples, result['prompts'],
                                                 result['predictions'])))
  return scores
