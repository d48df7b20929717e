"""The documents pretraining reads: the default corpus, text files and TFDS datasets.

    ds = document_dataset(config, "validation")   # one pass, in order

Every source yields documents `{"doc_index": int64, "text": string, "sentences": string vector}`
(`ssl_jax.data.tasks` turns them into each objective's examples).

Sources (`config.data.source`):
- 'default_corpus': `ssl_jax.data.corpora`; train = documents [0, num_documents), validation = the next
  `num_validation_documents` (default max(16, num_documents // 20)). The train split is an endless stream
  of epochs, each (with shuffle) a fresh permutation; `doc_index = epoch * num_documents + i`, so each
  epoch corrupts a document differently (dynamic masking, as RoBERTa). Validation is one fixed pass.
- 'text_files': `config.data.text_files` (comma-separated; read into memory when the dataset is built):
  documents are separated by blank lines; sentences are lines, further split after . ! or ? followed by
  a space; a document's `text` (what GPT and T5 read) is its own, line breaks kept. Validation =
  every 20th document (19, 39, ...), or the last one for files with < 20. Train is an endless
  stream as for the corpus.
- 'tfds': `seqio.TfdsDataSource(config.data.tfds_name)` (e.g. 'c4/en:3.1.0', 'wikipedia/20230601.en:1.0.0');
  documents are the `text` field, sentences split as above, `doc_index` a fingerprint of the text. The
  train split is an endless stream of epochs too, the fingerprint offset by the epoch (dynamic masking).
  `config.data.tfds_data_dir` is where the prepared datasets are ('' = TFDS's default: $TFDS_DATA_DIR or
  ~/tensorflow_datasets; e.g. gs://bucket/tensorflow_datasets on a TPU pod).
`config.data.mixture = 'src:rate,...'` (src a source name or a TFDS name) makes a `seqio.Mixture`;
its rates count examples (document pieces when packed), not tokens.
"""
import functools
import math
import re

import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from ssl_jax.data import corpora
from ssl_jax.data import vocabularies

SOURCES = ("default_corpus", "text_files", "tfds")
SPLITS = ("train", "validation")
AUTOTUNE = tf.data.AUTOTUNE
_TFDS_SPLITS = {  # datasets without a validation split hold out the end of train
    "wikipedia": {"train": "train[:99%]", "validation": "train[99%:]"},
}
_TEXT_FILES_HOLDOUT = 20  # every 20th document of text files is validation
_EPOCH_STRIDE = 1_000_003  # doc_index offset per epoch of a TFDS train split (a prime)
# Sentence boundary: . ! ? (with closing quotes/brackets) followed by whitespace; also any line break.
_SENTENCE_END = r"""([.!?]['"’”)\]]*)\s+"""


def config_get(cfg, key, default=None):
  """`cfg[key]` of a ConfigDict (or an attribute of another config object), `default` if absent."""
  return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def split_sentences(text):
  """String scalar -> string vector: the text's sentences (lines, split after . ! ? + space), stripped."""
  text = tf.strings.regex_replace(text, _SENTENCE_END, "\\1\n")
  sentences = tf.strings.strip(tf.strings.split(text, "\n"))
  return tf.boolean_mask(sentences, tf.strings.length(sentences) > 0)


def _document(doc_index, sentences, text=None):
  """A document: `text` (default: the sentences joined by spaces) and its `sentences`. The text of
  a file or TFDS document is its own, line breaks and indentation kept (GPT and T5 read it; a byte
  vocabulary sees them), not the sentences' re-join."""
  text = tf.strings.reduce_join(sentences, separator=" ") if text is None else text
  return {"doc_index": tf.cast(doc_index, tf.int64), "text": text, "sentences": sentences}


def _endless_epochs(num_documents, shuffle, seed):
  """(doc_index, i) pairs: epoch after epoch over documents 0..n-1, permuted anew each epoch if `shuffle`."""
  ids = tf.data.Dataset.range(num_documents)
  if shuffle:
    ids = ids.shuffle(num_documents, seed=seed, reshuffle_each_iteration=True)
  return ids.repeat().enumerate().map(
      lambda position, i: ((position // num_documents) * num_documents + i, i))


def _in_memory_documents(make_document, num_documents, split, shuffle, seed, endless):
  """Documents by index from in-memory tensors: endless epochs for train, one ordered pass otherwise."""
  if split == "train" and endless:
    pairs = _endless_epochs(num_documents, shuffle, 0 if seed is None else seed)
  else:
    pairs = tf.data.Dataset.range(num_documents).map(lambda i: (i, i))
  return pairs.map(make_document, num_parallel_calls=AUTOTUNE)


@functools.lru_cache(maxsize=8)
def _corpus_tensors(start, count, seed):
  docs = corpora.generate_documents(count, seed, start=start)
  sentences = [corpora.sentence_text(s) for doc in docs for s in doc]
  splits = [0]
  for doc in docs:
    splits.append(splits[-1] + len(doc))
  return tf.constant(sentences), tf.constant(splits, tf.int64)


def _corpus_split(corpus_cfg, split):
  """(first document index, number of documents) of a default-corpus split."""
  num_documents = int(corpus_cfg.num_documents)
  if num_documents < 1:
    raise ValueError(f"config.data.corpus.num_documents={num_documents}; it must be >= 1.")
  if split == "train":
    return 0, num_documents
  return num_documents, int(config_get(corpus_cfg, "num_validation_documents", 0)
                            or max(16, num_documents // 20))


def _corpus_dataset(split, shuffle_files, seed=None, *, corpus_cfg, endless=True):
  start, count = _corpus_split(corpus_cfg, split)
  with tf.init_scope():
    sentences, row_splits = _corpus_tensors(start, count, int(corpus_cfg.seed))

  def make_document(doc_index, i):
    return _document(doc_index + start, sentences[row_splits[i]:row_splits[i + 1]])
  return _in_memory_documents(make_document, count, split, shuffle_files, seed, endless)


def text_file_paths(text_files):
  paths = [p.strip() for p in (text_files or "").split(",") if p.strip()]
  if not paths:
    raise ValueError("config.data.source='text_files' needs config.data.text_files (comma-separated paths).")
  for path in paths:
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(
          f"config.data.text_files names {path!r}, which does not exist; fix the path or use "
          "config.data.source='default_corpus'.")
  return tuple(paths)


def _text_file_documents(paths):
  """Documents (texts) of the files, split at blank lines; raises if there are none."""
  return _read_text_file_documents(paths, tuple(map(vocabularies.file_stamp, paths)))


@functools.lru_cache(maxsize=8)
def _read_text_file_documents(paths, stamps):  # `stamps` (size, mtime) re-read files that changed
  del stamps
  documents = []
  for path in paths:
    with tf.io.gfile.GFile(path, "rb") as f:
      raw = f.read()
    try:
      text = raw.decode("utf-8-sig")   # a byte-order mark (Windows editors) is not text
    except UnicodeDecodeError as e:
      raise ValueError(f"config.data.text_files: {path} is not UTF-8 text ({e}); convert it, "
                       f"e.g. iconv -f latin1 -t utf-8.") from e
    # A blank line separates documents; whitespace is Unicode's (a no-break space copied from HTML).
    documents += [d.strip() for d in re.split(r"\n[^\S\n]*\n", text) if d.strip()]
  if not documents:
    raise ValueError(
        f"config.data.text_files={','.join(paths)!r} holds no text; give files with documents separated "
        "by blank lines.")
  if len(documents) < _TEXT_FILES_HOLDOUT:   # e.g. one document per line, no blank lines
    logging.warning(
        "config.data.text_files=%r holds %d document(s) (documents are separated by blank lines): "
        "validation is %s. Separate the documents by blank lines.", ",".join(paths),
        len(documents), "the training document itself" if len(documents) == 1
        else "the last document alone")
  return documents


def _text_file_split(paths, split):
  documents = _text_file_documents(paths)
  n = len(documents)
  if n < _TEXT_FILES_HOLDOUT:
    held_out = {n - 1} if n > 1 else set()  # a single document serves both splits
  else:
    held_out = set(range(_TEXT_FILES_HOLDOUT - 1, n, _TEXT_FILES_HOLDOUT))
  if split == "validation":
    indices = sorted(held_out) if held_out else [0]
  else:
    indices = [i for i in range(n) if i not in held_out]
  return [documents[i] for i in indices], indices


def _text_files_dataset(split, shuffle_files, seed=None, *, paths, endless=True):
  texts, indices = _text_file_split(paths, split)
  with tf.init_scope():
    texts, indices = tf.constant(texts), tf.constant(indices, tf.int64)
  n = int(texts.shape[0])

  def make_document(doc_index, i):
    # doc_index: the file-order index, offset by whole epochs for train (see the module docstring).
    index = indices[i] + (doc_index - i)
    return _document(index, split_sentences(texts[i]), texts[i])   # stripped when read
  return _in_memory_documents(make_document, n, split, shuffle_files, seed, endless)


def _tfds_documents(ds):
  """TFDS examples (their 'text', checked by `_tfds_source`) -> documents."""
  def make_document(ex):
    doc_index = tf.strings.to_hash_bucket_fast(ex["text"], 2 ** 62)
    if "epoch" in ex:  # the train split's later epochs corrupt the document anew
      doc_index = (doc_index + ex["epoch"] * _EPOCH_STRIDE) % 2 ** 62
    return _document(doc_index, split_sentences(ex["text"]), tf.strings.strip(ex["text"]))
  return ds.map(make_document, num_parallel_calls=AUTOTUNE)


class _TfdsEpochs(seqio.TfdsDataSource):
  """seqio's TFDS source whose train split is an endless stream of epochs, each example
  carrying its `epoch` (as the in-memory sources offset doc_index by epoch), so that every epoch
  masks or corrupts a document differently. seqio repeats a source only after the preprocessors,
  which would repeat epoch 1's corruption."""

  def __init__(self, tfds_name: str, data_dir: str, splits, setting: str):
    # read_only: seqio would have TFDS download and build a missing dataset (on every host).
    super().__init__(tfds_name, tfds_data_dir=data_dir or None, splits=splits, read_only=True)
    self.settings = (setting, data_dir)

  def get_dataset(self, split=None, shuffle=True, seed=None, shard_info=None, **kwargs):
    ds = self.one_pass(split, shuffle, seed, shard_info, **kwargs)
    if split != "train":
      return ds

    def epoch_of(epoch):
      def with_epoch(ex):
        return {**ex, "epoch": epoch}
      return ds.map(with_epoch)
    return tf.data.Dataset.range(2 ** 62).flat_map(epoch_of)

  def one_pass(self, split, shuffle=False, seed=None, shard_info=None, **kwargs):
    """seqio's dataset of `split` (one pass), read from the prepared dataset only."""
    try:
      return super().get_dataset(split, shuffle, seed, shard_info, **kwargs)
    except AssertionError as e:   # TFDS: "could not find data in <dir>"
      setting, data_dir = self.settings
      raise ValueError(
          f"{setting} is not prepared in config.data.tfds_data_dir="
          f"{data_dir!r} ({e}); prepare it first (`tfds build` with --data_dir, or copy a "
          "prepared one there), or set tfds_data_dir to where it is.") from e


def _tfds_source(tfds_name, data_dir="", setting=""):
  """The TFDS source of `tfds_name`; errors name `setting`, the config value that named it
  (default: config.data.tfds_name; a mixture's entry: `_tfds_setting`)."""
  setting = setting or f"config.data.tfds_name={tfds_name!r}"
  if not tfds_name or ":" not in tfds_name:
    raise ValueError(
        f"{setting} must name a TFDS dataset with its version, e.g. 'c4/en:3.1.0' or "
        "'wikipedia/20230601.en:1.0.0'.")
  builder = _tfds_builder(tfds_name, data_dir, setting)
  features = builder.info.features
  if features is not None and "text" not in features:
    raise ValueError(
        f"{setting} names a dataset without a 'text' feature (its features: "
        f"{', '.join(sorted(features))}); ssl_jax pretrains on the 'text' of TFDS text corpora "
        "such as c4/en or wikipedia.")
  base = tfds_name.split("/")[0].split(":")[0]
  return _TfdsEpochs(tfds_name, data_dir,
                     splits=_TFDS_SPLITS.get(base) or _tfds_splits(tfds_name, builder),
                     setting=setting)


def _tfds_setting(config, tfds_name) -> str:
  """The config value that names `tfds_name`: data.tfds_name (data.source or a mixture's 'tfds'
  entry), or an entry of data.mixture."""
  mixture = config_get(config.data, "mixture", "") or ""
  if tfds_name == config_get(config.data, "tfds_name") and (
      not mixture or any(source == "tfds" for source, _ in mixture_entries(config))):
    return f"config.data.tfds_name={tfds_name!r}"
  return f"config.data.mixture={mixture!r} (its entry {tfds_name!r})"


def _tfds_builder(tfds_name, data_dir, setting):
  """TFDS's builder of `tfds_name`: a dataset of its catalog, or one prepared in `data_dir`."""
  try:
    return tfds.builder(tfds_name, data_dir=data_dir or None)
  # An unknown name is a DatasetNotFoundError (a ValueError) listing every dataset TFDS has, an
  # unknown config a ValueError, an unknown version of a catalog dataset an AssertionError.
  except (ValueError, AssertionError) as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(
        f"{setting} is neither a TFDS catalog dataset nor one prepared in "
        f"config.data.tfds_data_dir={data_dir!r} ({reason}); check the name, its config and its "
        "version (a prepared dataset is the directory name/config/version under tfds_data_dir), "
        "or set tfds_data_dir to where it is prepared.") from e


def _tfds_splits(tfds_name, builder):
  """{split: TFDS split}: a prepared dataset without a validation split holds out train's last 1%
  (as _TFDS_SPLITS does for Wikipedia); seqio refused it at the first eval. A catalog dataset not
  prepared has no splits: reading it is refused (`_TfdsEpochs.one_pass`)."""
  available = set(builder.info.splits)
  if "train" in available and "validation" not in available:
    logging.info("%s has no validation split (%s): validation is the last 1%% of train.",
                 tfds_name, ", ".join(sorted(available)))
    return {"train": "train[:99%]", "validation": "train[99%:]"}
  return {s: s for s in SPLITS}


def data_source(config, source, tfds_name):
  data = config.data
  if source == "default_corpus":
    return seqio.FunctionDataSource(
        functools.partial(_corpus_dataset, corpus_cfg=data.corpus), splits=SPLITS)
  if source == "text_files":
    return seqio.FunctionDataSource(
        functools.partial(_text_files_dataset, paths=text_file_paths(config_get(data, "text_files"))),
        splits=SPLITS)
  if source == "tfds":
    return _tfds_source(tfds_name, config_get(data, "tfds_data_dir", ""),
                        _tfds_setting(config, tfds_name))
  raise ValueError(f"config.data.source={source!r} is not a source; use one of {', '.join(SOURCES)}.")


def as_documents(ds):
  """Source examples -> documents: TFDS examples get sentences and a doc_index; all keep 3 fields."""
  if "sentences" not in ds.element_spec:
    ds = _tfds_documents(ds)
  ds = ds.map(lambda d: {k: d[k] for k in ("doc_index", "text", "sentences")})
  return ds.filter(lambda d: tf.size(d["sentences"]) > 0)


def document_dataset(config, split, source=None):
  """One in-order pass over the documents of `config.data.source` (or `source`: a source, or a
  TFDS name as a mixture gives it) for `split`.

  For vocabulary training, probes and tests; tasks read the same documents (train: endless, shuffled).
  """
  source = source or config.data.source
  if source == "default_corpus":
    ds = _corpus_dataset(split, False, corpus_cfg=config.data.corpus, endless=False)
  elif source == "text_files":
    ds = _text_files_dataset(split, False, paths=text_file_paths(config_get(config.data, "text_files")),
                             endless=False)
  else:   # seqio's own pass: the task's TFDS train split is endless epochs (_TfdsEpochs)
    tfds_name = config_get(config.data, "tfds_name") if source == "tfds" else source  # or a mixture's
    ds = data_source(config, "tfds", tfds_name).one_pass(split)
  return as_documents(ds)


def train_sentences(config):
  """The sentences (str) of the train documents of `config`'s source, one pass in order. With
  `data.mixture`, documents are drawn from its sources at their rates (seeded with data.seed), a
  source that runs out starting again, until every source has been read once: the text a
  vocabulary trains on is mixed as the training stream is."""
  spec = config_get(config.data, "mixture", "") or ""
  entries = mixture_entries(config) if spec else [(config.data.source, 1.0)]
  rates = np.array([rate for _, rate in entries])
  passes = [document_dataset(config, "train", source) for source, _ in entries]
  documents = [iter(p.as_numpy_iterator()) for p in passes]
  read_once = [False] * len(entries)
  rng = np.random.default_rng(config_get(config.data, "seed", 0))
  while not all(read_once):
    i = rng.choice(len(entries), p=rates / rates.sum())
    doc = next(documents[i], None)
    if doc is None:   # this source has run out: read it again while the others have not
      read_once[i] = True
      documents[i] = iter(passes[i].as_numpy_iterator())
      continue
    for sentence in doc["sentences"]:
      yield sentence.decode("utf-8")


def mixture_entries(config):
  """config.data.mixture 'default_corpus:1,c4/en:3.1.0:0.5' -> [('default_corpus', 1.0),
  ('c4/en:3.1.0', 0.5)]."""
  spec = config.data.mixture
  tfds_name = config_get(config.data, "tfds_name")
  task_of = lambda name: tfds_name if name == "tfds" else name  # noqa: E731  (seqio's task)
  items = [s.strip() for s in spec.split(",")]
  if not all(items):   # ',' or 'a:1,,b:1': a dropped source, or a mixture of nothing
    raise ValueError(
        f"config.data.mixture={spec!r} has an empty entry; give 'source:rate' entries separated "
        "by single commas (e.g. 'default_corpus:0.7,c4/en:3.1.0:0.3'), or '' for no mixture.")
  entries = []
  for item in items:
    source, _, rate = item.rpartition(":")
    source = source.strip()
    try:
      rate = float(rate)
    except ValueError:
      rate = -1.0
    if not source or not (math.isfinite(rate) and rate > 0):
      raise ValueError(
          f"config.data.mixture={spec!r}: entry {item!r} must be 'source:rate' with a finite rate "
          "> 0, e.g. 'default_corpus:0.7,c4/en:3.1.0:0.3'.")
    if source not in SOURCES and ":" not in source:
      raise ValueError(
          f"config.data.mixture={spec!r}: {source!r} is neither a source ({', '.join(SOURCES)}) "
          "nor a TFDS name with its version (e.g. 'c4/en:3.1.0').")
    # seqio keeps one rate per task (the last would win); 'tfds' is data.tfds_name's task.
    if any(task_of(seen) == task_of(source) for seen, _ in entries):
      raise ValueError(f"config.data.mixture={spec!r} names {task_of(source)!r} twice; give each "
                       "source once, with its whole rate.")
    entries.append((source, rate))
  return entries
