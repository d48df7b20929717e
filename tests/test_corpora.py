"""The embedded default corpus: deterministic, tagged, agreeing, coherent documents."""
import collections
import random

from ssl_jax.data import corpora


def test_document_depends_only_on_seed_and_index():
  docs = corpora.generate_documents(30, seed=7)
  assert docs == corpora.generate_documents(30, seed=7)
  assert corpora.generate_documents(5, seed=7, start=10) == docs[10:15]
  assert corpora.generate_document(29, seed=7) == docs[29]
  assert docs != corpora.generate_documents(30, seed=8)


def test_documents_have_several_tagged_sentences():
  docs = corpora.generate_documents(300, seed=0)
  tags = collections.Counter()
  for doc in docs:
    assert corpora.MIN_SENTENCES <= len(doc) <= corpora.MAX_SENTENCES
    for sentence in doc:
      assert sentence[-1][0] in ".?!" and sentence[-1][1] == "PUNCT"
      assert sentence[0][0][0].isupper()
      tags.update(tag for _, tag in sentence)
  assert set(tags) <= set(corpora.UPOS_TAGS)
  for tag in ("DET", "NOUN", "PROPN", "VERB", "AUX", "ADJ", "ADV", "ADP", "PRON", "CCONJ", "SCONJ", "NUM",
              "PART", "PUNCT"):
    assert tags[tag] > 0, tag


def test_subject_verb_agreement():
  """'am' only after 'I'; 'was'/'is' never after 'we'/'they'/'you'; 'are'/'were' never after he/she."""
  for doc in corpora.generate_documents(500, seed=1):
    for sentence in doc:
      words = [w.lower() for w, _ in sentence]
      for prev, word in zip(words, words[1:]):
        if word == "am":
          assert prev == "i", words
        if prev in ("we", "they", "you"):
          assert word not in ("is", "was", "am", "does"), words
        if prev in ("he", "she"):
          assert word not in ("are", "were", "am", "do"), words


def test_sentence_text_attaches_punctuation():
  sentence = [("Yesterday", "ADV"), (",", "PUNCT"), ("the", "DET"), ("fox", "NOUN"), ("ran", "VERB"),
              (".", "PUNCT")]
  assert corpora.sentence_text(sentence) == "Yesterday, the fox ran."


def test_lexicon_covers_the_corpus_with_zipf_ranks():
  lexicon = corpora.lexicon()
  ranks = sorted(rank for _, rank in lexicon.values())
  assert ranks == list(range(len(lexicon)))
  assert 300 <= len(lexicon) <= 3000
  counts = collections.Counter()
  for doc in corpora.generate_documents(500, seed=3):
    for sentence in doc:
      for word, tag in sentence:
        assert lexicon[word.lower()][0] == tag, word
        counts[word.lower()] += 1
  by_rank = sorted(counts, key=lambda w: lexicon[w][1])
  top = sum(counts[w] for w in by_rank[:50])
  rest = sum(counts[w] for w in by_rank[50:])
  assert top > rest  # a few frequent words, a long tail


def test_sentences_of_a_document_share_its_topic():
  """Next-sentence prediction is learnable: consecutive sentences share nouns more than random pairs."""
  docs = corpora.generate_documents(400, seed=5)

  def nouns(sentence):
    return {w.lower() for w, t in sentence if t == "NOUN"}

  def overlap(a, b):
    names = {w for w, t in a if t == "PROPN"} & {w for w, t in b if t == "PROPN"}
    return bool(nouns(a) & nouns(b) or names)

  rng = random.Random(0)
  same = [overlap(d[i], d[i + 1]) for d in docs for i in range(len(d) - 1)]
  other = [overlap(rng.choice(rng.choice(docs)), rng.choice(rng.choice(docs))) for _ in range(len(same))]
  assert sum(same) / len(same) > 2 * sum(other) / len(other)
