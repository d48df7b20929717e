"""seqio tasks: every objective over the default corpus, text files, TFDS (mocked) and mixtures."""
import collections
import importlib
import re

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from ssl_jax import config as config_lib
from ssl_jax.data import corpora
from ssl_jax.data import pipeline
from ssl_jax.data import sources
from ssl_jax.data import tasks
from ssl_jax.data import vocabularies

_FAMILY = {"mlm": "bert", "causal_lm": "gpt", "span_corruption": "t5", "denoising": "bart"}


def tiny_config(objective, **data):
  config = importlib.import_module(f"configs.{_FAMILY[objective]}").get_config("tiny")
  config.data.corpus.num_documents = 64
  config.data.sequence_length = 64
  config.data.shuffle_buffer = 16
  config.data.update(data)
  return config


def _examples(config, split="validation", n=8):
  task = tasks.get_task(config)
  lengths = {k: v for k, v in tasks.task_feature_lengths(config).items() if k != "sentence_label"}
  ds = task.get_dataset(lengths, split=split, shuffle=False, num_epochs=1, try_in_mem_cache=False)
  return list(ds.take(n).as_numpy_iterator())


@pytest.mark.parametrize("objective,features", [
    ("mlm", {"input_tokens", "token_type_ids", "masked_positions", "masked_targets", "masked_weights",
             "masked_kinds", "sentence_label"}),
    ("causal_lm", {"targets"}),
    ("span_corruption", {"inputs", "targets"}),
    ("denoising", {"inputs", "targets"}),
])
def test_each_objective_yields_its_features_over_the_default_corpus(objective, features):
  config = tiny_config(objective)
  lengths = tasks.task_feature_lengths(config)
  examples = _examples(config)
  assert len(examples) == 8
  vocab = vocabularies.get_vocabulary(config.data.vocab)
  for ex in examples:
    assert features <= set(ex)
    for name in features - {"sentence_label"}:
      assert 0 < len(ex[name]) <= lengths[name], name
    for name in features & {"inputs", "targets", "input_tokens", "masked_targets"}:
      assert ex[name].max() < vocab.vocab_size and vocab.unk_id not in ex[name]
  if objective == "causal_lm":  # documents become tokens + EOS, cut at the sequence length
    first = corpora.generate_document(config.data.corpus.num_documents, config.data.corpus.seed)
    text = " ".join(corpora.sentence_text(s) for s in first).lower()
    assert vocab.decode(examples[0]["targets"]).startswith(text[:40].replace(".", " .").replace(",", " ,"))


def test_task_is_registered_once_per_setting():
  config = tiny_config("causal_lm")
  task = tasks.get_task(config)
  assert tasks.get_task(tiny_config("causal_lm")) is task
  assert seqio.get_mixture_or_task(task.name) is task
  assert tasks.get_task(tiny_config("causal_lm", seed=1)).name != task.name
  # targets_length is span corruption's alone: it does not name another objective's stream (a
  # resume after changing it was refused), nor does the BART check blame it.
  assert tasks.get_task(tiny_config("causal_lm", targets_length=7)) is task
  assert "targets_length" in tasks.stream_settings(tiny_config("span_corruption"))
  bart = tiny_config("denoising", targets_length=1000)
  assert "targets_length" not in tasks.stream_settings(bart)
  bart.model.update(max_length=64)   # and it is refused as unread, not by the positions check
  with pytest.raises(ValueError, match=r"config.data.targets_length=1000 is invalid: it is read "
                                       r"by config.objective='span_corruption' only"):
    config_lib.validate(bart)
  # A mixture's 'tfds' entry reads data.tfds_name: a resume that changed it was not refused
  # (TFDS names written in the spec are compared with the spec).
  mixed = tiny_config("causal_lm", mixture="default_corpus:1,tfds:1", tfds_name="c4/en:3.1.0")
  other = tiny_config("causal_lm", mixture="default_corpus:1,tfds:1", tfds_name="wiki40b/en:1.3.0")
  assert tasks.stream_settings(mixed) != tasks.stream_settings(other)
  assert "tfds_name" not in tasks.stream_settings(
      tiny_config("causal_lm", mixture="default_corpus:1,c4/en:3.1.0:1", tfds_name="x/y:1.0.0"))


def test_text_files_without_blank_lines_warn_that_validation_is_training_text(tmp_path, caplog):
  path = tmp_path / "one_per_line.txt"
  path.write_text("".join(f"Document {i} is one line. It has two sentences.\n" for i in range(50)))
  config = tiny_config("causal_lm", source="text_files", text_files=str(path))
  [document] = list(sources.document_dataset(config, "validation").as_numpy_iterator())
  assert any("holds 1 document(s)" in r.getMessage() and "the training document itself"
             in r.getMessage() for r in caplog.records)
  assert [d["text"] for d in sources.document_dataset(config, "train").as_numpy_iterator()] == [
      document["text"]]


def test_bfloat16_params_are_warned_about(caplog):
  # No float32 master weights: updates below half a bfloat16 step are lost (silently, before).
  config = tiny_config("causal_lm")
  config.model.param_dtype = "bfloat16"
  config_lib.validate(config)
  assert "param_dtype='bfloat16': the optimizer keeps no float32 copy" in caplog.text


def test_corpus_splits_are_disjoint_document_ranges():
  config = tiny_config("causal_lm")
  train = list(sources.document_dataset(config, "train").as_numpy_iterator())
  validation = list(sources.document_dataset(config, "validation").as_numpy_iterator())
  assert [d["doc_index"] for d in train] == list(range(64))
  assert [d["doc_index"] for d in validation] == list(range(64, 64 + 16))
  expected = [corpora.sentence_text(s).encode() for s in corpora.generate_document(64, 0)]
  assert list(validation[0]["sentences"]) == expected


def test_train_stream_is_endless_with_a_new_permutation_and_doc_index_each_epoch():
  config = tiny_config("causal_lm")
  source = tasks.get_task(config).source
  docs = list(source.get_dataset("train", shuffle=True, seed=3).take(128).as_numpy_iterator())
  first, second = [d["doc_index"] for d in docs[:64]], [d["doc_index"] for d in docs[64:]]
  assert sorted(first) == list(range(64)) and sorted(second) == list(range(64, 128))
  assert [i - 64 for i in second] != first


# The first separator line holds a no-break space (text copied from HTML): it joined the two
# documents into one.
_TEXT = """The first document has a sentence. It has a second one! And a third?
 
Line one of document two
line two of document two


Third document. With two sentences.
"""


def test_text_files_source(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text(_TEXT)
  config = tiny_config("causal_lm", source="text_files", text_files=str(path))
  train = list(sources.document_dataset(config, "train").as_numpy_iterator())
  assert [list(d["sentences"]) for d in train] == [
      [b"The first document has a sentence.", b"It has a second one!", b"And a third?"],
      [b"Line one of document two", b"line two of document two"]]
  validation = list(sources.document_dataset(config, "validation").as_numpy_iterator())
  assert [list(d["sentences"]) for d in validation] == [[b"Third document.", b"With two sentences."]]
  for objective in ("causal_lm", "mlm"):
    examples = _examples(tiny_config(objective, source="text_files", text_files=str(path)), "train", 4)
    assert len(examples) == 4
  # A document's text keeps its line breaks (it was its sentences re-joined by spaces): a GPT or
  # T5 on a byte vocabulary never saw a newline of verse or code.
  assert train[1]["text"] == b"Line one of document two\nline two of document two"
  for objective in ("causal_lm", "span_corruption"):
    config = tiny_config(objective, source="text_files", text_files=str(path))
    config.data.vocab.kind = "byte"
    newline = vocabularies.get_vocabulary(config.data.vocab).encode("\n")
    assert any(newline[0] in e["targets"].tolist() + e.get("inputs", np.zeros(0)).tolist()
               for e in _examples(config, "train", 8)), objective


def test_text_files_errors(tmp_path):
  missing = str(tmp_path / "missing.txt")
  with pytest.raises(FileNotFoundError, match="config.data.text_files"):
    tasks.get_task(tiny_config("causal_lm", source="text_files", text_files=missing))
  empty = tmp_path / "empty.txt"
  empty.write_text("\n  \n")
  with pytest.raises(ValueError, match="config.data.text_files"):
    sources.document_dataset(tiny_config("causal_lm", source="text_files", text_files=str(empty)), "train")


def test_tfds_source_with_mock_data():
  config = tiny_config("span_corruption", source="tfds", tfds_name="c4/en:3.1.0")
  task = tasks.get_task(config)
  assert isinstance(task.source, seqio.TfdsDataSource)
  with tfds.testing.mock_data(num_examples=6):
    examples = _examples(config, "train", 4)
    docs = list(sources.document_dataset(config, "validation").take(2).as_numpy_iterator())
  assert len(examples) == 4 and all(len(ex["inputs"]) > 0 for ex in examples)
  assert len(docs) == 2 and docs[0]["text"] and docs[0]["doc_index"] != docs[1]["doc_index"]
  with pytest.raises(ValueError, match="config.data.tfds_name.*version"):
    tasks.get_task(tiny_config("causal_lm", source="tfds", tfds_name="wikipedia/20230601.en"))


class SslJaxTestDocuments(tfds.core.GeneratorBasedBuilder):
  """A TFDS dataset prepared on disk (real record files, unlike mock_data's generator, so tf.data
  can save a position in it): default-corpus documents, 3 for train and 2 for validation."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(0, 3), "validation": self._generate_examples(3, 2)}

  def _generate_examples(self, start, count):
    for i, doc in enumerate(corpora.generate_documents(count, 0, start=start)):
      yield i, {"text": " ".join(corpora.sentence_text(s) for s in doc)}


class SslJaxTestTrainOnly(tfds.core.GeneratorBasedBuilder):
  """A prepared corpus with a train split only (as many TFDS corpora), and a 'content' feature
  besides 'text'."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"text": tfds.features.Text(), "content": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(200):
      yield i, {"text": f"Document {i} is here. It ends.", "content": str(i)}


class SslJaxTestNoText(tfds.core.GeneratorBasedBuilder):
  """A prepared dataset without a 'text' feature."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({"content": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(3):
      yield i, {"content": str(i)}


def test_tfds_corpus_without_validation_split_holds_out_train_and_errors_name_the_fix(tmp_path):
  # seqio failed the first eval ("Unknown split 'validation'"); a dataset without 'text' raised
  # KeyError: 'text'; a non-UTF-8 text file a UnicodeDecodeError without its name.
  SslJaxTestTrainOnly(data_dir=str(tmp_path)).download_and_prepare()
  config = tiny_config("causal_lm", source="tfds", tfds_name="ssl_jax_test_train_only:1.0.0",
                       tfds_data_dir=str(tmp_path))
  validation = [d["text"] for d in sources.document_dataset(config, "validation").as_numpy_iterator()]
  train = [d["text"] for d in sources.document_dataset(config, "train").as_numpy_iterator()]
  assert len(validation) == 2 and len(train) == 198 and not set(validation) & set(train)
  SslJaxTestNoText(data_dir=str(tmp_path)).download_and_prepare()
  with pytest.raises(ValueError, match=r"config.data.tfds_name='ssl_jax_test_no_text:1.0.0' names "
                     r"a dataset without a 'text' feature \(its features: content\)"):
    tasks.get_task(tiny_config("causal_lm", source="tfds", tfds_name="ssl_jax_test_no_text:1.0.0",
                               tfds_data_dir=str(tmp_path)))
  # A mixture's TFDS entry: the errors blamed config.data.tfds_name, which the user never set.
  mixture = "default_corpus:0.5,ssl_jax_test_no_text:1.0.0:0.5"
  with pytest.raises(ValueError, match=re.escape(
      f"config.data.mixture={mixture!r} (its entry 'ssl_jax_test_no_text:1.0.0') names a dataset "
      "without a 'text' feature")):
    tasks.get_mixture_or_task(tiny_config("causal_lm", mixture=mixture,
                                          tfds_data_dir=str(tmp_path)))
  # A dataset not prepared in tfds_data_dir: seqio had TFDS download and build it there (C4 on
  # every host of a pod), and it failed inside the build here.
  unprepared = tiny_config("causal_lm", source="tfds", tfds_name="ssl_jax_test_documents:1.0.0",
                           tfds_data_dir=str(tmp_path / "empty"))
  with pytest.raises(ValueError, match=r"config.data.tfds_name='ssl_jax_test_documents:1.0.0' is "
                     r"not prepared in config.data.tfds_data_dir="):
    sources.document_dataset(unprepared, "train")
  unprepared.data.mixture = "default_corpus:0.5,ssl_jax_test_documents:1.0.0:0.5"
  with pytest.raises(ValueError, match=re.escape(
      f"config.data.mixture={unprepared.data.mixture!r} (its entry 'ssl_jax_test_documents:1.0.0') "
      "is not prepared in config.data.tfds_data_dir=")):
    sources.document_dataset(unprepared, "train", source="ssl_jax_test_documents:1.0.0")
  assert not (tmp_path / "empty").exists()
  # A misspelt name, config or version: TFDS's error listed its whole catalog, not the setting.
  for name, reason in (("ssl_jax_test_train_onyl:1.0.0", "Dataset ssl_jax_test_train_onyl not found"),
                       ("c4/enn:3.1.0", "BuilderConfig enn not found")):
    with pytest.raises(ValueError, match=rf"config.data.tfds_name='{name}' is neither a TFDS catalog "
                       rf"dataset nor one prepared in config.data.tfds_data_dir=.*{reason}"):
      sources.document_dataset(tiny_config("causal_lm", source="tfds", tfds_name=name,
                                         tfds_data_dir=str(tmp_path)), "train")
  latin1 = tmp_path / "latin1.txt"
  latin1.write_bytes("Caf\xe9 au lait.".encode("latin-1"))
  with pytest.raises(ValueError, match=r"latin1.txt is not UTF-8 text"):
    sources.document_dataset(tiny_config("causal_lm", source="text_files", text_files=str(latin1)),
                           "train")
  # A byte-order mark (Notepad's UTF-8) is not text: it began the first document, and a byte
  # vocabulary fed its three bytes to the model.
  bom = tmp_path / "bom.txt"
  bom.write_bytes("\ufeffCafé au lait.\n\nTea.\n".encode("utf-8"))
  texts = [d["text"] for d in sources.document_dataset(
      tiny_config("causal_lm", source="text_files", text_files=str(bom)), "train").as_numpy_iterator()]
  assert texts[0] == "Café au lait.".encode("utf-8")


def test_tfds_train_split_corrupts_each_epoch_anew_and_resumes(tmp_path):
  SslJaxTestDocuments(data_dir=str(tmp_path)).download_and_prepare()
  config = tiny_config("denoising", source="tfds", tfds_name="ssl_jax_test_documents:1.0.0",
                       tfds_data_dir=str(tmp_path))
  ds = tasks.get_task(config).get_dataset(tasks.task_feature_lengths(config), split="train",
                                          shuffle=False, num_epochs=None, try_in_mem_cache=False)
  it = pipeline.DataIterator(ds, None)
  examples = [next(it) for _ in range(30)]
  it.save(tmp_path / "position")
  following = [next(it) for _ in range(5)]
  resumed = pipeline.DataIterator(ds, None)
  resumed.restore(tmp_path / "position")
  for want, got in zip(following, [next(resumed) for _ in range(5)]):
    assert all((want[k] == got[k]).all() for k in want)
  # BART's targets are a document's chunk, its inputs the noised chunk: each epoch noises anew.
  inputs_by_chunk = collections.defaultdict(set)
  for ex in examples:
    inputs_by_chunk[tuple(ex["targets"])].add(tuple(ex["inputs"]))
  assert len(inputs_by_chunk) <= 10  # 3 documents' chunks, over and over
  assert sum(len(v) > 1 for v in inputs_by_chunk.values()) >= 0.8 * len(inputs_by_chunk)
  assert len(_examples(config, "validation", 100)) < 100  # validation is one pass
  # document_dataset (what `ssl-jax vocab train` reads) is one pass over train too: it was the
  # task's endless epochs, read until vocab train's 2M sentences.
  assert len(list(sources.document_dataset(config, "train").take(10).as_numpy_iterator())) == 3


def test_mixture_of_sources(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text(_TEXT)
  config = tiny_config("causal_lm", text_files=str(path), mixture="default_corpus:3,text_files:1")
  mixture = tasks.get_mixture_or_task(config)
  assert isinstance(mixture, seqio.Mixture)
  assert sorted(mixture.get_rate(t) for t in mixture.tasks) == [1.0, 3.0]
  assert tasks.get_mixture_or_task(config) is mixture
  ds = mixture.get_dataset({"targets": 64}, split="train", shuffle=True, seed=0, try_in_mem_cache=False)
  assert len(list(ds.take(6).as_numpy_iterator())) == 6
  with pytest.raises(ValueError, match="config.data.mixture"):
    tasks.get_mixture_or_task(tiny_config("causal_lm", mixture="default_corpus"))
  # seqio keeps one rate per task (the last: text_files trained at 1/2, not 1/3); tf.data never
  # draws a source of rate inf; a misspelt source was reported as config.data.tfds_name.
  for spec, message in (
      ("default_corpus:1,text_files:1,default_corpus:1", "names 'default_corpus' twice"),
      ("default_corpus:inf,text_files:1", "must be 'source:rate' with a finite rate > 0"),
      ("default_corpus:1,text_file:1", "'text_file' is neither a source .*nor a TFDS name"),
      ("default_corpus:1,,text_files:1", "has an empty entry"), (",", "has an empty entry")):
    with pytest.raises(ValueError, match=rf"config.data.mixture='{spec}'.*{message}"):
      tasks.get_mixture_or_task(tiny_config("causal_lm", text_files=str(path), mixture=spec))
  with pytest.raises(ValueError, match="names 'c4/en:3.1.0' twice"):   # 'tfds' is tfds_name's
    tasks.get_mixture_or_task(tiny_config("causal_lm", mixture="tfds:1,c4/en:3.1.0:1",
                                          tfds_name="c4/en:3.1.0"))
  spaced = tiny_config("causal_lm", text_files=str(path), mixture="default_corpus : 3, text_files:1")
  assert tasks.get_mixture_or_task(spaced).tasks == mixture.tasks


def test_mixture_shards_pick_their_sources_independently(tmp_path):
  # seqio sampled every shard's mixture with one seed: each shard picked the same sources in
  # the same order, so a global batch was S copies of one shard's mix.
  path = tmp_path / "zebra.txt"
  path.write_text("\n\n".join(f"zebra {i} quick." for i in range(40)) + "\n")
  shards, rows = 4, 4
  config = tiny_config("causal_lm", text_files=str(path), pack=False, num_shards=shards,
                       mixture="default_corpus:1,text_files:1")
  config.train.global_batch_size = shards * rows
  zebra = vocabularies.get_vocabulary(config.data.vocab).encode("zebra")[0]
  it = pipeline.make_iterator(config, "train", None)
  same = 0
  fractions = []
  for _ in range(30):
    from_file = np.array([zebra in row for row in it.next_local()["decoder_target_tokens"]])
    from_file = from_file.reshape(shards, rows)
    same += (from_file == from_file[0]).all()
    fractions.append(from_file.mean())
  assert same <= 2   # 30 of 30 before
  assert 0.35 < np.mean(fractions) < 0.65   # the rates hold


def test_errors_name_the_setting():
  config = tiny_config("causal_lm")
  config.objective = "electra"
  with pytest.raises(ValueError, match="config.objective"):
    tasks.get_task(config)
  with pytest.raises(ValueError, match="config.data.source"):
    tasks.get_task(tiny_config("causal_lm", source="s3"))
  with pytest.raises(ValueError, match="config.data.sequence_length"):
    tasks.get_task(tiny_config("mlm", sequence_length=4))
  byte_vocab = tiny_config("mlm")
  byte_vocab.data.vocab.kind = "byte"
  with pytest.raises(ValueError, match="cls"):
    tasks.get_task(byte_vocab)
  no_sentinels = tiny_config("span_corruption")
  no_sentinels.data.vocab.extra_ids = 0
  with pytest.raises(ValueError, match="extra_ids"):
    tasks.get_task(no_sentinels)
  no_sentinels.data.vocab.extra_ids = -3   # it shrank the model's vocabulary
  with pytest.raises(ValueError, match="config.data.vocab.extra_ids=-3 is invalid"):
    config_lib.validate(no_sentinels)
  with pytest.raises(ValueError, match="config.data.targets_length"):
    tasks.get_task(tiny_config("span_corruption", targets_length=4))
  # With a mixture, data.source and text_files outside it were ignored: config.json named them.
  with pytest.raises(ValueError, match=r"config.data.source='tfds' is invalid.*replaces the source"):
    config_lib.validate(tiny_config("causal_lm", source="tfds", mixture="default_corpus:1"))
  with pytest.raises(ValueError, match=r"config.data.text_files='a.txt' is invalid.*no 'text_files'"):
    config_lib.validate(tiny_config("causal_lm", text_files="a.txt", mixture="default_corpus:1"))
