"""The embedded default corpus: English-like documents from a small probabilistic grammar.

Offline machines cannot download C4 or Wikipedia, so the default tasks train on text generated here.
Every word comes with its Universal POS tag (DET, NOUN, PROPN, VERB, AUX, ADJ, ADV, ADP, PRON, CCONJ,
SCONJ, NUM, PART, PUNCT), so probes can ask when a model learns nouns vs verbs.

What the grammar guarantees:
- Agreement: determiners agree with the noun's number, verbs with the subject's person and number
  ("the dog runs", "the dogs run", "I am", "they were"), in present, past, future and progressive.
- Zipf-like frequencies: every word list is sampled with p(rank r) ~ 1 / (r + 1) ** 1.1, so words fall into
  frequency buckets (`lexicon()` gives each word's rank over a reference sample).
- Coherent documents: a document has a topic (its nouns, verbs and adjectives come mostly from that topic),
  a protagonist and a main tense, and 3-8 sentences, so next-sentence prediction is learnable.
- Determinism: document i depends only on (seed, i) (`numpy` Generator seeded with `[seed, i]`), never on
  how many documents were generated before it or by which process.

    doc = generate_documents(1, seed=0)[0]   # [[('The', 'DET'), ('fox', 'NOUN'), ...], ...]
    sentence_text(doc[0])                    # 'The fox follows a rabbit.'
"""
import bisect
import functools
import itertools

import numpy as np

UPOS_TAGS = ("DET", "NOUN", "PROPN", "VERB", "AUX", "ADJ", "ADV", "ADP", "PRON", "CCONJ", "SCONJ",
             "NUM", "PART", "PUNCT")
PUNCTUATION = (".", ",", "?", "!")
MIN_SENTENCES, MAX_SENTENCES = 3, 8

# topic -> (nouns, transitive verbs, intransitive verbs, adjectives). A noun is "sing" or "sing/plural";
# a verb is "base" or "base/3sg/past/ing" where the regular rules would be wrong. Lists are in Zipf order.
_TOPICS = {
    "forest": ("tree bird fox wolf deer bear rabbit owl river path leaf/leaves mushroom",
               "follow hunt climb chase/chases/chased/chasing hide/hides/hid/hiding",
               "sleep/sleeps/slept/sleeping wander howl", "green wild dark quiet tall"),
    "kitchen": ("soup bread knife/knives pot oven apple onion spoon plate cake recipe pepper",
                "bake/bakes/baked/baking stir/stirs/stirred/stirring slice/slices/sliced/slicing taste boil",
                "simmer burn", "hot sweet fresh salty warm"),
    "sea": ("boat ship sailor wave island harbor anchor shell whale storm captain net",
            "sail steer/steers/steered/steering row spot/spots/spotted/spotting pull",
            "drift float sink/sinks/sank/sinking", "blue deep calm rough salty"),
    "music": ("song piano guitar drum singer band concert melody violin note choir stage",
              "sing/sings/sang/singing hum/hums/hummed/humming practice tune record",
              "dance/dances/danced/dancing perform listen", "loud soft lovely famous slow"),
    "school": ("teacher student book lesson desk pencil class exam library map question/questions notebook",
               "read/reads/read/reading write/writes/wrote/writing study/studies/studied/studying "
               "explain/explains/explained/explaining teach/teaches/taught/teaching",
               "learn graduate/graduates/graduated/graduating", "clever difficult easy short strict"),
    "farm": ("farmer cow horse sheep/sheep field barn goat tractor hen pig fence wheat",
             "feed/feeds/fed/feeding milk plant harvest drive/drives/drove/driving",
             "graze rest grow/grows/grew/growing", "muddy busy gentle golden dry"),
    "city": ("street car bus train bridge tower market shop driver taxi crowd museum",
             "cross/crosses/crossed/crossing visit build/builds/built/building paint repair",
             "wait hurry/hurries/hurried/hurrying stop/stops/stopped/stopping",
             "crowded noisy modern narrow bright"),
    "science": ("scientist experiment robot machine star planet engine rocket theory sample lab microscope",
                "measure test design/designs/designed/designing observe launch",
                "fail succeed explode", "strange precise heavy electric bizarre"),
    "weather": ("cloud rain wind sun snow sky thunder fog summer winter morning evening",
                "cover hit/hits/hit/hitting drench freeze/freezes/froze/freezing soak",
                "shine/shines/shone/shining fall/falls/fell/falling blow/blows/blew/blowing",
                "cold cloudy sunny windy gray"),
    "sports": ("team player ball coach goal match race runner game trophy field referee",
               "kick throw/throws/threw/throwing catch/catches/caught/catching win/wins/won/winning "
               "lose/loses/lost/losing",
               "run/runs/ran/running jump stretch", "fast strong proud tired brave"),
}
_GENERIC_NOUNS = "man/men woman/women child/children friend family house day night city world idea dog cat"
_GENERIC_TRANSITIVE = ("see/sees/saw/seeing like find/finds/found/finding want love "
                       "bring/brings/brought/bringing "
                       "carry/carries/carried/carrying take/takes/took/taking make/makes/made/making")
_GENERIC_INTRANSITIVE = "arrive smile/smiles/smiled/smiling laugh walk return"
_GENERIC_ADJECTIVES = "big small old new good happy young little beautiful"
_MANNER_ADVERBS = "quickly slowly carefully suddenly quietly happily early again together"
# Sentence-initial time adverbs agree with the tense ("yesterday" only with the past).
_TIME_ADVERBS = {"past": "yesterday then later", "present": "today now then", "future": "tomorrow soon later",
                 "progressive": "now today then"}
_DEGREE_ADVERBS = "very really"
_NAMES_HE = "Tom Sam Leo Max Omar Ivan"
_NAMES_SHE = "Anna Mia Nora Lucy Zoe Emma"
_PREPOSITIONS = "in on near under behind with across into from"
_NUMBERS = "two three four five"


def _plural(noun):
  if noun.endswith(("s", "x", "ch", "sh")):
    return noun + "es"
  if noun.endswith("y") and noun[-2] not in "aeiou":
    return noun[:-1] + "ies"
  return noun + "s"


def _verb_forms(entry):
  """'base' or 'base/3sg/past/ing' -> dict of the four forms (regular English morphology by default)."""
  if "/" in entry:
    base, third, past, ing = entry.split("/")
  else:
    base = entry
    third = _plural(base)
    past = base + "d" if base.endswith("e") else base + "ed"
    ing = base[:-1] + "ing" if base.endswith("e") and not base.endswith("ee") else base + "ing"
  return {"base": base, "3sg": third, "past": past, "ing": ing}


def _noun_forms(entry):
  sing, _, plural = entry.partition("/")
  return {"sing": sing, "plural": plural or _plural(sing)}


class _Words:
  """A word list sampled with Zipf-like probabilities (first entry most frequent)."""

  def __init__(self, entries, forms):
    self.items = [forms(e) for e in entries.split()]
    weights = 1.0 / (np.arange(len(self.items)) + 1.0) ** 1.1
    self.cdf = list(np.cumsum(weights / weights.sum()))
    self.cdf[-1] = 1.0

  def draw(self, u):
    return self.items[bisect.bisect_right(self.cdf, u)]


class _Grammar:
  """Word lists and sentence templates; `document(rng)` draws one document."""

  def __init__(self):
    self.topics = []
    for nouns, trans, intrans, adjs in _TOPICS.values():
      self.topics.append({
          "nouns": _Words(nouns, _noun_forms), "trans": _Words(trans, _verb_forms),
          "intrans": _Words(intrans, _verb_forms), "adjs": _Words(adjs, str)})
    self.generic = {
        "nouns": _Words(_GENERIC_NOUNS, _noun_forms), "trans": _Words(_GENERIC_TRANSITIVE, _verb_forms),
        "intrans": _Words(_GENERIC_INTRANSITIVE, _verb_forms), "adjs": _Words(_GENERIC_ADJECTIVES, str)}
    self.manner = _Words(_MANNER_ADVERBS, str)
    self.time = {tense: _Words(words, str) for tense, words in _TIME_ADVERBS.items()}
    self.degree = _Words(_DEGREE_ADVERBS, str)
    self.preps = _Words(_PREPOSITIONS, str)
    self.numbers = _Words(_NUMBERS, str)
    self.names = (_NAMES_HE.split(), _NAMES_SHE.split())

  # Every template below consumes uniforms from `u` (an iterator over rng.random() draws): one numpy call
  # per document keeps generation fast (~0.1 ms per document).
  def content(self, u, topic, kind):
    source = topic if next(u) < 0.8 else self.generic
    return source[kind].draw(next(u))

  def noun_phrase(self, u, topic, plural, allow_pp=True):
    noun = self.content(u, topic, "nouns")
    words = []
    r = next(u)
    if plural:
      if r < 0.5:
        words.append(("the", "DET"))
      elif r < 0.7:
        words.append((["these", "those", "some", "many"][int(next(u) * 4)], "DET"))
      elif r < 0.85:
        words.append((self.numbers.draw(next(u)), "NUM"))
      else:
        words.append((["their", "our", "my"][int(next(u) * 3)], "PRON"))
    else:
      if r < 0.5:
        words.append(("the", "DET"))
      elif r < 0.75:
        words.append(("a", "DET"))  # fixed to "an" below once the next word is known
      elif r < 0.9:
        words.append((["this", "that", "every"][int(next(u) * 3)], "DET"))
      else:
        words.append((["his", "her", "their", "our", "my"][int(next(u) * 5)], "PRON"))
    if next(u) < 0.35:
      if next(u) < 0.15:
        words.append((self.degree.draw(next(u)), "ADV"))
      words.append((self.content(u, topic, "adjs"), "ADJ"))
    words.append((noun["plural" if plural else "sing"], "NOUN"))
    if words[0][0] == "a" and words[1][0][0] in "aeiou":
      words[0] = ("an", "DET")
    if allow_pp and next(u) < 0.12:
      words += self.prep_phrase(u, topic)
    return words

  def prep_phrase(self, u, topic):
    return [(self.preps.draw(next(u)), "ADP")] + self.noun_phrase(u, topic, next(u) < 0.3, allow_pp=False)

  def subject(self, u, doc, topic):
    """Returns (words, person) with person in {'1sg', '3sg', 'plural'} ('plural' covers we/you/they)."""
    r = next(u)
    if r < 0.2:
      return [(doc["name"], "PROPN")], "3sg"
    if r < 0.35:
      return [(doc["pronoun"], "PRON")], "3sg"
    if r < 0.45:
      pron = ["I", "we", "you", "they"][int(next(u) * 4)]
      return [(pron, "PRON")], "1sg" if pron == "I" else "plural"
    plural = next(u) < 0.4
    return self.noun_phrase(u, topic, plural), "plural" if plural else "3sg"

  def verb_group(self, u, verb, person, tense):
    """The finite verb group in `tense`, agreeing with `person`; may add 'not' (PART) or a modal (AUX)."""
    negate = next(u) < 0.1
    if tense == "present":
      if negate:
        return [("does" if person == "3sg" else "do", "AUX"), ("not", "PART"), (verb["base"], "VERB")]
      return [(verb["3sg"] if person == "3sg" else verb["base"], "VERB")]
    if tense == "past":
      if negate:
        return [("did", "AUX"), ("not", "PART"), (verb["base"], "VERB")]
      return [(verb["past"], "VERB")]
    if tense == "future":
      modal = ["will", "will", "can", "should", "must"][int(next(u) * 5)]
      return [(modal, "AUX")] + ([("not", "PART")] if negate else []) + [(verb["base"], "VERB")]
    be = self.be(person, "present" if next(u) < 0.6 else "past")
    return [(be, "AUX")] + ([("not", "PART")] if negate else []) + [(verb["ing"], "VERB")]

  @staticmethod
  def be(person, tense):
    if tense == "present":
      return {"1sg": "am", "3sg": "is", "plural": "are"}[person]
    return {"1sg": "was", "3sg": "was", "plural": "were"}[person]

  def clause(self, u, doc, topic, tense):
    subj, person = self.subject(u, doc, topic)
    r = next(u)
    if r < 0.15:  # copula: "the soup is very hot"
      be_tense = "past" if tense == "past" else "present"
      words = subj + [(self.be(person, be_tense), "AUX")]
      if next(u) < 0.2:
        words.append((self.degree.draw(next(u)), "ADV"))
      return words + [(self.content(u, topic, "adjs"), "ADJ")]
    if r < 0.5:  # intransitive
      words = subj + self.verb_group(u, self.content(u, topic, "intrans"), person, tense)
      if next(u) < 0.4:
        words.append((self.manner.draw(next(u)), "ADV"))
      if next(u) < 0.4:
        words += self.prep_phrase(u, topic)
      return words
    words = subj + self.verb_group(u, self.content(u, topic, "trans"), person, tense)
    if next(u) < 0.15:
      words.append((["him", "her", "them", "it", "us", "me"][int(next(u) * 6)], "PRON"))
    else:
      words += self.noun_phrase(u, topic, next(u) < 0.35)
    if next(u) < 0.2:
      words.append((self.manner.draw(next(u)), "ADV"))
    return words

  def sentence(self, u, doc):
    topic = doc["topic"]
    tense = doc["tense"] if next(u) < 0.8 else ["present", "past", "future", "progressive"][int(next(u) * 4)]
    r = next(u)
    if r < 0.08:  # question: "did the fox follow a rabbit ?"
      subj, person = self.subject(u, doc, topic)
      aux = "did" if tense == "past" else ("does" if person == "3sg" else "do")
      verb = self.content(u, topic, "trans")
      words = [(aux, "AUX")] + subj + [(verb["base"], "VERB")] + self.noun_phrase(u, topic, False)
      end = "?"
    else:
      words = []
      if r < 0.2:
        words += [(self.time[tense].draw(next(u)), "ADV"), (",", "PUNCT")]
      words += self.clause(u, doc, topic, tense)
      r = next(u)
      if r < 0.15:
        words += [(",", "PUNCT"), (["and", "but", "so"][int(next(u) * 3)], "CCONJ")]
        words += self.clause(u, doc, topic, tense)
      elif r < 0.25:
        words += [(["because", "when", "while", "although"][int(next(u) * 4)], "SCONJ")]
        words += self.clause(u, doc, topic, tense)
      end = "!" if next(u) < 0.04 else "."
    words.append((end, "PUNCT"))
    first, tag = words[0]
    words[0] = (first[:1].upper() + first[1:], tag)
    return words

  def document(self, rng):
    u = iter(rng.random(4096))
    he_or_she = int(next(u) * 2)
    names = self.names[he_or_she]
    doc = {"topic": self.topics[int(next(u) * len(self.topics))],
           "name": names[int(next(u) * len(names))],
           "pronoun": ("he", "she")[he_or_she],
           "tense": ["present", "past", "past", "future", "progressive"][int(next(u) * 5)]}
    num_sentences = MIN_SENTENCES + int(next(u) * (MAX_SENTENCES - MIN_SENTENCES + 1))
    return [self.sentence(u, doc) for _ in range(num_sentences)]


@functools.cache
def _grammar():
  return _Grammar()


def generate_document(index, seed):
  """Document `index` of the corpus with `seed`: a list of sentences, each a list of (word, upos) pairs."""
  return _grammar().document(np.random.default_rng([seed, index]))


def generate_documents(num_documents, seed, start=0):
  """Documents `start .. start + num_documents - 1` (see `generate_document`); deterministic per index."""
  return [generate_document(i, seed) for i in range(start, start + num_documents)]


def sentence_text(sentence):
  """Joins a sentence's words into text, with punctuation attached: 'The dog runs, and it barks.'"""
  text = ""
  for word, _ in sentence:
    text += word if (word in PUNCTUATION or not text) else " " + word
  return text


def _all_surface_forms():
  """Every word the grammar can emit (lower-cased) with its UPOS tag, in a fixed order."""
  g = _grammar()
  forms = []
  for topic in g.topics + [g.generic]:
    forms += [(n[k], "NOUN") for n in topic["nouns"].items for k in ("sing", "plural")]
    forms += [(v[k], "VERB") for kind in ("trans", "intrans") for v in topic[kind].items
              for k in ("base", "3sg", "past", "ing")]
    forms += [(a, "ADJ") for a in topic["adjs"].items]
  forms += [(w, "ADV") for words in (g.manner, g.degree, *g.time.values()) for w in words.items]
  forms += [(w, "ADP") for w in g.preps.items] + [(w, "NUM") for w in g.numbers.items]
  forms += [(n.lower(), "PROPN") for n in itertools.chain(*g.names)]
  forms += [(w, "DET") for w in "the a an these those some many this that every".split()]
  forms += [(w, "PRON") for w in "he she i we you they him her them it us me his their our my".split()]
  forms += [(w, "AUX") for w in "am is are was were do does did will can should must".split()]
  forms += [("not", "PART")] + [(w, "CCONJ") for w in ("and", "but", "so")]
  forms += [(w, "SCONJ") for w in ("because", "when", "while", "although")]
  forms += [(p, "PUNCT") for p in PUNCTUATION]
  return forms


@functools.cache
def lexicon():
  """word (lower-cased) -> (upos, frequency_rank): every word the grammar can emit.

  Rank 0 is the most frequent word in a fixed reference sample (2,000 documents, seed 0); words the sample
  never drew rank after all drawn ones, in grammar order. A spelling with two tags (e.g. 'her': possessive and
  object pronoun, both PRON) appears once. Probes bucket words by rank (e.g. top 50 / 50-200 / rest).
  """
  counts = {}
  for doc in generate_documents(2000, seed=0):
    for sentence in doc:
      for word, _ in sentence:
        counts[word.lower()] = counts.get(word.lower(), 0) + 1
  tags = {}
  for word, tag in _all_surface_forms():
    if tags.setdefault(word, tag) != tag:
      raise AssertionError(f"corpus grammar: {word!r} is both {tags[word]} and {tag}")
  order = sorted(tags, key=lambda w: -counts.get(w, 0))  # stable: ties keep grammar order
  return {w: (tags[w], rank) for rank, w in enumerate(order)}
