"""Text -> BERT input rows: `[CLS] A [SEP] (B [SEP])` with token types, padded to a fixed length.

    vocab = vocabularies.get_vocabulary(config.data.vocab)
    ids = vocabularies.encode_batch(vocab, ["a sentence", "another"])   # one id list per string
    row = pair_row(ids_a, ids_b, length=128, specials=specials(vocab))
"""
from typing import NamedTuple, Optional, Sequence

import numpy as np

from ssl_jax.data import vocabularies


class Specials(NamedTuple):
  cls: int
  sep: int
  pad: int


def specials(vocab) -> Specials:
  """[CLS], [SEP] and [PAD] of `vocab`; raises naming config.data.vocab if it lacks them."""
  ids = vocabularies.require(vocab, ("cls", "sep"), "fine-tuning")
  return Specials(ids.cls, ids.sep, ids.pad)


def truncate_pair(a: list, b: Optional[list], budget: int) -> tuple[list, Optional[list]]:
  """Cuts the ends of `a` and `b` to fit `budget` as Hugging Face tokenizers' 'longest_first'
  does, so a long premise does not crowd out the hypothesis: the shorter text stays whole if the
  longer then still gets as many tokens; else each gets half the budget, the longer one (b on a
  tie) the odd token."""
  if b is None:
    return list(a[:budget]), None
  if len(a) + len(b) <= budget:
    return list(a), list(b)
  swap = len(a) > len(b)
  n_short, n_long = (len(b), len(a)) if swap else (len(a), len(b))
  n_long = max(n_short, budget - n_short) if n_short <= budget else n_short
  if n_short + n_long > budget:
    n_short = budget // 2
    n_long = n_short + budget % 2
  n_a, n_b = (n_long, n_short) if swap else (n_short, n_long)
  return list(a[:n_a]), list(b[:n_b])


def pair_row(a: Sequence[int], b: Optional[Sequence[int]], length: int,
             special: Specials) -> dict[str, np.ndarray]:
  """One padded row: input_tokens, token_type_ids (1 on B and its [SEP]), segment_ids (1 real,
  0 padding), each int32 [length]. Truncates (longest first) to fit."""
  budget = length - (3 if b is not None else 2)
  if budget < 1:
    raise ValueError(f"config.data.sequence_length={length} leaves no room for text after "
                     "[CLS] and [SEP]; use a longer sequence length.")
  a, b = truncate_pair(a, b, budget)
  tokens = [special.cls] + a + [special.sep]
  types = [0] * len(tokens)
  if b is not None:
    tokens += b + [special.sep]
    types += [1] * (len(b) + 1)
  return pad_row(tokens, types, length, special.pad)


def pad_row(tokens: Sequence[int], types: Sequence[int], length: int,
            pad: int) -> dict[str, np.ndarray]:
  n = len(tokens)
  row = {"input_tokens": np.full(length, pad, np.int32), "token_type_ids": np.zeros(length, np.int32),
         "segment_ids": np.zeros(length, np.int32)}
  row["input_tokens"][:n] = tokens
  row["token_type_ids"][:n] = types
  row["segment_ids"][:n] = 1
  return row


def stack(rows: Sequence[dict]) -> dict[str, np.ndarray]:
  """A list of same-keyed rows -> {name: array [N, ...]}."""
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
