"""Autoregressive decoding with a KV cache: greedy and temperature / top-k sampling.

The loop is model-agnostic. A model plugs in through a *step function*

    step_fn(cache, tokens [B, T]) -> (logits [B, T, V], new cache)

that runs T new tokens through the decoder against the cache (T > 1 once, to prefill the
prompt; then T = 1). GPT's step is `model.apply(..., decode=True, mutable=['cache'])`; an
encoder-decoder closes its step over the encoder output, and its first step adds the
cross-attention keys and values to the cache (so it runs outside any loop). Beam search can
reuse the same step functions (reordering the cache pytree along the batch axis between steps).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

StepFn = Callable[[Any, jax.Array], tuple]


def init_cache(model, *args, **kwargs) -> dict:
  """The all-zero 'cache' collection `model.init(rng, *args, decode=True, **kwargs)` would
  create; its sizes come from the args (for GPT: tokens [B, max_length]). No compute."""
  shapes = jax.eval_shape(
      lambda *a: model.init(jax.random.key(0), *a, decode=True, **kwargs), *args)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['cache'])


def sample_logits(rng: jax.Array, logits: jax.Array, temperature: float = 0.0,
                  top_k: int = 0) -> jax.Array:
  """logits [B, V] -> token ids [B]: argmax when temperature == 0, else a sample from
  softmax(logits / temperature) restricted to the top_k largest logits (top_k 0 = all; one past
  the vocabulary = all, as in `transformers`)."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k:
    kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _check_sampling(temperature: float, top_k: int) -> None:
  if temperature < 0:
    raise ValueError(f'temperature={temperature} must be >= 0 (0 = greedy)')
  if top_k < 0:
    raise ValueError(f'top_k={top_k} must be >= 0 (0 = every token)')


def decode_loop(step_fn: StepFn, cache, tokens: jax.Array, prompt_lengths: jax.Array,
                prefill_length: int, rng: jax.Array, temperature: float = 0.0,
                top_k: int = 0, eos_id: Optional[int] = None, pad_id: int = 0) -> jax.Array:
  """Fills tokens [B, T] left to right and returns it.

  Row b keeps its first prompt_lengths[b] tokens; every later position gets the token
  sampled from the model's prediction at the previous position. The first prefill_length
  tokens (<= every prompt length, static) run through step_fn in one chunk, before the loop
  (so that call may add to the cache). After a row samples eos_id, its remaining positions
  get pad_id. The last position is filled but never fed back, so step_fn sees at most T - 1
  tokens (as HF's generate).
  """
  batch, total = tokens.shape
  logits, cache = step_fn(cache, tokens[:, :prefill_length])

  def fill(i, tokens, last_logits, rng, done):
    rng, sub = jax.random.split(rng)
    sampled = sample_logits(sub, last_logits, temperature, top_k)
    if eos_id is not None:
      sampled = jnp.where(done, pad_id, sampled)
    forced = i < prompt_lengths
    token = jnp.where(forced, tokens[:, i], sampled)
    if eos_id is not None:
      done = done | (~forced & (token == eos_id))
    return tokens.at[:, i].set(token), token, rng, done

  def body(i, state):
    tokens, cache, last_logits, rng, done = state
    tokens, token, rng, done = fill(i, tokens, last_logits, rng, done)
    logits, cache = step_fn(cache, token[:, None])
    return tokens, cache, logits[:, -1], rng, done

  state = (tokens, cache, logits[:, -1], rng, jnp.zeros((batch,), bool))
  tokens, _, last_logits, rng, done = jax.lax.fori_loop(prefill_length, total - 1, body, state)
  if prefill_length == total:
    return tokens
  return fill(total - 1, tokens, last_logits, rng, done)[0]


@functools.partial(jax.jit, static_argnames=('model', 'prefill_length', 'temperature',
                                             'top_k', 'eos_id'))
def continue_rows(model, params, tokens, prompt_lengths, rng, prefill_length: int,
                  temperature: float = 0.0, top_k: int = 0, eos_id: Optional[int] = None):
  """`decode_loop` with a decoder-only model (GPT): tokens [B, T] with row b's prompt in its
  first prompt_lengths[b] positions -> [B, T] continued (no checks; see `generate`)."""
  def step_fn(cache, chunk):
    logits, variables = model.apply({'params': params, 'cache': cache}, chunk, decode=True,
                                    mutable=['cache'])
    return logits, variables['cache']

  cache = init_cache(model, jax.ShapeDtypeStruct(tokens.shape, jnp.int32))
  return decode_loop(step_fn, cache, tokens, prompt_lengths, prefill_length, rng,
                     temperature, top_k, eos_id)


def generate(model, params, prompt_tokens, max_new_tokens: int, rng=None,
             temperature: float = 0.0, top_k: int = 0, prompt_lengths=None,
             eos_id: Optional[int] = None) -> jax.Array:
  """Continues each prompt of a decoder-only model (GPT) by up to max_new_tokens tokens.

  prompt_tokens [B, P] int; prompt_lengths [B] (default: all P) for right-padded prompts
  of different lengths (prompts padded on the left, as for `transformers`' generate, would be
  read as prompts that start with pad tokens: a GPT has no pad id to mask). Returns
  [B, P + max_new_tokens]: row b is its prompt followed by generated tokens
  (P + max_new_tokens - prompt_lengths[b] of them). temperature 0 is greedy.
  """
  prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
  batch, prompt_length = prompt_tokens.shape
  total = prompt_length + max_new_tokens
  if total > model.config.max_length:
    raise ValueError(f'prompt length {prompt_length} + max_new_tokens {max_new_tokens} = '
                     f'{total} exceeds max_length={model.config.max_length} of the model; '
                     'shorten the prompt or generate fewer tokens')
  if prompt_lengths is None:
    prompt_lengths = np.full((batch,), prompt_length, np.int32)
  prompt_lengths = np.asarray(prompt_lengths, np.int32)
  if prompt_lengths.min() < 1 or prompt_lengths.max() > prompt_length:
    raise ValueError(f'prompt_lengths={prompt_lengths.tolist()} must be in [1, {prompt_length}]')
  _check_sampling(temperature, top_k)
  tokens = jnp.pad(prompt_tokens, ((0, 0), (0, max_new_tokens)))
  rng = jax.random.key(0) if rng is None else rng
  return continue_rows(model, params, tokens, jnp.asarray(prompt_lengths), rng,
                       int(prompt_lengths.min()), float(temperature), int(top_k), eos_id)


# ------------------------------------------------------------------ encoder-decoder models
# EncoderDecoder (T5, BART): encode once, then run the decoder's `decode` method step by step
# against its KV cache. Sequences start with config.decoder_start_token_id at position 0.
def _seq2seq_step_fn(model, params, encoded, encoder_segment_ids) -> StepFn:
  def step_fn(cache, tokens):
    logits, variables = model.apply({'params': params, 'cache': cache}, encoded, tokens,
                                    encoder_segment_ids, decode=True, mutable=['cache'],
                                    method='decode')
    return logits, variables['cache']
  return step_fn


def _seq2seq_setup(model, params, encoder_input_tokens, encoder_segment_ids, batch_repeat,
                   max_decode_len):
  """Encodes once; returns (step_fn, empty cache) for batch_repeat copies of each row. The
  first step adds every layer's cross-attention keys and values of the encoder output to the
  cache; later steps read them."""
  if encoder_segment_ids is None:
    encoder_segment_ids = jnp.ones_like(encoder_input_tokens)
  encoded = model.apply({'params': params}, encoder_input_tokens, encoder_segment_ids,
                        method='encode')
  encoded = jnp.repeat(encoded, batch_repeat, axis=0)
  encoder_segment_ids = jnp.repeat(encoder_segment_ids, batch_repeat, axis=0)
  rows = encoded.shape[0]
  # One cache slot per token fed to the decoder: the start token and all generated ones but
  # the last.
  cache = init_cache(model, jax.ShapeDtypeStruct((rows, encoded.shape[1]), jnp.int32),
                     jax.ShapeDtypeStruct((rows, max_decode_len), jnp.int32))
  return _seq2seq_step_fn(model, params, encoded, encoder_segment_ids), cache


def check_decode_len(model, max_decode_len, setting: str = 'max_decode_len'):
  """Raises if an EncoderDecoder cannot decode `max_decode_len` tokens (named `setting`)."""
  cfg = model.config
  if max_decode_len < 1:
    raise ValueError(f'{setting}={max_decode_len} must be >= 1')
  # The decoder is fed the start token and all generated tokens but the last.
  if cfg.family == 'bart' and max_decode_len > cfg.max_length:
    raise ValueError(f'{setting}={max_decode_len} exceeds the model\'s '
                     f'max_length={cfg.max_length} decoder positions; decode fewer tokens')


@functools.partial(jax.jit, static_argnames=('model', 'max_decode_len', 'temperature',
                                             'top_k', 'eos_id'))
def _seq2seq_generate(model, params, encoder_input_tokens, encoder_segment_ids, rng,
                      max_decode_len, temperature, top_k, eos_id):
  cfg = model.config
  step_fn, cache = _seq2seq_setup(model, params, encoder_input_tokens, encoder_segment_ids, 1,
                                  max_decode_len)
  batch = encoder_input_tokens.shape[0]
  tokens = jnp.full((batch, max_decode_len + 1), cfg.pad_token_id, jnp.int32)
  tokens = tokens.at[:, 0].set(cfg.decoder_start_token_id)
  return decode_loop(step_fn, cache, tokens, jnp.ones((batch,), jnp.int32), 1, rng,
                     temperature, top_k, eos_id, cfg.pad_token_id)


def seq2seq_generate(model, params, encoder_input_tokens, max_decode_len: int,
                     encoder_segment_ids=None, rng=None, temperature: float = 0.0,
                     top_k: int = 0, eos_id: Optional[int] = None) -> jax.Array:
  """Greedy (temperature 0) or sampled decoding for an EncoderDecoder.

  encoder_input_tokens [B, Le] (encoder_segment_ids [B, Le]: 1 real, 0 padding; default all
  real). Returns [B, 1 + max_decode_len]: decoder_start_token_id, then the generated tokens;
  after a row emits eos_id its remaining positions hold pad_token_id.
  """
  check_decode_len(model, max_decode_len)
  _check_sampling(temperature, top_k)
  rng = jax.random.key(0) if rng is None else rng
  return _seq2seq_generate(model, params, jnp.asarray(encoder_input_tokens, jnp.int32),
                           None if encoder_segment_ids is None else
                           jnp.asarray(encoder_segment_ids, jnp.int32), rng,
                           int(max_decode_len), float(temperature), int(top_k), eos_id)


_NEG_INF = -1.0e7   # finite, so that scores stay comparable and never turn into NaN


def _reorder_cache(cache, rows: jax.Array):
  """Gathers the self-attention KV cache along its batch axis ([..., B, L, N, H]; scanned
  stacks add a leading layer axis). Counters and cached positions are the same for every row;
  so are the cross-attention keys and values ('cross_key', 'cross_value') for the rows of one
  example, and `rows` only moves rows within an example, so those stay where they are."""
  def gather(path, x):
    if getattr(path[-1], 'key', None) in ('cached_key', 'cached_value'):
      return jnp.take(x, rows, axis=x.ndim - 4)
    return x
  return jax.tree_util.tree_map_with_path(gather, cache)


@functools.partial(jax.jit, static_argnames=('model', 'beam_size', 'max_decode_len', 'eos_id',
                                             'length_penalty'))
def _beam_search(model, params, encoder_input_tokens, encoder_segment_ids, beam_size,
                 max_decode_len, eos_id, length_penalty):
  cfg = model.config
  batch, k, total = encoder_input_tokens.shape[0], beam_size, max_decode_len + 1
  step_fn, cache = _seq2seq_setup(model, params, encoder_input_tokens, encoder_segment_ids, k,
                                  max_decode_len)

  def normalise(log_probs, length):   # HF: sum of log-probs / generated_length**alpha
    return log_probs / jnp.asarray(length, jnp.float32) ** length_penalty

  seqs = jnp.full((batch, k, total), cfg.pad_token_id, jnp.int32)
  seqs = seqs.at[:, :, 0].set(cfg.decoder_start_token_id)
  # All beams start identical: only beam 0 may expand at the first step.
  alive_lp = jnp.tile(jnp.array([0.0] + [_NEG_INF] * (k - 1), jnp.float32), (batch, 1))
  state = dict(i=jnp.array(0, jnp.int32), cache=cache, alive=seqs, alive_lp=alive_lp,
               finished=seqs, finished_score=jnp.full((batch, k), _NEG_INF, jnp.float32))

  def can_improve(state):
    if eos_id is None or length_penalty < 0:
      return True
    # Log-probs only fall, so for alpha >= 0 the best an alive beam can reach is its current
    # log-prob normalised by the longest length; stop once that cannot beat a finished one.
    best_alive = normalise(state['alive_lp'][:, 0], max_decode_len)
    worst_finished = state['finished_score'][:, -1]
    return ~jnp.all(worst_finished > _NEG_INF / 2) | jnp.any(best_alive > worst_finished)

  def cond(state):
    return (state['i'] < max_decode_len) & can_improve(state)

  def body(state):
    i = state['i']
    logits, cache = step_fn(state['cache'], state['alive'][:, :, i].reshape(batch * k, 1))
    log_probs = jax.nn.log_softmax(logits[:, -1].astype(jnp.float32)).reshape(batch, k, -1)
    vocab = log_probs.shape[-1]
    candidates = (state['alive_lp'][:, :, None] + log_probs).reshape(batch, k * vocab)
    # 2k candidates always contain k that do not end in EOS (each beam has one EOS token).
    top_lp, top_idx = jax.lax.top_k(candidates, 2 * k)
    beam, token = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
    cand_seqs = jnp.take_along_axis(state['alive'], beam[:, :, None], axis=1)
    cand_seqs = cand_seqs.at[:, :, i + 1].set(token)
    ends = (token == eos_id) if eos_id is not None else jnp.zeros_like(token, bool)

    alive_lp, pick = jax.lax.top_k(jnp.where(ends, _NEG_INF, top_lp), k)
    alive = jnp.take_along_axis(cand_seqs, pick[:, :, None], axis=1)
    rows = (jnp.arange(batch)[:, None] * k + jnp.take_along_axis(beam, pick, axis=1))
    cache = _reorder_cache(cache, rows.reshape(-1))

    # As in HF, an EOS finishes a hypothesis only if it ranks among the top k candidates.
    finishes = ends & (jnp.arange(2 * k) < k)
    new_scores = jnp.where(finishes, normalise(top_lp, i + 1), _NEG_INF)
    scores = jnp.concatenate([state['finished_score'], new_scores], axis=1)
    finished_score, pick = jax.lax.top_k(scores, k)
    finished = jnp.take_along_axis(
        jnp.concatenate([state['finished'], cand_seqs], axis=1), pick[:, :, None], axis=1)
    return dict(i=i + 1, cache=cache, alive=alive, alive_lp=alive_lp, finished=finished,
                finished_score=finished_score)

  # The first step runs outside the loop: it adds the cross-attention keys and values to the
  # cache, and a loop carries one structure (`cond` holds at i=0).
  state = jax.lax.while_loop(cond, body, body(state))
  # Beams still alive at the end compete with the finished ones at their current length.
  scores = jnp.concatenate(
      [state['finished_score'], normalise(state['alive_lp'], jnp.maximum(state['i'], 1))], 1)
  seqs = jnp.concatenate([state['finished'], state['alive']], axis=1)
  scores, pick = jax.lax.top_k(scores, k)
  return jnp.take_along_axis(seqs, pick[:, :, None], axis=1), scores


def beam_search(model, params, encoder_input_tokens, max_decode_len: int, beam_size: int = 4,
                encoder_segment_ids=None, eos_id: Optional[int] = None,
                length_penalty: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Beam search for an EncoderDecoder (T5, BART).

  A hypothesis finishes when it emits eos_id among the step's top beam_size candidates (None:
  none finish early); its score is its summed token log-probability divided by (number of
  generated tokens, EOS included) ** length_penalty, as in HF `generate`. Search stops when no
  alive beam can beat the k-th finished one (length_penalty >= 0) or after max_decode_len
  tokens; beams still alive then compete on the same score. That is HF's
  `early_stopping="never"`; HF's default (False) and True stop earlier when length_penalty > 0
  and may return lower-scoring beams. Returns (sequences [B, beam_size, 1 + max_decode_len]
  starting with decoder_start_token_id, pad_token_id after EOS; scores [B, beam_size]), best
  first. beam_size=1 gives the greedy sequence when eos_id is None or length_penalty == 0.
  """
  check_decode_len(model, max_decode_len)
  if beam_size < 1:
    raise ValueError(f'beam_size={beam_size} must be >= 1')
  return _beam_search(model, params, jnp.asarray(encoder_input_tokens, jnp.int32),
                      None if encoder_segment_ids is None else
                      jnp.asarray(encoder_segment_ids, jnp.int32), int(beam_size),
                      int(max_decode_len), eos_id, float(length_penalty))
