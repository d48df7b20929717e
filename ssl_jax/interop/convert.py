"""`ssl-jax convert`: a pretraining run's checkpoint as a Hugging Face model directory.

    ssl-jax convert --to_hf /tmp/bert --out /tmp/bert_hf [--steps 400]
    transformers.BertForPreTraining.from_pretrained('/tmp/bert_hf')   # the same function

The directory holds `config.json` (with the run's vocabulary's pad and EOS ids, not transformers'
defaults), `model.safetensors` and the vocabulary: `vocab.txt` (default and WordPiece vocabularies,
one token per line) or `spiece.model` (SentencePiece), with a `tokenizer_config.json` naming its
transformers class (`BertTokenizer` with `do_lower_case`, or `T5Tokenizer`), so that
`AutoTokenizer.from_pretrained(out)` gives the run's token ids (a 'byte' vocabulary: a
`tokenizer.json` of seqio's ids, byte b at b + 3). A GPT's directory adds a `tokenizer.json` of
the same tokenizer that starts each text with id 0 and adds no EOS, as a GPT row starts
(`generate(**tokenizer(prompt))` continues the prompt); a T5's or BART's one that ends each text
with EOS alone, as their encoder inputs end. seqio's extra ids (T5 sentinels) sit above the
file's tokens.
The other direction needs no conversion: `--init hf:DIR` (finetune, eval-suite) and
`interop.hf.from_pretrained(DIR)` read a Hugging Face directory directly.
"""
from __future__ import annotations

import json
import os

from absl import logging
import jax
import tensorflow as tf

from ssl_jax.data import vocabularies
from ssl_jax.interop import hf
from ssl_jax.probes import subject as subject_lib


# What `to_hf` writes: the files an earlier conversion left in `out`, which it replaces.
_WRITTEN = ("config.json", "model.safetensors", "vocab.txt", "spiece.model", "tokenizer_config.json",
            "tokenizer.json")


def to_hf(workdir: str, out: str, step: int | None = None) -> str:
  """Writes checkpoint `step` (default: the latest) of the run in `workdir` to `out`, a new
  directory or an earlier conversion's (any other file there is refused: a model directory's
  tokenizer.json would be loaded in place of the run's vocabulary, a run's files overwritten)."""
  if tf.io.gfile.exists(out) and not tf.io.gfile.isdir(out):
    raise ValueError(f"--out={out!r} is a file; pass a new or empty directory.")
  others = sorted(set(tf.io.gfile.listdir(out)) - set(_WRITTEN)) if tf.io.gfile.isdir(out) else []
  if others:
    raise ValueError(
        f"--out={out!r} holds {', '.join(others[:4])}{', ...' if len(others) > 4 else ''}, which "
        "`ssl-jax convert` does not write (another model's or run's files): they would sit beside "
        "the converted model, or be overwritten. Pass a new or empty --out directory.")
  subject = subject_lib.Subject.from_workdir(workdir, "--to_hf")
  try:
    vocab_path = subject.config.data.vocab.get("path", "")
    if vocab_path and os.path.realpath(os.path.dirname(vocab_path)) == os.path.realpath(out):
      raise ValueError(
          f"--out={out!r} holds the run's vocabulary (config.data.vocab.path={vocab_path!r}), "
          "which the conversion would replace (and the run could not go on without it). Pass "
          "another --out directory.")
    hf.hf_config_from(subject.model_config)   # refuses what transformers cannot express, now
    steps = subject.steps()
    step = steps[-1] if step is None else step
    if step not in steps:
      raise ValueError(f"--steps={step}: {workdir!r} has checkpoints at steps {steps}; pick one "
                       "of them.")
    params = jax.device_get(subject.restore(step))
  finally:
    subject.close()
  special = subject.special
  token_ids = {"pad_token_id": special.pad, "eos_token_id": special.eos}
  if subject.name == "causal_lm":
    # Each row's first input is id 0 (seqio's shifted targets), the padding id too. As GPT-2,
    # no pad id: `generate` given ids without an attention mask inferred one from the pad id and
    # hid the BOS (and shifted every position), silently changing the answers.
    token_ids.update(bos_token_id=0, pad_token_id=None)
  if jax.process_index() == 0:   # every process of a multi-process job reads the same
    for name in _WRITTEN:   # an earlier conversion's (its spiece.model beside this vocab.txt)
      if tf.io.gfile.exists(os.path.join(out, name)):
        tf.io.gfile.remove(os.path.join(out, name))
    hf.save_pretrained(subject.model, params, out, token_ids=token_ids)
    tokenizer = _write_vocabulary(subject.config.data.vocab, out)
    if subject.name == "causal_lm":   # a row starts with id 0, no EOS
      _frame_texts(out, tokenizer, start=0, eos=special.eos, end_with_eos=False)
    elif subject.name != "mlm" and tokenizer["tokenizer_class"] != "T5Tokenizer":
      # An encoder input ends with EOS alone (T5Tokenizer's framing already).
      _frame_texts(out, tokenizer, start=None, eos=special.eos, end_with_eos=True,
                   pad=special.pad)
    with tf.io.gfile.GFile(os.path.join(out, "config.json")) as f:
      architecture = ", ".join(json.load(f).get("architectures") or ["a model"])
    logging.info("Wrote step %d of %s to %s: %s (%s).", step, workdir, out, architecture,
                 ", ".join(sorted(tf.io.gfile.listdir(out))))
  return out


def _write_tokenizer_config(out: str, tokenizer: dict) -> None:
  with tf.io.gfile.GFile(os.path.join(out, "tokenizer_config.json"), "w") as f:
    json.dump(tokenizer, f)


def _frame_texts(out: str, tokenizer_config: dict, *, start: int | None, eos: int,
                 end_with_eos: bool, pad: int | None = None) -> None:
  """Makes the tokenizer in `out` frame a text as the run's rows do: a tokenizer.json whose
  post-processor puts id `start` first (a GPT row's id 0) and, with `end_with_eos`, EOS last (a
  T5/BART encoder input's only special token). BertTokenizer adds [CLS] and [SEP] (a GPT's
  `generate` stopped at once; T5's relative positions all moved) and the byte tokenizer nothing
  (the encoder lost the EOS it always saw). vocab.txt / spiece.model stay for `--init hf:`
  (do_lower_case too)."""
  import transformers  # pylint: disable=g-import-not-at-top  (the interop extra, as safetensors)
  from tokenizers import processors  # pylint: disable=g-import-not-at-top
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  backend = tokenizer.backend_tokenizer
  first = [] if start is None else [(tokenizer.convert_ids_to_tokens(start), start)]
  last = [(tokenizer.convert_ids_to_tokens(eos), eos)] if end_with_eos else []
  names = [name for name, _ in first]
  backend.post_processor = processors.TemplateProcessing(
      single=" ".join([*names, "$A", *(n for n, _ in last)]),
      pair=" ".join([*names, "$A", "$B", *(n for n, _ in last)]),
      special_tokens=sorted(set(first + last), key=lambda t: t[1]))
  backend.save(os.path.join(out, "tokenizer.json"))
  # No token_type_ids: GPT-2 would add their (token) embeddings to every position.
  config = {**tokenizer_config, "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": tokenizer.convert_ids_to_tokens(eos),
            "model_input_names": ["input_ids", "attention_mask"]}
  if names:
    config["bos_token"] = names[0]
  if pad is not None:   # padded batches of encoder inputs (a GPT, as GPT-2, has no pad id)
    config["pad_token"] = tokenizer.convert_ids_to_tokens(pad)
  _write_tokenizer_config(out, config)


def _write_vocabulary(vocab_cfg, out: str) -> dict:
  """Writes the vocabulary file (a 'byte' vocabulary's: tokenizer.json) and tokenizer_config.json;
  returns the latter."""
  kind = vocab_cfg.get("kind", "default")
  if kind in ("default", "wordpiece"):   # its path may be a tokenizer.json: write the tokens
    tokens = vocabularies.get_vocabulary(vocab_cfg).tokens
    with tf.io.gfile.GFile(os.path.join(out, "vocab.txt"), "w") as f:   # also gs:// paths
      f.write("".join(t + "\n" for t in tokens))
    # The class, so that AutoTokenizer does not take the model type's (GPT-2's BPE, T5's
    # SentencePiece), which finds none of its files and tokenizes to nothing; do_lower_case is
    # read by it and by --init hf:.
    # extra_ids: seqio's sentinels above the file's tokens, which --init hf: adds back.
    tokenizer = {"tokenizer_class": "BertTokenizer",
                 "do_lower_case": kind == "default" or bool(vocab_cfg.get("lower_case", True)),
                 "extra_ids": int(vocab_cfg.get("extra_ids", 0) or 0)}
  elif kind == "sentencepiece":
    tf.io.gfile.copy(vocab_cfg.get("path"), os.path.join(out, "spiece.model"), overwrite=True)
    tokenizer = {"tokenizer_class": "T5Tokenizer",
                 "extra_ids": int(vocab_cfg.get("extra_ids", 0) or 0)}
  else:   # 'byte' (seqio's ByteVocabulary): no file; GPT-2's AutoTokenizer found no BPE files
    _write_byte_tokenizer(out, int(vocab_cfg.get("extra_ids", 0) or 0))
    tokenizer = {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>",
                 "eos_token": "</s>", "unk_token": "<unk>"}
  _write_tokenizer_config(out, tokenizer)
  return tokenizer


def _write_byte_tokenizer(out: str, extra_ids: int) -> None:
  """tokenizer.json of seqio's ByteVocabulary: pad, EOS, UNK at 0-2, each UTF-8 byte b at b + 3,
  sentinel i at 258 + extra_ids - i. It adds no special tokens."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  # GPT-2's byte-to-character table (what the ByteLevel pre-tokenizer emits for each byte).
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in printable]
  chars = {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}
  specials = ["<pad>", "</s>", "<unk>"]
  vocab = {**{t: i for i, t in enumerate(specials)}, **{chars[b]: b + 3 for b in range(256)}}
  tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.add_special_tokens(specials + [f"<extra_id_{i}>" for i in reversed(range(extra_ids))])
  tokenizer.save(os.path.join(out, "tokenizer.json"))
