"""Vocabularies as `seqio.Vocabulary`: byte, SentencePiece, WordPiece (BERT vocab.txt) and the default one.

`get_vocabulary(config.data.vocab)` is the one entry point; `special_ids(vocab)` names the ids objectives use;
`encode_batch(vocab, texts)` tokenizes many strings at once.

Conventions (the same for every kind, so objectives never branch on the vocabulary):
- PAD is id 0 (seqio's rule).
- T5 sentinels follow seqio/T5: `extra_ids` ids appended after the base vocabulary, sentinel i is
  `vocab_size - 1 - i` (`<extra_id_0>` is the top id). The default vocabulary file therefore holds no
  sentinels; `config.data.vocab.extra_ids` adds them. Every kind decodes sentinel i as `<extra_id_i>`,
  as seqio's SentencePiece vocabulary does; the text `<extra_id_i>` encodes to sentinel i (SentencePiece:
  at a word start), except with the byte vocabulary, which encodes all text byte for byte (as seqio's).
- WordPiece vocabularies have no end-of-sequence token; their `eos_id` is [SEP] (BERT's end-of-segment
  marker), so GPT/T5/BART examples end with [SEP]. A side effect: `vocab.decode` stops after the first
  [SEP], as it does after EOS for every seqio vocabulary.
- BART's `<mask>` is the [MASK] id (a SentencePiece model needs a `[MASK]` or `<mask>` piece).
"""
import functools
import hashlib
import io
import itertools
import json
import os
import re
import string
import tempfile
from typing import NamedTuple, Optional, Sequence

import seqio
import tensorflow as tf
import tensorflow_text as tf_text
from absl import logging
from google.protobuf import message as protobuf_message

KINDS = ("default", "wordpiece", "sentencepiece", "byte")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # the default vocabulary's ids 0..4
_PROTECTED_TOKENS = SPECIAL_TOKENS[1:]   # kept whole when they occur in text (see _normalize_tf)
_SENTENCEPIECE_ALIASES = {"cls": ("[CLS]", "<cls>"), "sep": ("[SEP]", "<sep>"), "mask": ("[MASK]", "<mask>")}
_MAX_CHARS_PER_WORD = 100  # BERT (and Hugging Face) map longer words to [UNK]

# BertNormalizer (Hugging Face `tokenizers`) step by step, as RE2 patterns.
_CONTROL = r"[\x00\x{FFFD}\p{Cc}\p{Cf}\p{Co}\p{Cs}]"  # removed (tab/newline/CR are made spaces first)
_WHITESPACE = r"[\t\n\r\p{Zs}\x{2028}\x{2029}]"
_CJK = (r"([\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}\x{2B740}-\x{2B81F}"
        r"\x{2B820}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}])")
# BERT splits words at ASCII punctuation (including $+<=>^`|~) and at Unicode punctuation (P*).
_PUNCTUATION = r"([!-/:-@\[-`{-~\p{P}])"
_PROTECT = "\ue000"  # private use: the text cannot contain it once control/private characters are removed


class SpecialIds(NamedTuple):
  """Ids objectives rely on; None where the vocabulary has no such token."""
  pad: int
  eos: Optional[int]
  unk: Optional[int]
  cls: Optional[int]
  sep: Optional[int]
  mask: Optional[int]
  sentinels: tuple  # sentinel i at position i (seqio/T5: vocab_size - 1 - i); () without extra_ids


class _NamedSentinels(seqio.Vocabulary):
  """A vocabulary whose `decode` and `decode_tf` give sentinel i as `<extra_id_i>`, as seqio's
  SentencePieceVocabulary does (seqio's others give UNK or nothing).

  A subclass sets `_pieces`: the text of every id, the sentinels' names (`_sentinel_names`) last.
  """
  _pieces: tuple

  @property
  def _sentinel_names(self) -> tuple:
    """`<extra_id_i>` of each sentinel, in id order (sentinel i is id vocab_size - 1 - i)."""
    return tuple(f"<extra_id_{i}>" for i in reversed(range(self.extra_ids)))

  @property
  def _base_vocab_size(self) -> int:
    # The sentinels counted in, as seqio's SentencePieceVocabulary counts them: seqio's `decode` and
    # `decode_tf` make every id from `_base_vocab_size` on UNK before `_decode` could name it.
    return len(self._pieces)

  @property
  def vocab_size(self) -> int:
    return self._base_vocab_size

  @functools.cached_property
  def _pieces_tf(self):
    with tf.init_scope():
      return tf.constant(self._pieces)

  def _piece_strings_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int ids [...] -> the text of each id [...] (UNK's for an id outside the vocabulary)."""
    in_range = tf.logical_and(ids >= 0, ids < len(self._pieces))
    return tf.gather(self._pieces_tf, tf.where(in_range, ids, self.unk_id))


def _wordpiece_tokens(path: str) -> list:
  """The tokens of a BERT `vocab.txt` (one per line, line number = id), or of the WordPiece model
  in a Hugging Face `tokenizer.json` (what transformers 5 saves instead of vocab.txt), id order."""
  if not path.endswith(".json"):
    with tf.io.gfile.GFile(path, "r") as f:
      return [line.rstrip("\r\n") for line in f]
  with tf.io.gfile.GFile(path, "r") as f:
    model = json.load(f).get("model") or {}
  if model.get("type") != "WordPiece":
    raise ValueError(f"{path} holds a {model.get('type')!r} tokenizer, not WordPiece; a .json "
                     "config.data.vocab.path must be the tokenizer.json of a BERT tokenizer.")
  ids = model["vocab"]
  tokens = sorted(ids, key=ids.get)
  if [ids[t] for t in tokens] != list(range(len(tokens))):
    raise ValueError(f"the WordPiece ids of {path} are not 0..{len(tokens) - 1}, one per token.")
  return tokens


class WordPieceVocabulary(_NamedSentinels):
  """A BERT WordPiece vocabulary (`vocab.txt`: one token per line, line number = id; or a Hugging
  Face `tokenizer.json` with a WordPiece model).

  Tokenization equals Hugging Face `BertTokenizerFast(vocab.txt, do_lower_case=lower_case)` without special
  tokens: BertNormalizer (drop control characters, spaces for whitespace, spaces around CJK ideographs,
  and with `lower_case` NFD + strip accents + lower-case), split at whitespace and punctuation, greedy
  longest-match-first WordPiece, words over 100 characters -> [UNK]; literal "[CLS]" etc. in the text are
  the special token (as in HF), and so is a literal "<extra_id_i>" of one of the `extra_ids` sentinels
  (as in seqio's SentencePiece and HF's T5 tokenizers). Known difference: unassigned code points are kept
  (HF drops them).

  Ids: [PAD] must be id 0; `unk_id` = [UNK]; `eos_id` = [SEP] (BERT has no EOS; see the module doc).
  """

  def __init__(self, vocab_path: str, lower_case: bool = True, extra_ids: int = 0):
    tokens = _wordpiece_tokens(vocab_path)
    while tokens and not tokens[-1]:
      tokens.pop()
    if not tokens or tokens[0] != "[PAD]" or "[UNK]" not in tokens:
      raise ValueError(
          f"WordPiece vocabulary {vocab_path} must have [PAD] as its first line (id 0) and contain [UNK]; "
          "set config.data.vocab.path to a BERT vocab.txt.")
    super().__init__(extra_ids=extra_ids)
    named = sorted(set(tokens) & set(self._sentinel_names))
    if named:
      raise ValueError(
          f"WordPiece vocabulary {vocab_path} holds {named[0]!r}, the name of a sentinel that "
          f"config.data.vocab.extra_ids={extra_ids} appends after its tokens; set extra_ids=0 or use "
          "a vocab.txt without sentinel names.")
    self._path = vocab_path
    self._lower_case = lower_case
    self._tokens = tuple(tokens)
    self._pieces = self._tokens + self._sentinel_names
    self._ids = {t: i for i, t in enumerate(tokens)}
    self._fingerprint = hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()[:16]

  @property
  def tokens(self) -> tuple:
    """The base vocabulary, id order (without the extra ids)."""
    return self._tokens

  @property
  def lower_case(self) -> bool:
    return self._lower_case

  def token_id(self, token: str) -> Optional[int]:
    """The id of `token` (an exact vocabulary entry such as '[MASK]' or '##ing'), or None."""
    return self._ids.get(token)

  @property
  def eos_id(self) -> Optional[int]:
    return self._ids.get("[SEP]")

  @property
  def unk_id(self) -> int:
    return self._ids["[UNK]"]

  @property
  def bos_id(self) -> Optional[int]:
    return None

  @functools.cached_property
  def _wordpiece(self):
    # FastWordpieceTokenizer holds its model as a constant flatbuffer, not a lookup-table resource, so
    # tf.data iterators that tokenize with it can be checkpointed. Built under init_scope so a first use
    # inside a tf.data map still creates it eagerly, once.
    with tf.init_scope():
      return tf_text.FastWordpieceTokenizer(
          vocab=list(self._pieces), suffix_indicator="##", max_bytes_per_word=4 * _MAX_CHARS_PER_WORD,
          token_out_type=tf.int32, unknown_token="[UNK]", no_pretokenization=True)

  def _normalize_tf(self, s: tf.Tensor) -> tf.Tensor:
    s = tf.strings.regex_replace(s, r"[\t\n\r]", " ")
    s = tf.strings.regex_replace(s, _CONTROL, "")
    # Literal special tokens stay whole (as in HF): wrapped in a private-use character, which the text can
    # no longer contain, and restored after splitting. Not [PAD]: id 0 is padding to the packer and the
    # losses, so a literal one would cut its document (HF masks padding by attention_mask instead); it
    # splits as punctuation and a word, as in the original BERT tokenizer.
    for i, token in enumerate(_PROTECTED_TOKENS):
      s = tf.strings.regex_replace(s, re.escape(token), f" {_PROTECT}{i}{_PROTECT} ")
    if self.extra_ids:   # a sentinel's name too: sentinel i, as seqio's SentencePiece vocabularies read it
      numbers = "|".join(map(str, range(self.extra_ids)))
      s = tf.strings.regex_replace(s, f"<extra_id_({numbers})>", f" {_PROTECT}x\\1{_PROTECT} ")
    s = tf.strings.regex_replace(s, _WHITESPACE, " ")
    s = tf.strings.regex_replace(s, _CJK, r" \1 ")
    if self._lower_case:
      s = tf_text.normalize_utf8(s, "NFD")
      s = tf.strings.regex_replace(s, r"\p{Mn}", "")
      # HF lower-cases character by character; tf.strings.lower would give a word-final sigma its final form.
      s = tf.strings.lower(tf.strings.regex_replace(s, "\u03a3", "\u03c3"), encoding="utf-8")
    return tf.strings.regex_replace(s, _PUNCTUATION, r" \1 ")

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """Scalar string -> int32 [num_tokens]; a string vector -> ragged [batch, num_tokens]."""
    words = tf.strings.split(self._normalize_tf(s))
    for i, token in enumerate(_PROTECTED_TOKENS):
      words = tf.strings.regex_replace(words, f"^{_PROTECT}{i}{_PROTECT}$", token)
    if self.extra_ids:   # the tokenizer's vocabulary holds the sentinels' names after the tokens
      words = tf.strings.regex_replace(words, f"^{_PROTECT}x(\\d+){_PROTECT}$", "<extra_id_\\1>")
    too_long = tf.strings.length(words, unit="UTF8_CHAR") > _MAX_CHARS_PER_WORD
    words = tf.ragged.map_flat_values(lambda w, t: tf.where(t, "[UNK]", w), words, too_long)
    return self._wordpiece.tokenize(words).merge_dims(-2, -1)

  @functools.cached_property
  def _encode_one(self):
    # One string through a graph traced once: ~1 ms a call, where the eager ops take ~8 ms.
    return tf.function(self._encode_tf, input_signature=[tf.TensorSpec([], tf.string)])

  def _encode(self, s: str) -> list:
    return self._encode_one(tf.constant(s)).numpy().tolist()

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int ids [..., L] -> strings [...]: pieces joined, '##' continuations glued, [PAD] dropped."""
    text = tf.strings.reduce_join(self._piece_strings_tf(ids), axis=-1, separator=" ")
    text = tf.strings.regex_replace(text, r"\[PAD\]", "")
    text = tf.strings.regex_replace(text, r" ?##", "")
    return tf.strings.strip(tf.strings.regex_replace(text, " +", " "))

  def _decode(self, ids) -> str:
    pieces = [self._pieces[i] if 0 < i < len(self._pieces) else ("" if i == 0 else "[UNK]")
              for i in map(int, ids)]
    return " ".join(p for p in pieces if p).replace(" ##", "")

  def __eq__(self, other):
    # seqio.Mixture requires its tasks' vocabularies to compare equal.
    return (isinstance(other, WordPieceVocabulary) and self._fingerprint == other._fingerprint
            and self._lower_case == other._lower_case and self.extra_ids == other.extra_ids)

  def __hash__(self):
    return hash((self._fingerprint, self._lower_case, self.extra_ids))

  def __repr__(self):
    return f"WordPieceVocabulary({self._path!r}, lower_case={self._lower_case}, extra_ids={self.extra_ids})"


class ByteVocabulary(_NamedSentinels, seqio.ByteVocabulary):
  """seqio's ByteVocabulary (ByT5's: UTF-8 byte b is id b + 3, after PAD, EOS and UNK), but its
  sentinels decode by name. Text encodes byte for byte, "<extra_id_0>" too, as in seqio."""

  @functools.cached_property
  def _pieces(self) -> tuple:
    return ((b"",) * self._num_special_tokens + tuple(bytes([b]) for b in range(self._byte_size))
            + tuple(name.encode() for name in self._sentinel_names))

  def _decode(self, ids) -> str:
    text = b"".join(self._pieces[i] for i in map(int, ids) if 0 <= i < len(self._pieces))
    return text.decode("utf-8", errors="ignore")

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int ids [..., L] -> strings [...]: the bytes and sentinel names joined, invalid UTF-8 dropped."""
    text = tf.strings.reduce_join(self._piece_strings_tf(ids), axis=-1)
    return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="ignore")


def default_vocabulary_tokens() -> list:
  """The default vocabulary: specials, every corpus word (frequency order), then single characters.

  [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4; every word the corpus grammar can emit is one token; ASCII
  letters and digits (as words and '##' continuations) and ASCII punctuation follow, so any ASCII text
  (`text_files`) tokenizes without [UNK], if character by character outside the corpus lexicon.
  """
  from ssl_jax.data import corpora  # pylint: disable=g-import-not-at-top
  lexicon = corpora.lexicon()
  tokens = list(SPECIAL_TOKENS) + sorted(lexicon, key=lambda w: lexicon[w][1])
  chars = string.ascii_lowercase + string.digits
  for extra in list(chars + string.punctuation) + ["##" + c for c in chars]:
    if extra not in lexicon:
      tokens.append(extra)
  return tokens


def _cache_dir() -> str:
  return os.environ.get("SSL_JAX_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "ssl_jax_cache")


def default_vocabulary_path() -> str:
  """Writes the default vocab.txt (once) to a file named by its content hash; returns the path.

  The directory is $SSL_JAX_CACHE_DIR or <tmp>/ssl_jax_cache. Writing is atomic (rename), so many processes
  starting together are safe.
  """
  content = "\n".join(default_vocabulary_tokens()) + "\n"
  digest = hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]
  path = os.path.join(_cache_dir(), f"default_wordpiece_{digest}.txt")
  if not os.path.exists(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".vocab_")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(content)
    os.replace(tmp, path)
  return path


def _require_file(path, kind, fix):
  if not path:
    raise ValueError(f"config.data.vocab.kind={kind!r} needs config.data.vocab.path; {fix}")
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"config.data.vocab.path={path!r} (kind={kind!r}) does not exist; {fix}")


def _wrong_kind(path, kind, error) -> ValueError:
  other = "sentencepiece (a .model)" if kind == "wordpiece" else (
      "wordpiece (a BERT vocab.txt or tokenizer.json)")
  what = "a BERT vocab.txt or tokenizer.json" if kind == "wordpiece" else "a SentencePiece model"
  return ValueError(
      f"config.data.vocab.path={path!r} is not {what}, which config.data.vocab.kind={kind!r} reads "
      f"({type(error).__name__}: {error}); for another kind of file set "
      f"--config.data.vocab.kind={other}.")


def file_stamp(path: str) -> tuple:
  """(size, modification time in ns) of a file: a cache keyed on it re-reads a file rewritten in
  place (a vocabulary retrained at the same path, an edited text file)."""
  stat = tf.io.gfile.stat(path)
  return stat.length, stat.mtime_nsec


_SENTENCEPIECE_STAMPS = {}   # path -> the stamp of the model seqio's loader last read there


def _load_sentencepiece(path, extra_ids, stamp):
  # seqio caches a loaded model by file name for the life of the process; a model rewritten at
  # the same path (retrained after removing the old one) would keep its old pieces.
  if _SENTENCEPIECE_STAMPS.setdefault(path, stamp) != stamp:
    seqio.vocabularies._load_model_internal.cache_clear()   # pylint: disable=protected-access
    _SENTENCEPIECE_STAMPS[path] = stamp
  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


@functools.lru_cache(maxsize=None)
def _vocabulary(kind, path, extra_ids, lower_case, stamp):
  if kind == "default":
    return WordPieceVocabulary(default_vocabulary_path(), lower_case=True, extra_ids=extra_ids)
  if kind == "wordpiece":
    _require_file(path, kind, "point it at a BERT vocab.txt (one token per line) or a BERT "
                  "tokenizer.json.")
    try:
      vocab = WordPieceVocabulary(path, lower_case=lower_case, extra_ids=extra_ids)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise _wrong_kind(path, kind, e) from e
    cased = [t for t in vocab.tokens if t != t.lower() and not (t[:1] == "[" and t[-1:] == "]")]
    if lower_case and len(cased) > 0.05 * len(vocab.tokens):
      raise ValueError(
          f"config.data.vocab.path={path!r} is a cased vocabulary ({len(cased)} of "
          f"{len(vocab.tokens)} pieces have capitals, e.g. {', '.join(map(repr, cased[:3]))}), and "
          "config.data.vocab.lower_case=True lower-cases the text and strips its accents first: "
          "those pieces would never occur and words such as 'Paris' or 'café' would become [UNK]. "
          "Set --config.data.vocab.lower_case=False (as bert-base-cased's tokenizer does).")
    return vocab
  if kind == "sentencepiece":
    _require_file(path, kind, "train one with `ssl-jax vocab train --config=... --vocab_size=N "
                  "--out=F.model` and set config.data.vocab.path=F.model.")
    vocab = _load_sentencepiece(path, extra_ids, stamp)
    try:
      vocab.tokenizer  # pylint: disable=pointless-statement  (loads the model)
    except (protobuf_message.Error, RuntimeError) as e:
      raise _wrong_kind(path, kind, e) from e
    if vocab.tokenizer.pad_id() != 0:
      raise ValueError(
          f"config.data.vocab.path={path!r}: id 0 of this SentencePiece model is "
          f"{vocab.tokenizer.id_to_piece(0)!r}, not padding; ssl_jax pads with id 0 (as seqio and "
          "T5), so each such token would be dropped as padding. Use a model with T5's ids (train "
          "it with --pad_id=0 --eos_id=1 --unk_id=2 --bos_id=-1, or with `ssl-jax vocab train`).")
    return vocab
  if kind == "byte":
    return ByteVocabulary(extra_ids=extra_ids)
  raise ValueError(
      f"config.data.vocab.kind={kind!r} is not a vocabulary kind; use one of {', '.join(KINDS)}.")


def get_vocabulary(vocab_cfg) -> seqio.Vocabulary:
  """The vocabulary `config.data.vocab` describes (kind, path, extra_ids, optional lower_case=True).

  Returns the same object for equal settings and an unchanged file (seqio mixtures compare
  vocabularies); a file rewritten since is read again.
  Raises ValueError for an unknown kind, FileNotFoundError for a missing file (naming the setting and fix).
  """
  get = vocab_cfg.get if hasattr(vocab_cfg, "get") else lambda k, d=None: getattr(vocab_cfg, k, d)
  kind, path = get("kind", "default"), get("path", "") or ""
  stamp = None   # a missing file: _vocabulary names the setting
  if kind in ("wordpiece", "sentencepiece") and path:
    try:
      stamp = file_stamp(path)
    except tf.errors.NotFoundError:
      pass
  vocab = _vocabulary(kind, path, int(get("extra_ids", 0) or 0), bool(get("lower_case", True)), stamp)
  recorded = get("fingerprint")
  if recorded and recorded != (now := fingerprint(vocab)):   # hashed only for a recorded run
    raise ValueError(
        f"config.data.vocab.path={get('path', '')!r} has other pieces than the vocabulary the run "
        f"recorded (config.data.vocab.fingerprint={recorded!r} in its config.json, the file's now: "
        f"{now!r}): the file was replaced after training, so the run's token ids would mean other "
        "pieces. Restore the file the run trained with, or point config.data.vocab.path at a copy "
        "of it.")
  return vocab


def fingerprint(vocab: seqio.Vocabulary) -> Optional[str]:
  """A short hash of a vocabulary's pieces (WordPiece tokens, a SentencePiece model; None for
  bytes). A run records it as config.data.vocab.fingerprint (`checkpointing.config_record`), and
  `get_vocabulary` refuses a file whose pieces changed since: config.json names the file only."""
  if isinstance(vocab, WordPieceVocabulary):
    return vocab._fingerprint   # pylint: disable=protected-access
  if isinstance(vocab, seqio.SentencePieceVocabulary):
    return hashlib.sha256(vocab.sp_model).hexdigest()[:16]
  return None


def encode_batch(vocab: seqio.Vocabulary, texts: Sequence[str]) -> list[list[int]]:
  """Token ids of every string (no special tokens), in one tokenizer call (a WordPiece
  `vocab.encode` costs ~1 ms per string; 2,800 sentences take 0.1 s here instead of 3.6 s)."""
  if not texts:
    return []
  if isinstance(vocab, seqio.ByteVocabulary):  # its encode_tf needs strings of equal byte length
    return [vocab.encode(text) for text in texts]
  ragged = vocab.encode_tf(tf.constant(list(texts), tf.string))
  return [row.tolist() for row in ragged.numpy()] if isinstance(ragged, tf.Tensor) else \
      ragged.to_list()


def _piece_id(vocab: seqio.Vocabulary, aliases) -> Optional[int]:
  if isinstance(vocab, WordPieceVocabulary):
    return vocab.token_id(aliases[0])
  if isinstance(vocab, seqio.SentencePieceVocabulary):
    model = vocab.tokenizer
    for piece in aliases:
      i = model.piece_to_id(piece)
      if model.id_to_piece(i) == piece:
        return i
  return None


def piece_text(vocab: seqio.Vocabulary, i: int) -> Optional[str]:
  """The text piece `i` spells inside a word (WordPiece's `##` and SentencePiece's word-start
  `▁` removed); None for unknown, byte and control pieces and other vocabulary kinds."""
  if isinstance(vocab, WordPieceVocabulary):
    return vocab.tokens[i].removeprefix("##") if 0 <= i < len(vocab.tokens) and \
        i != vocab.unk_id else None
  if isinstance(vocab, seqio.SentencePieceVocabulary):
    model = vocab.tokenizer
    if not 0 <= i < model.get_piece_size() or model.is_unknown(i) or model.is_byte(i) or \
        model.is_control(i):
      return None
    return model.id_to_piece(i).removeprefix("▁")
  return None


def special_ids(vocab: seqio.Vocabulary) -> SpecialIds:
  """The special ids of `vocab` (None where it has none); sentinels follow seqio (top ids)."""
  return SpecialIds(
      pad=vocab.pad_id, eos=vocab.eos_id, unk=vocab.unk_id,
      cls=_piece_id(vocab, _SENTENCEPIECE_ALIASES["cls"]),
      sep=_piece_id(vocab, _SENTENCEPIECE_ALIASES["sep"]),
      mask=_piece_id(vocab, _SENTENCEPIECE_ALIASES["mask"]),
      sentinels=tuple(vocab.vocab_size - 1 - i for i in range(vocab.extra_ids)))


def require(vocab: seqio.Vocabulary, names, objective: str) -> SpecialIds:
  """Raises ValueError unless `vocab` has every special id in `names` (SpecialIds fields); returns them."""
  ids = special_ids(vocab)
  missing = [n for n in names if getattr(ids, n) in (None, ())]
  if missing:
    fixes = []
    if "sentinels" in missing:
      fixes.append("set config.data.vocab.extra_ids (e.g. 100) for the T5 sentinels")
    if set(missing) - {"sentinels"}:
      fixes.append("use config.data.vocab.kind='default' (or a vocabulary with [CLS] [SEP] [MASK] / an EOS)")
    raise ValueError(
        f"config.objective={objective!r} needs the vocabulary's {', '.join(missing)} id(s), but {vocab!r} "
        f"(config.data.vocab) has none; {'; '.join(fixes)}.")
  return ids


# pad, eos, unk and the user-defined [CLS] [SEP] [MASK]: a model has these pieces besides the text's.
_RESERVED_PIECES = 6
_VOCAB_SIZE_FIX = "Set --vocab_size to a few thousand (8000 for a tiny run, 32000 as T5)."


# SentencePiece skips, silently, every input longer than its max_sentence_length (4192 bytes by
# default): a line of CJK text, code or unpunctuated prose is one "sentence" of a text file.
_SENTENCEPIECE_CHUNK_CHARS = 4096   # at most 4 UTF-8 bytes each


def _sentencepiece_inputs(texts):
  """`texts`, each longer one cut into pieces of _SENTENCEPIECE_CHUNK_CHARS characters."""
  for text in texts:
    for start in range(0, max(len(text), 1), _SENTENCEPIECE_CHUNK_CHARS):
      yield text[start:start + _SENTENCEPIECE_CHUNK_CHARS]


def train_sentencepiece(texts, vocab_size: int, out_path: str, *, character_coverage: float = 0.9995,
                        max_sentences: int = 2_000_000) -> str:
  """Trains a SentencePiece unigram model on an iterable of strings; writes it to `out_path`.

  Ids follow T5: pad=0, eos=1, unk=2, no bos; [CLS] [SEP] [MASK] are reserved pieces so the model serves
  every objective (`special_ids` finds them). `out_path` is written only once training succeeded (a
  failed run leaves an existing file as it was). Returns `out_path`.
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  if vocab_size <= _RESERVED_PIECES:   # before any text is read
    raise ValueError(
        f"--vocab_size={vocab_size}: a SentencePiece model here has {_RESERVED_PIECES} reserved pieces "
        "(pad, eos, unk, [CLS], [SEP], [MASK]) besides the text's characters and subwords. "
        + _VOCAB_SIZE_FIX)
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=_sentencepiece_inputs(texts), model_writer=model, vocab_size=vocab_size,
        max_sentence_length=4 * _SENTENCEPIECE_CHUNK_CHARS,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"], character_coverage=character_coverage,
        input_sentence_size=max_sentences, shuffle_input_sentence=True, hard_vocab_limit=False,
        minloglevel=2)
  except RuntimeError as e:
    if "smaller than required_chars" not in str(e):
      raise
    needed = re.search(r"(\d+) vs (\d+)", str(e))
    raise ValueError(
        f"--vocab_size={vocab_size} is too small for this text: SentencePiece needs "
        f"{needed.group(2) if needed else 'more'} pieces for its characters and the "
        f"{_RESERVED_PIECES} reserved ones. {_VOCAB_SIZE_FIX}") from e
  size = spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
  if os.path.dirname(out_path):
    tf.io.gfile.makedirs(os.path.dirname(out_path))
  with tf.io.gfile.GFile(out_path, "wb") as f:
    f.write(model.getvalue())
  if size < vocab_size:   # hard_vocab_limit=False: a small corpus yields fewer pieces
    logging.warning("%s has %d pieces, not the --vocab_size=%d asked for: SentencePiece found no "
                    "more in the text. Train on more text for a larger vocabulary.", out_path, size,
                    vocab_size)
  else:
    logging.info("%s: %d pieces.", out_path, size)
  return out_path


def train_vocab_for_task(config, vocab_size: int, out: str, max_sentences: int = 2_000_000) -> str:
  """`ssl-jax vocab train`: a SentencePiece model over the sentences of the run's train split
  (config.data.source's, or those of its mixture's sources at their rates: `sources.train_sentences`,
  up to `max_sentences`). An existing `out` is
  refused: a run naming it in config.data.vocab.path would read other ids under its checkpoints."""
  if tf.io.gfile.exists(out):
    raise ValueError(
        f"--out={out!r} exists: a run whose config.data.vocab.path names it would read other "
        "token ids under its checkpoints. Pass a new --out (or remove the file, if no run uses "
        "it).")
  from ssl_jax.data import sources  # pylint: disable=g-import-not-at-top  (sources imports this module)
  texts = itertools.islice(sources.train_sentences(config), max_sentences)
  return train_sentencepiece(texts, vocab_size, out, max_sentences=max_sentences)
