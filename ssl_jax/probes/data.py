"""Probe data: tagged sentences, tokenized word by word so every token knows its word.

    sentences = data.corpus_sentences(num_sentences=256)         # corpus grammar, fixed seed
    sentences = data.conllu_sentences(["en_ewt-ud-dev.conllu"])   # or real text with UPOS tags
    text = data.tokenize(sentences, vocab)                        # -> ProbeText
    text = data.fit(text, subject.sentence_tokens)                # whole words within the model

Probe sentences are fixed by a seed, never by the training data stream: the default corpus's
grammar drawn with `seed` (documents the training corpus, seeded with config.data.corpus.seed,
does not hold) or the sentences of CoNLL-U files in file order. Each token belongs to exactly one
word and carries that word's part of speech and frequency bucket. WordPiece splits at spaces and
punctuation, so each word is tokenized on its own. Other vocabularies (SentencePiece, bytes) do
not: they tokenize the sentence's text as training wrote it (`corpora.sentence_text`, punctuation
attached; a CoNLL-U sentence's own `# text`, contractions and all), and each token goes to the
word its text starts in (a space before a word is that word's; a piece spanning a word and its
punctuation is the word's, and the punctuation, left without tokens, is dropped). Tokenized word
by word, a SentencePiece model read a lone `▁` before every punctuation mark, and a byte model
"ca n't" for "can't": text training never shows them.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np
from absl import logging

from ssl_jax.data import corpora
from ssl_jax.data import vocabularies

# Universal Dependencies v2 UPOS tags; the default corpus uses 14 of them.
UPOS_TAGS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON",
             "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X")
# Word-frequency buckets by rank (0 = most frequent): [0, 50), [50, 200), [200, inf).
FREQUENCY_EDGES = (50, 200)
PROBE_SEED = 12345  # default-corpus documents for probes; training uses config.data.corpus.seed


Sentence = Sequence[tuple[str, str]]  # [(word, upos), ...]


class WrittenSentence(list):
  """A Sentence (its (word, UPOS) pairs) with the text it was written as, e.g. CoNLL-U's `# text`
  ("I can't go (today)." for the words I ca n't go ( today ) .). Other sentences' text is
  `corpora.sentence_text`'s, as the default corpus writes them."""

  def __init__(self, words: Sentence, text: str):
    super().__init__(words)
    self.text = text


def frequency_bucket_names(edges: Sequence[int] = FREQUENCY_EDGES) -> tuple[str, ...]:
  """('rank_0_50', 'rank_50_200', 'rank_200+') for the default edges."""
  bounds = (0, *edges)
  return tuple(f"rank_{lo}_{hi}" for lo, hi in zip(bounds, edges)) + (f"rank_{edges[-1]}+",)


@dataclasses.dataclass(frozen=True)
class ProbeText:
  """Tokenized probe sentences (one row of arrays per sentence, one entry per token).

  tokens[s] int32 token ids of sentence s; word_index[s] the position of each token's word in
  the sentence; word_type[s] an id per distinct (lower-cased) word, into `types`; pos[s] an index
  into UPOS_TAGS; frequency[s] a frequency bucket, into `frequency_names`.
  """
  tokens: tuple[np.ndarray, ...]
  word_index: tuple[np.ndarray, ...]
  word_type: tuple[np.ndarray, ...]
  pos: tuple[np.ndarray, ...]
  frequency: tuple[np.ndarray, ...]
  types: tuple[str, ...]
  frequency_names: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.tokens)

  @property
  def num_tokens(self) -> int:
    return sum(len(t) for t in self.tokens)


def corpus_sentences(num_sentences: int = 256, seed: int = PROBE_SEED) -> list[list[tuple]]:
  """The first `num_sentences` sentences of default-corpus documents 0, 1, ... drawn with `seed`."""
  if num_sentences < 1:
    raise ValueError(f"--probe_sentences={num_sentences}: probes need at least one sentence.")
  sentences, index = [], 0
  while len(sentences) < num_sentences:
    sentences += corpora.generate_document(index, seed)
    index += 1
  return [list(s) for s in sentences[:num_sentences]]


def conllu_sentences(paths: Sequence[str], num_sentences: int | None = None) -> list[list[tuple]]:
  """(word, UPOS) sentences of CoNLL-U files with their text (`WrittenSentence`), in file order
  (the first `num_sentences`)."""
  from ssl_jax.finetune import formats  # pylint: disable=g-import-not-at-top
  if num_sentences is not None and num_sentences < 1:
    raise ValueError(f"--probe_sentences={num_sentences}: probes need at least one sentence.")
  sentences = []
  for path in paths:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"--conllu names {path!r}, which does not exist; pass UD .conllu "
                              "files (e.g. en_ewt-ud-dev.conllu).")
    try:
      tagged_sentences = formats.read_conllu(path)
    except ValueError as e:
      if "no UPOS tags" not in str(e):
        raise
      raise ValueError(f"--conllu {path!r} has no UPOS tags (column 4 is all '_'); the probes "
                       "need a treebank annotated with UPOS.") from None
    for tagged in tagged_sentences:
      unknown = sorted(set(tagged.tags) - set(UPOS_TAGS))
      if unknown:
        raise ValueError(
            f"CoNLL-U file {path}, sentence {tagged.id}: tags {unknown} are not UPOS tags "
            f"({', '.join(UPOS_TAGS)}); pass files with a UPOS column (column 4).")
      sentences.append(WrittenSentence(zip(tagged.tokens, tagged.tags), tagged.text))
  if not sentences:
    raise ValueError(f"CoNLL-U files {list(paths)} hold no sentences; pass UD .conllu files.")
  if num_sentences and num_sentences > len(sentences):
    logging.warning("%d probe sentences asked for; the CoNLL-U files %s hold %d: probing those.",
                    num_sentences, list(paths), len(sentences))
  return sentences[:num_sentences] if num_sentences else sentences


def frequency_ranks(sentences: Sequence[Sentence]) -> dict[str, int]:
  """word (lower-cased) -> frequency rank: the default corpus's `lexicon()` ranks when every
  word is in it, else ranks by count within `sentences` (ties in order of first appearance)."""
  lexicon = corpora.lexicon()
  words = [w.lower() for s in sentences for w, _ in s]
  if all(w in lexicon for w in words):
    return {w: lexicon[w][1] for w in words}
  counts: dict[str, int] = {}
  for w in words:
    counts[w] = counts.get(w, 0) + 1
  order = sorted(counts, key=lambda w: -counts[w])  # stable: ties keep first-appearance order
  return {w: rank for rank, w in enumerate(order)}


def _word_pieces(sentences: Sequence[Sentence], vocab) -> list[list[list[int]]]:
  """The token ids of each word of each sentence (see the module doc)."""
  if isinstance(vocab, vocabularies.WordPieceVocabulary):   # splits at spaces and punctuation
    words = sorted({word for sentence in sentences for word, _ in sentence})
    pieces = dict(zip(words, vocabularies.encode_batch(vocab, words)))
    return [[pieces[word] for word, _ in sentence] for sentence in sentences]
  texts = [getattr(sentence, "text", "") or corpora.sentence_text(sentence)
           for sentence in sentences]
  result = []
  for sentence, text, ids in zip(sentences, texts, vocabularies.encode_batch(vocab, texts)):
    owner, cursor = np.full(len(text) + 1, len(sentence) - 1), 0   # character -> word
    aligned = True
    for i, (word, _) in enumerate(sentence):
      start = text.find(word, cursor)
      if start < 0 or text[cursor:start].strip():   # not the text's next word
        aligned = False
        break
      owner[cursor:start + len(word)] = i   # a word owns the spaces before it
      cursor = start + len(word)
    prefixes = [vocab.decode(ids[:k]) for k in range(len(ids))]
    if not aligned or vocab.decode(ids) != text or not all(text.startswith(p) for p in prefixes):
      # The words are not the text's (a multiword token "du" of the words "de le"), or the
      # vocabulary normalises the text: tokenize word by word instead.
      spaced = [w if i == 0 or w in corpora.PUNCTUATION else " " + w
                for i, (w, _) in enumerate(sentence)]
      result.append(vocabularies.encode_batch(vocab, spaced))
      continue
    words = [[] for _ in sentence]
    for token, prefix in zip(ids, prefixes):
      words[owner[len(prefix)]].append(token)
    result.append(words)
  return result


def tokenize(sentences: Sequence[Sentence], vocab, edges: Sequence[int] = FREQUENCY_EDGES,
             ranks: dict[str, int] | None = None) -> ProbeText:
  """Tokenizes each word with `vocab` (a seqio.Vocabulary); words with no tokens are dropped.

  `ranks` (word -> frequency rank) defaults to `frequency_ranks(sentences)`.
  """
  ranks = frequency_ranks(sentences) if ranks is None else ranks
  word_ids = _word_pieces(sentences, vocab)
  types: dict[str, int] = {}
  columns = {k: [] for k in ("tokens", "word_index", "word_type", "pos", "frequency")}
  for sentence, sentence_ids in zip(sentences, word_ids):
    row = {k: [] for k in columns}
    for position, ((word, tag), ids) in enumerate(zip(sentence, sentence_ids)):
      lower = word.lower()
      bucket = int(np.searchsorted(edges, ranks.get(lower, edges[-1]), side="right"))
      row["tokens"] += ids
      row["word_index"] += [position] * len(ids)
      row["word_type"] += [types.setdefault(lower, len(types))] * len(ids)
      row["pos"] += [UPOS_TAGS.index(tag)] * len(ids)
      row["frequency"] += [bucket] * len(ids)
    if row["tokens"]:
      for k in columns:
        columns[k].append(np.asarray(row[k], np.int32))
  if not columns["tokens"]:
    raise ValueError("the probe sentences tokenize to nothing; check the vocabulary "
                     "(config.data.vocab) and the sentences.")
  return ProbeText(**{k: tuple(v) for k, v in columns.items()}, types=tuple(types),
                   frequency_names=frequency_bucket_names(edges))


def fit(text: ProbeText, max_tokens: int) -> ProbeText:
  """`text` with each sentence cut after its last whole word within `max_tokens` tokens (a model's
  positions, less its framing tokens), with a warning that says what was cut. A word cut in two
  would keep its part of speech and word type on its first pieces alone. The last result is kept
  (each probe fits the shared text, and word representations are shared by text identity)."""
  if _last_fit and _last_fit[0] is text and _last_fit[1] == max_tokens:
    return _last_fit[2]
  keep = []
  for index in text.word_index:
    if len(index) <= max_tokens:
      keep.append(len(index))
    else:   # the first token of the word the limit cuts (or the limit, between two words)
      keep.append(int(np.flatnonzero(index[:max_tokens + 1] == index[max_tokens])[0]))
  cut = [s for s, k in enumerate(keep) if k < len(text.tokens[s])]
  fitted = text if not cut else _cut(text, keep, cut, max_tokens)
  _last_fit[:] = [text, max_tokens, fitted]
  return fitted


_last_fit: list = []   # (text, max_tokens, fitted), held so the ids cannot be reused


def _cut(text: ProbeText, keep: list[int], cut: list[int], max_tokens: int) -> ProbeText:
  words = lambda s, stop=None: len(np.unique(text.word_index[s][:stop]))  # noqa: E731
  dropped = sum(words(s) - words(s, keep[s]) for s in cut)
  logging.warning(
      "%d of %d probe sentences are longer than the model's %d token positions (the run's "
      "config.data.sequence_length, less the framing tokens): their last %d of %d words are left "
      "out of every probe. Pass shorter sentences, or probe a run trained on longer sequences.",
      len(cut), len(text), max_tokens, dropped, sum(words(s) for s in range(len(text))))
  columns = ("tokens", "word_index", "word_type", "pos", "frequency")
  return dataclasses.replace(text, **{c: tuple(row[:k] for row, k in zip(getattr(text, c), keep))
                                      for c in columns})


def words_of(text: ProbeText, sentence: int) -> np.ndarray:
  """Indices of the first token of each word of `sentence` (word order)."""
  index = text.word_index[sentence]
  return np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
