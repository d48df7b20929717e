"""Probe prediction batches: the probe sentences corrupted as each objective corrupts its data.

    preds = predictions.build(subject, text, seed=0)
    loss, correct, predicted = subject.token_scores(params, preds.batch)   # [R, T] per slot

Every batch is in the objective's own batch format (CONTRACTS.md), so the objective's
`model_inputs` feeds the model, and every prediction slot [R, T] carries what it predicts: the
part of speech and frequency bucket of the target token's word, how the input was corrupted
(`kind`) and the length of the span it belongs to (`span_length`). A sentence gives several
rows, each corrupting a disjoint part of it, so every word is predicted once:

- mlm: ~1/mask_rate rows, each masking a disjoint set of whole words; a chosen token becomes
  [MASK] (`kind` 1), a random token (2) or stays (3) in `kind_ratios` proportions. Slots are
  the masked tokens.
- causal_lm: one row; every token is a slot (next-token prediction).
- span_corruption (T5): the sentence is cut into spans of 1 + Poisson(mean_span_length - 1)
  tokens; ~1/noise_density rows each turn a disjoint set of spans into sentinels. A sentence's
  first span is never noise (as in T5). Slots: `<s0> span <s1> span ... EOS`; a row whose last
  span is kept ends `<s_n> EOS`, which T5's pieces never do (their last span is noise), so
  that `<s_n>` is fed to the decoder but not scored.
- denoising (BART text infilling): spans as above, poisson_lambda for the mean, ~1/infill_ratio
  rows (1/0.3 when the config does no infilling); each span becomes one [MASK]. Slots: the
  whole sentence + EOS; tokens inside a span have `span_length` >= 1, copied ones 0.
Randomness comes from `numpy.random.default_rng([seed, sentence])`, so batches are fixed.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ssl_jax.probes import data
from ssl_jax.probes import representations
from ssl_jax.probes.subject import Subject

MAX_SPAN_LENGTH = 8
KIND_NAMES = {1: "masked", 2: "random", 3: "kept"}


@dataclasses.dataclass(frozen=True)
class Predictions:
  """An objective-format batch (R rows) and per-slot [R, T] labels (see the module doc).

  `counts_for_pos` marks the slots that predict a word of the sentence from corrupted input
  (mlm: masked slots; causal_lm: all; T5/BART: tokens inside a span).
  """
  batch: dict
  weights: np.ndarray         # float32, 1 on scored slots (not T5's kept-tail sentinel)
  pos: np.ndarray             # int32 UPOS index, -1 on sentinels / EOS
  frequency: np.ndarray       # int32 frequency bucket, -1 on sentinels / EOS
  kind: np.ndarray            # int32, mlm only (KIND_NAMES), else 0
  span_length: np.ndarray     # int32, T5/BART: length of the slot's span, 0 outside spans
  counts_for_pos: np.ndarray  # bool

  @property
  def num_rows(self) -> int:
    return self.weights.shape[0]


def _regular_ids(subject: Subject) -> np.ndarray:
  """Ids a 'random token' may take: every id but the special ones and sentinels."""
  s = subject.special
  excluded = {i for i in (s.pad, s.eos, s.unk, s.cls, s.sep, s.mask) if i is not None}
  excluded |= set(s.sentinels)
  return np.array([i for i in range(subject.vocab.vocab_size) if i not in excluded], np.int32)


def _pad(rows: list[list], length: int, fill=0, dtype=np.int32) -> np.ndarray:
  out = np.full((len(rows), length), fill, dtype)
  for r, row in enumerate(rows):
    out[r, :len(row)] = row
  return out


def _spans(rng, num_tokens: int, mean_length: float) -> list[tuple[int, int]]:
  """Consecutive (start, end) segments covering the tokens, lengths 1 + Poisson(mean - 1)."""
  segments, start = [], 0
  while start < num_tokens:
    length = int(min(MAX_SPAN_LENGTH, 1 + rng.poisson(max(mean_length - 1.0, 0.0))))
    segments.append((start, min(num_tokens, start + length)))
    start += length
  return segments


def _copies(rng, num_items: int, rate: float) -> np.ndarray:
  """Copy index per item: ~1/rate copies, items dealt round-robin from a random offset."""
  k = int(np.clip(round(1.0 / rate), 1, max(num_items, 1)))
  return (np.arange(num_items) + rng.integers(k)) % k


def build(subject: Subject, text: data.ProbeText, seed: int = 0,
          kind_ratios: tuple[float, float] | None = None) -> Predictions:
  """The probe batch of `subject`'s objective over `text` (see the module doc).

  kind_ratios: mlm only, (mask_token_ratio, random_token_ratio) of the chosen words; default
    config.data.mlm's (BERT's 0.8, 0.1); the rest stay unchanged ('kept').
  """
  builders = {"mlm": _mlm, "causal_lm": _causal_lm, "span_corruption": _span_corruption,
              "denoising": _denoising}
  rows = []  # per row: dict of lists
  text = data.fit(text, subject.sentence_tokens)   # room for [CLS]/[SEP] (mlm) or BOS / EOS
  for s, tokens in enumerate(text.tokens):
    rng = np.random.default_rng([seed, s])
    labels = {"pos": text.pos[s], "frequency": text.frequency[s], "word": text.word_index[s]}
    rows += builders[subject.name](subject, rng, tokens, labels, kind_ratios)
  return _assemble(subject, rows)


def _slot(pos=-1, frequency=-1, kind=0, span_length=0, counts=False, scored=True):
  return dict(pos=pos, frequency=frequency, kind=kind, span_length=span_length, counts=counts,
              scored=scored)


def _mlm(subject, rng, tokens, labels, kind_ratios):
  cfg = subject.config.data.mlm
  mask_ratio, random_ratio = kind_ratios or (cfg.mask_token_ratio, cfg.random_token_ratio)
  regular = _regular_ids(subject)
  words = np.unique(labels["word"])
  copy_of_word = dict(zip(words[rng.permutation(len(words))],
                          _copies(rng, len(words), cfg.mask_rate)))
  token_copy = np.array([copy_of_word[w] for w in labels["word"]])
  rows = []
  for c in range(int(token_copy.max()) + 1):
    chosen = np.flatnonzero(token_copy == c)
    draw = rng.random(len(chosen))
    kinds = np.where(draw < mask_ratio, 1, np.where(draw < mask_ratio + random_ratio, 2, 3))
    inputs = np.array(tokens)
    inputs[chosen] = np.where(kinds == 1, subject.special.mask,
                              np.where(kinds == 2, rng.choice(regular, len(chosen)),
                                       tokens[chosen]))
    rows.append({
        "inputs": [subject.special.cls] + list(inputs) + [subject.special.sep],
        "positions": list(chosen + 1), "targets": list(tokens[chosen]),
        "slots": [_slot(labels["pos"][i], labels["frequency"][i], int(k), 0, k == 1)
                  for i, k in zip(chosen, kinds)]})
  return rows


def _causal_lm(subject, rng, tokens, labels, kind_ratios):
  del subject, rng, kind_ratios
  return [{"inputs": [0] + list(tokens[:-1]), "targets": list(tokens),
           "slots": [_slot(p, f, 0, 0, True) for p, f in zip(labels["pos"], labels["frequency"])]}]


def _span_rows(rng, tokens, mean_length, rate, first_can_be_noise):
  """[(noise segments of the row)] for each row of a sentence."""
  segments = _spans(rng, len(tokens), mean_length)
  candidates = segments if first_can_be_noise else segments[1:]
  if not candidates:
    return []
  copy = _copies(rng, len(candidates), rate)
  return [[seg for seg, c in zip(candidates, copy) if c == k] for k in range(int(copy.max()) + 1)]


def _span_corruption(subject, rng, tokens, labels, kind_ratios):
  del kind_ratios
  cfg = subject.config.data.span_corruption
  sentinels, eos = subject.special.sentinels, subject.special.eos
  tail = [] if eos is None else [eos]
  rows = []
  for noise in _span_rows(rng, tokens, cfg.mean_span_length, cfg.noise_density, False):
    inputs, targets, slots, cursor = [], [], [], 0
    for k, (start, end) in enumerate(noise):
      # T5 (and ssl_jax.data.span_corruption): the span is sentinel k in the inputs; in the
      # targets each run of kept tokens is the next sentinel, so span k follows sentinel k.
      inputs += list(tokens[cursor:start]) + [sentinels[k]]
      targets += [sentinels[k]] + list(tokens[start:end])
      slots += [_slot()] + [_slot(labels["pos"][i], labels["frequency"][i], 0, end - start, True)
                            for i in range(start, end)]
      cursor = end
    inputs += list(tokens[cursor:])
    if cursor < len(tokens):
      # The kept tail's sentinel: T5's training targets never end `<s_n> EOS` (a piece's last
      # span is noise), so it is fed to the decoder but not scored.
      targets.append(sentinels[len(noise)])
      slots.append(_slot(scored=False))
    rows.append({"inputs": inputs + tail, "targets": targets + tail,
                 "slots": slots + [_slot()] * len(tail)})
  return rows


def _denoising(subject, rng, tokens, labels, kind_ratios):
  del kind_ratios
  cfg = subject.config.data.denoising
  eos = subject.special.eos
  tail = [] if eos is None else [eos]
  rate = cfg.infill_ratio if cfg.infill_ratio > 0 else 0.3
  rows = []
  for noise in _span_rows(rng, tokens, cfg.poisson_lambda, rate, True):
    span_length = np.zeros(len(tokens), np.int32)
    inputs, cursor = [], 0
    for start, end in noise:   # text infilling: each span becomes one [MASK]
      inputs += list(tokens[cursor:start]) + [subject.special.mask]
      span_length[start:end] = end - start
      cursor = end
    inputs += list(tokens[cursor:])
    slots = [_slot(labels["pos"][i], labels["frequency"][i], 0, int(span_length[i]),
                   bool(span_length[i])) for i in range(len(tokens))]
    rows.append({"inputs": inputs + tail, "targets": list(tokens) + tail,
                 "slots": slots + [_slot()] * len(tail)})
  return rows


def _assemble(subject: Subject, rows: list[dict]) -> Predictions:
  """Pads rows into the objective's batch format and the slot label arrays."""
  limit = subject.max_length
  length = representations.padded_length(max(len(r["inputs"]) for r in rows), limit)
  slots = representations.padded_length(max(len(r["targets"]) for r in rows), limit)
  inputs = _pad([r["inputs"] for r in rows], length)
  segments = _pad([[1] * len(r["inputs"]) for r in rows], length)
  present = _pad([[1] * len(r["targets"]) for r in rows], slots)
  weights = _pad([[float(s["scored"]) for s in r["slots"]] for r in rows], slots, 0.0, np.float32)
  targets = _pad([r["targets"] for r in rows], slots)
  label = {k: _pad([[s[k] for s in r["slots"]] for r in rows], slots, fill)
           for k, fill in (("pos", -1), ("frequency", -1), ("kind", 0), ("span_length", 0))}
  counts = _pad([[s["counts"] for s in r["slots"]] for r in rows], slots, False, bool)
  if subject.name == "mlm":
    batch = {"input_tokens": inputs, "token_type_ids": np.zeros_like(inputs),
             "segment_ids": segments, "positions": _positions(segments),
             "masked_positions": _pad([r["positions"] for r in rows], slots),
             "masked_targets": targets, "masked_weights": weights,
             "masked_kinds": label["kind"],
             "sentence_positions": np.zeros((len(rows), 1), np.int32),
             "sentence_labels": np.zeros((len(rows), 1), np.int32),
             "sentence_weights": np.zeros((len(rows), 1), np.float32)}
  else:
    decoder_inputs = _pad([([0] + r["targets"][:-1]) if subject.name != "causal_lm"
                           else r["inputs"] for r in rows], slots)
    decoder_segments = present
    batch = {"decoder_input_tokens": decoder_inputs, "decoder_target_tokens": targets,
             "decoder_loss_weights": weights, "decoder_segment_ids": decoder_segments,
             "decoder_positions": _positions(decoder_segments)}
    if subject.name != "causal_lm":
      batch.update(encoder_input_tokens=inputs, encoder_segment_ids=segments,
                   encoder_positions=_positions(segments))
  return Predictions(batch, weights, label["pos"], label["frequency"], label["kind"],
                     label["span_length"], counts)


def _positions(segment_ids: np.ndarray) -> np.ndarray:
  return (np.cumsum(segment_ids, axis=1) - 1).clip(0).astype(np.int32) * segment_ids


def score(subject: Subject, params, preds: Predictions
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(loss, correct, predicted token) [R, T] for every slot of `preds` under `params` (batched,
  one compile)."""
  keys = sorted(preds.batch)

  def run(*arrays):
    return np.stack(subject.token_scores(params, dict(zip(keys, arrays))))
  out = representations.batched(run, *[preds.batch[k] for k in keys], axis=1)
  return out[0], out[1], out[2].astype(np.int32)
