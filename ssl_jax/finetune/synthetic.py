"""Downstream tasks from the embedded default corpus, written in the real file formats.

    synthetic.write_upos_conllu("train.conllu", num_documents=50, start=100_000)

The corpus tags every word with its UPOS, so part-of-speech tagging of corpus sentences is a
task a tiny BERT pretrained on the corpus can be fine-tuned on offline. `start` picks document
indices; start past the pretraining documents (config.data.corpus.num_documents plus its
validation documents) for text the encoder has not seen.
"""
from ssl_jax.data import corpora


def write_upos_conllu(path: str, num_documents: int, start: int, seed: int = 0) -> int:
  """Writes the sentences of documents [start, start + num_documents) as CoNLL-U (ID, FORM,
  UPOS filled, other columns '_'); returns the number of sentences."""
  count = 0
  with open(path, "w", encoding="utf-8") as f:
    for d, doc in enumerate(corpora.generate_documents(num_documents, seed, start=start)):
      for s, sentence in enumerate(doc):
        f.write(f"# sent_id = doc{start + d}-s{s}\n# text = {corpora.sentence_text(sentence)}\n")
        for i, (word, upos) in enumerate(sentence, 1):
          f.write(f"{i}\t{word}\t_\t{upos}\t_\t_\t_\t_\t_\t_\n")
        f.write("\n")
        count += 1
  return count
