"""Training-dynamics probes: every probe on real checkpoints or models of the four objectives,
the `ssl-jax probe` CLI and its determinism, and the closed-form probe maths."""
import filecmp
import gc
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import weakref

import jax
import numpy as np
import pytest

from ssl_jax import config as config_lib
from ssl_jax import trainer
from ssl_jax.models import layers
from ssl_jax.probes import cka
from ssl_jax.probes import data
from ssl_jax.probes import linear_probe
from ssl_jax.probes import predictions
from ssl_jax.probes import representations
from ssl_jax.probes import runner
from ssl_jax.probes import subject as subject_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_SENTENCES = 24


def tiny_config(name: str, **model):
  """configs/<name>.py:tiny shrunk for tests (short rows, small batches, a small corpus)."""
  config = config_lib.load_config_file(os.path.join(REPO, "configs", f"{name}.py"), "tiny")
  config.data.corpus.num_documents = 200
  config.data.shuffle_buffer = 16
  config.data.sequence_length = 32
  if config.objective == "mlm":
    config.data.mlm.max_predictions = 5
  config.train.update(global_batch_size=8, num_steps=4, log_every=2, eval_steps=0,
                      save_every=100, log_spaced_checkpoints=True)
  config.optim.warmup_steps = 1
  config.model.update(model)
  return config


@pytest.fixture(scope="module")
def bert_workdir(tmp_path_factory):
  """A real 4-step BERT run with log-spaced checkpoints 1, 2, 4."""
  workdir = str(tmp_path_factory.mktemp("bert"))
  trainer.train_and_evaluate(tiny_config("bert"), workdir)
  return workdir


@pytest.fixture(scope="module")
def text():
  return data.corpus_sentences(NUM_SENTENCES)


def test_probe_workdir_runs_every_bert_probe(bert_workdir):
  rows = runner.probe_workdir(bert_workdir, num_sentences=NUM_SENTENCES)
  assert sorted({r["step"] for r in rows}) == [1, 2, 4]
  assert {r["probe"] for r in rows} == set(runner.applicable("mlm"))
  assert all(math.isfinite(r["value"]) for r in rows)
  assert rows == runner.read_rows(bert_workdir)
  last = {(r["probe"], r["name"]): r["value"] for r in rows if r["step"] == 4}
  for tag in ("NOUN", "DET", "VERB", "PUNCT"):
    assert 0.0 <= last["pos_accuracy", f"accuracy/{tag}"] <= 1.0
  assert ("pos_accuracy", "accuracy/rank_0_50") in last
  assert {("masking_kind_loss", f"loss/{k}") for k in ("masked", "random", "kept")} <= set(last)
  assert ("linear_probe", "accuracy/layer_2") in last
  assert ("linear_probe", "accuracy_unseen_words/token_embedding") in last
  assert 0.0 < last["linear_probe", "majority_baseline_unseen_words"] < 1.0
  # In the default corpus each spelling has one tag: a lookup table of the training words' tags
  # is all but perfect on the seen test words, far above the one-tag baseline.
  assert last["linear_probe", "word_type_baseline"] > max(
      0.9, last["linear_probe", "majority_baseline"])
  assert last["contextual_similarity", "same_word/token_embedding"] == pytest.approx(1.0)
  assert last["cka", "vs_reference/layer_1"] == pytest.approx(1.0)   # the reference is step 4
  assert last["attention_entropy", "layer_2/head_4"] <= last["attention_entropy",
                                                                 "uniform_baseline"] + 1e-6


def test_probe_errors_name_the_probe_and_the_fix(bert_workdir, tmp_path):
  with pytest.raises(ValueError, match="'span_length_loss' does not apply to objective 'mlm'"):
    runner.probe_workdir(bert_workdir, ["span_length_loss"])
  with pytest.raises(ValueError, match="'pos_acuracy', which is not a probe"):
    runner.probe_workdir(bert_workdir, ["pos_acuracy"])
  with pytest.raises(ValueError, match=r"--steps names \[3\]"):
    runner.probe_workdir(bert_workdir, ["cka"], steps=[3])
  with pytest.raises(FileNotFoundError, match="no config.json"):
    runner.probe_workdir(os.path.dirname(bert_workdir), ["cka"])
  # An empty --probes wrote an empty probes.jsonl over the run's; a repeated one every row twice.
  with pytest.raises(ValueError, match="--probes names no probe"):
    runner.probe_workdir(bert_workdir, [])
  with pytest.raises(ValueError, match=r"--probes names \['cka'\] more than once"):
    runner.probe_workdir(bert_workdir, ["cka", "attention_entropy", "cka"])
  with pytest.raises(ValueError, match="--probe_sentences=0: probes need at least one sentence"):
    runner.probe_workdir(bert_workdir, ["cka"], num_sentences=0)
  finetuned = subject_lib.Subject.from_workdir(bert_workdir).config
  finetuned.objective = "classification"
  with pytest.raises(ValueError, match="--workdir='ft' holds a run of config.objective="
                                       "'classification': probes and `ssl-jax convert` read "
                                       "pretraining runs"):
    subject_lib.Subject(finetuned, "ft")
  cli = subprocess.run([sys.executable, "-m", "ssl_jax.main", "probe", f"--workdir={bert_workdir}",
                        "--steps=4,abc"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert cli.returncode != 0
  assert "--steps=4,abc: give checkpoint steps as integers" in cli.stderr, cli.stderr[-2000:]
  assert "--probe_sentences" not in cli.stderr   # the reason alone, not absl's page of usage
  # An empty --steps wrote an empty probes.jsonl over the run's results, exit 0.
  with pytest.raises(ValueError, match=r"steps=\[\] names no checkpoint step"):
    runner.probe_workdir(bert_workdir, ["cka"], steps=[])
  results = tmp_path / "results.jsonl"
  results.write_text('{"step": 4, "probe": "cka", "name": "x", "value": 1.0}\n')
  cli = subprocess.run([sys.executable, "-m", "ssl_jax.main", "probe", f"--workdir={bert_workdir}",
                        "--steps=", f"--out={results}"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert cli.returncode != 0
  assert "--steps= names no step" in cli.stderr, cli.stderr[-2000:]
  assert results.read_text().startswith('{"step": 4')
  # A Hugging Face directory (ssl-jax convert --to_hf of a convert output) died on a KeyError.
  (tmp_path / "config.json").write_text('{"model_type": "gpt2", "n_layer": 2}')
  with pytest.raises(ValueError, match="not an `ssl-jax train` run's"):
    runner.probe_workdir(str(tmp_path))
  # A text-to-text fine-tuning trains span corruption: it was probed without a word.
  t2t = config_lib.load_config_file(os.path.join(REPO, "configs/finetune/text_to_text.py"), "tiny")
  (tmp_path / "config.json").write_text(t2t.to_json_best_effort())
  with pytest.raises(ValueError, match=r"holds a fine-tuning run \(objective 'span_corruption', "
                                       r"--init 'none'\); `ssl-jax probe` reads pretraining runs"):
    runner.probe_workdir(str(tmp_path))


def test_probes_of_one_checkpoint_share_its_word_representations(bert_workdir):
  # Each probe builds its own rows of the shared text: the forward passes ran once per probe.
  subject = subject_lib.Subject.from_workdir(bert_workdir)
  text = data.tokenize(data.corpus_sentences(4), subject.vocab)
  params = subject.restore(4)
  first = representations.word_representations(subject, params,
                                               representations.clean_rows(subject, text))
  again = representations.word_representations(subject, params,
                                               representations.clean_rows(subject, text))
  assert again is first
  # A notebook's `del params` freed nothing: the cache held the checkpoint for good.
  leaf = weakref.ref(jax.tree.leaves(params)[0])
  del params
  assert leaf() is None


def test_an_interrupted_probe_run_keeps_the_checkpoints_it_finished(bert_workdir, tmp_path,
                                                                     monkeypatch):
  # probes.jsonl was written once, after the last checkpoint: a run killed part-way kept nothing.
  probes = ["pos_accuracy", "cka"]
  complete = runner.probe_workdir(bert_workdir, probes, num_sentences=4,
                                  out=str(tmp_path / "complete.jsonl"))
  restore = subject_lib.Subject.restore

  def restore_until_preempted(self, step):
    if step == 2:
      raise RuntimeError("preempted")
    return restore(self, step)

  monkeypatch.setattr(subject_lib.Subject, "restore", restore_until_preempted)
  out = str(tmp_path / "probes.jsonl")
  with pytest.raises(RuntimeError, match="preempted"):
    runner.probe_workdir(bert_workdir, probes, num_sentences=4, out=out)
  assert runner.read_rows(out) == [r for r in complete if r["step"] == 1]


def test_probe_workdir_keeps_no_checkpoint_alive(bert_workdir, tmp_path, monkeypatch):
  # The word-representation cache held the last checkpoint's params for the process's life.
  restore, restored = subject_lib.Subject.restore, []

  def restore_and_watch(self, step):
    params = restore(self, step)
    restored.extend(weakref.ref(leaf) for leaf in jax.tree.leaves(params))
    return params

  monkeypatch.setattr(subject_lib.Subject, "restore", restore_and_watch)
  runner.probe_workdir(bert_workdir, ["contextual_similarity", "cka"], num_sentences=4,
                       out=str(tmp_path / "probes.jsonl"))
  gc.collect()
  assert restored and all(ref() is None for ref in restored)


def test_probe_a_relative_workdir(bert_workdir, tmp_path, monkeypatch, caplog):
  # Orbax refuses relative paths: `ssl-jax probe --workdir runs/x` failed at the first restore.
  shutil.copytree(bert_workdir, tmp_path / "run", ignore=shutil.ignore_patterns("probes.jsonl"))
  monkeypatch.chdir(tmp_path)
  # A run on the user's text files, probed without --conllu: default-corpus sentences, said so.
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  saved["data"].update(source="text_files", text_files="my_corpus.txt")
  (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
  # --out in a directory that does not exist yet: it failed after every checkpoint was probed.
  rows = runner.probe_workdir("run", ["attention_entropy"], num_sentences=4, steps=[4],
                              out="new/elsewhere.jsonl")
  assert rows and all(r["step"] == 4 for r in rows)
  assert "trained on data.source='text_files', not the default corpus" in caplog.text
  # --out keeps an earlier run's probes.jsonl (the README's second command erased the first's).
  assert runner.read_rows("new/elsewhere.jsonl") == rows
  assert not os.path.exists("run/probes.jsonl")
  with pytest.raises(ValueError, match="--out='new' is a directory"):
    runner.probe_workdir("run", ["attention_entropy"], out="new")
  # An earlier probes file is replaced; the run's config.json or metrics.jsonl is not (it was:
  # the run could no longer resume).
  runner.probe_workdir("run", ["attention_entropy"], num_sentences=4, steps=[4],
                       out="new/elsewhere.jsonl")
  config = open("run/config.json", encoding="utf-8").read()
  with pytest.raises(ValueError, match="--out='run/config.json' exists and is not a probes file"):
    runner.probe_workdir("run", ["attention_entropy"], steps=[4], out="run/config.json")
  assert open("run/config.json", encoding="utf-8").read() == config


def test_conllu_probe_sentences(bert_workdir, tmp_path, caplog):
  path = tmp_path / "tiny.conllu"
  path.write_text("# sent_id = a\n"
                  "1\tThe\tthe\tDET\t_\t_\t2\tdet\t_\t_\n"
                  "2\tdogs\tdog\tNOUN\t_\t_\t3\tnsubj\t_\t_\n"
                  "3\tsleep\tsleep\tVERB\t_\t_\t0\troot\t_\t_\n"
                  "4\t.\t.\tPUNCT\t_\t_\t3\tpunct\t_\t_\n\n"
                  "1\tSynthesizers\t_\tNOUN\t_\t_\t2\tnsubj\t_\t_\n"
                  "2\thum\t_\tVERB\t_\t_\t0\troot\t_\t_\n\n")
  rows = runner.probe_workdir(bert_workdir, ["pos_accuracy"], conllu=[str(path)], steps=[4, 4])
  names = {r["name"] for r in rows}
  assert len(rows) == len(names)  # a step named twice is probed once
  assert {"accuracy/NOUN", "accuracy/VERB", "accuracy/all"} <= names
  assert "accuracy/ADJ" not in names
  bad = tmp_path / "bad.conllu"
  bad.write_text("1\tdog\tdog\tN\t_\t_\t0\troot\t_\t_\n\n")
  with pytest.raises(ValueError, match=r"tags \['N'\] are not UPOS tags"):
    data.conllu_sentences([str(bad)])
  # --probe_sentences=-3 dropped the last 3 sentences; a missing file or one without UPOS tags
  # named fine-tuning settings (config.data.train_file, --config.data.tag_column).
  with pytest.raises(ValueError, match="--probe_sentences=-3: probes need at least one sentence"):
    data.conllu_sentences([str(path)], -3)
  with caplog.at_level(logging.WARNING):   # fewer sentences than asked for: probed, and said
    assert len(data.conllu_sentences([str(path)], 5)) == 2
  assert "5 probe sentences asked for" in caplog.text and "hold 2" in caplog.text
  with pytest.raises(FileNotFoundError, match=r"--conllu names '.*missing.conllu', which does not"):
    data.conllu_sentences([str(tmp_path / "missing.conllu")])
  untagged = tmp_path / "untagged.conllu"
  untagged.write_text("1\tdog\tdog\t_\t_\t_\t0\troot\t_\t_\n\n")
  with pytest.raises(ValueError, match=r"--conllu '.*untagged.conllu' has no UPOS tags"):
    data.conllu_sentences([str(untagged)])


@pytest.mark.slow
def test_cli_writes_the_probes_jsonl_of_the_python_api(bert_workdir, tmp_path):
  copies = [str(tmp_path / f"run{i}") for i in range(2)]
  for copy in copies:
    shutil.copytree(bert_workdir, copy, ignore=shutil.ignore_patterns("probes.jsonl"))
  probes = ["pos_accuracy", "linear_probe", "cka", "attention_entropy"]
  # As a 2-process job (what `tpu_pod.py run -- ssl-jax probe` is): process 1 restored onto
  # jax.devices()[0], process 0's device, and failed.
  cli = subprocess.Popen(
      [sys.executable, os.path.join(REPO, "launch", "local.py"), "--num_processes=2",
       "--devices_per_process=1", "--", sys.executable, "-m", "ssl_jax.main", "probe",
       f"--probe_sentences={NUM_SENTENCES}", f"--probes={','.join(probes)}",
       f"--workdir={copies[0]}"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  runner.probe_workdir(copies[1], probes, num_sentences=NUM_SENTENCES)  # meanwhile, here
  out, _ = cli.communicate(timeout=600)
  assert cli.returncode == 0, out[-3000:]
  first, second = (os.path.join(c, "probes.jsonl") for c in copies)
  assert filecmp.cmp(first, second, shallow=False)
  rows = [json.loads(line) for line in open(first)]
  assert {r["step"] for r in rows} == {1, 2, 4} and set(rows[0]) == {"step", "probe", "name",
                                                                     "value"}


@pytest.mark.parametrize("name", ["gpt", "t5", "bart"])
def test_probes_on_the_other_objectives(name, text):
  subject = subject_lib.Subject(tiny_config(name))
  probe_text = data.tokenize(text, subject.vocab)
  if name == "gpt":   # as in a training loop: the trainer's TrainState, sharded on all devices
    params = trainer.Experiment.build(tiny_config(name)).init_state()
  else:
    params = subject.init_params()
  names = runner.applicable(subject.name)
  assert "pos_accuracy" in names and "masking_kind_loss" not in names
  results = {}
  for evaluator in runner.make_evaluators(subject, names, probe_text):
    results.update({(evaluator.name, n): v for n, v in evaluator.run(params)})
  assert all(math.isfinite(v) for v in results.values())
  assert 0.0 <= results["pos_accuracy", "accuracy/NOUN"] <= 1.0
  assert ("linear_probe", "accuracy/layer_2") in results
  if name == "gpt":   # next-token accuracy per POS; no spans to measure
    assert ("span_length_loss" not in names)
    with pytest.raises(ValueError, match="'span_length_loss' does not apply to objective "
                       "'causal_lm': it needs noise spans"):
      runner.make_evaluators(subject, ["span_length_loss"], probe_text)
  else:
    assert ("span_length_loss", "loss/span_1") in results
    assert ("span_length_loss", "loss/outside_spans") in results
  with pytest.raises(ValueError, match="'masking_kind_loss' does not apply"):
    runner.make_evaluators(subject, ["masking_kind_loss"], probe_text)


def test_pos_accuracy_reports_the_constant_prediction_baseline(text):
  # A model that predicts 'the' at every slot scores DET well without knowing anything: the
  # probe reports that baseline (`constant/`) beside each class's accuracy.
  subject = subject_lib.Subject(tiny_config("bert"))
  probe_text = data.tokenize(text, subject.vocab)
  [probe] = runner.make_evaluators(subject, ["pos_accuracy"], probe_text)
  the = subject.vocab.encode("the")[0]
  params = jax.device_get(subject.init_params())
  params["mlm_bias"] = np.asarray(params["mlm_bias"]).copy()
  params["mlm_bias"][the] = 1e4
  values = dict(probe.run(params))
  assert values["top_prediction_share"] == 1.0
  targets = probe.preds.batch["masked_targets"]
  scored = probe.preds.counts_for_pos & (probe.preds.weights > 0)
  det = scored & (probe.preds.pos == data.UPOS_TAGS.index("DET"))
  assert values["constant/DET"] == pytest.approx((targets[det] == the).mean())
  assert values["constant/DET"] > 0.2
  for tag in ("DET", "NOUN", "PUNCT", "all"):
    assert values[f"accuracy/{tag}"] == pytest.approx(values[f"constant/{tag}"])


def test_prediction_batches_cover_every_word_once(text):
  for name in ("bert", "t5", "bart"):
    subject = subject_lib.Subject(tiny_config(name))
    probe_text = data.tokenize(text, subject.vocab)
    preds = predictions.build(subject, probe_text, kind_ratios=(1.0, 0.0))
    scored = preds.counts_for_pos & (preds.weights > 0)
    if name == "t5":   # T5 never corrupts a sentence's first span
      assert 0.6 * probe_text.num_tokens < scored.sum() < probe_text.num_tokens
      _check_t5_rows(subject, data.tokenize(text[:1], subject.vocab))
    else:
      assert scored.sum() == probe_text.num_tokens
  # BERT: all [MASK] for pos_accuracy; config.data.mlm's 80/10/10 otherwise.
  bert = subject_lib.Subject(tiny_config("bert"))
  kinds = predictions.build(bert, data.tokenize(text, bert.vocab)).kind
  share = np.bincount(kinds[kinds > 0], minlength=4)[1:] / (kinds > 0).sum()
  assert share[0] > 0.6 and share[1] > 0.02 and share[2] > 0.02


def _check_t5_rows(subject, one_sentence):
  """Filling each input sentinel with its target span gives back the sentence, in every row."""
  sentinels = set(subject.special.sentinels)
  preds = predictions.build(subject, one_sentence)
  batch = preds.batch
  for r in range(preds.num_rows):
    inputs = batch["encoder_input_tokens"][r][batch["encoder_segment_ids"][r] > 0].tolist()
    present = batch["decoder_segment_ids"][r] > 0
    targets = batch["decoder_target_tokens"][r][present].tolist()
    # Scored: every target but a final `<s_n> EOS`'s sentinel (T5 training never ends so).
    tail_sentinel = len(targets) > 1 and targets[-2] in sentinels
    assert preds.weights[r][present].tolist() == [1.0] * (len(targets) - 2) + [
        0.0 if tail_sentinel else 1.0, 1.0]
    spans, current = {}, None
    for t in targets[:-1]:   # EOS ends both
      if t in sentinels:
        current = spans.setdefault(t, [])
      else:
        current.append(t)
    filled = [x for t in inputs[:-1] for x in (spans[t] if t in sentinels else [t])]
    assert filled == one_sentence.tokens[0].tolist()


def test_probe_rows_are_the_training_text_for_every_vocabulary_kind(text, tmp_path):
  # Tokenized word by word, a byte model read 'thedogsleeps.' and a SentencePiece model a lone
  # '▁' before every punctuation mark: text its training never showed it.
  from ssl_jax.data import corpora
  from ssl_jax.data import vocabularies
  training_text = [corpora.sentence_text(s) for d in corpora.generate_documents(100, 0) for s in d]
  spiece = vocabularies.train_sentencepiece(training_text, 300, str(tmp_path / "sp.model"))
  for vocab_cfg in (dict(kind="default"), dict(kind="byte"),
                    dict(kind="sentencepiece", path=spiece)):
    vocab = vocabularies.get_vocabulary(dict(vocab_cfg, extra_ids=0))
    probe_text = data.tokenize(text, vocab)
    for sentence, tokens, word_index in zip(text, probe_text.tokens, probe_text.word_index):
      assert tokens.tolist() == vocab.encode(corpora.sentence_text(sentence)), vocab_cfg
      assert (np.diff(word_index) >= 0).all()
    assert len(np.unique(probe_text.word_index[0])) >= len(text[0]) - 1
  # CoNLL-U sentences are read as written (their '# text'), not re-spaced word by word: a byte
  # model read "I ca n't go ( today ) ." (a user's UD file, e.g. EWT, is full of these).
  conllu = tmp_path / "s.conllu"
  conllu.write_text("# text = I can't go (today).\n" + "".join(
      f"{i}\t{form}\t_\t{tag}\t_\t_\t_\t_\t_\t_\n" for i, form, tag in (
          ("1", "I", "PRON"), ("2-3", "can't", "_"), ("2", "ca", "AUX"), ("3", "n't", "PART"),
          ("4", "go", "VERB"), ("5", "(", "PUNCT"), ("6", "today", "NOUN"), ("7", ")", "PUNCT"),
          ("8", ".", "PUNCT"))))
  byte = vocabularies.get_vocabulary(dict(kind="byte", extra_ids=0))
  probe_text = data.tokenize(data.conllu_sentences([str(conllu)]), byte)
  assert probe_text.tokens[0].tolist() == byte.encode("I can't go (today).")
  words = probe_text.word_index[0]
  assert [byte.decode(probe_text.tokens[0][words == i].tolist()) for i in range(4)] == [
      "I", " ca", "n't", " go"]


def test_gpt_predictions_fit_a_position_table_that_is_not_a_multiple_of_8():
  # Slots were rounded up to a multiple of 8 past model.max_length: a 60-token table failed on a
  # sentence of 57+ tokens ("inputs of 64 tokens exceed ... max_length=60").
  config = tiny_config("gpt", max_length=60)
  config.data.sequence_length = 60
  subject = subject_lib.Subject(config)
  sentence = [("the", "DET"), ("dog", "NOUN")] * 35 + [(".", "PUNCT")]   # cut to the table
  probe_text = data.tokenize([sentence], subject.vocab)
  preds = predictions.build(subject, probe_text)
  [probe] = runner.make_evaluators(subject, ["pos_accuracy"], probe_text)
  assert preds.batch["decoder_target_tokens"].shape[1] <= 60
  assert 0.0 <= dict(probe.run(subject.init_params()))["accuracy/all"] <= 1.0


def test_sentences_longer_than_the_model_are_cut_between_words_and_said(caplog):
  # A sentence past the model's positions was cut mid-word, silently: the word's first pieces kept
  # its part of speech and word type (same_word similarity 0.95 on EWT, where it is 1).
  subject = subject_lib.Subject(tiny_config("bert"))   # 32 positions: 30 sentence tokens
  words = [("the", "DET"), ("unbelievably", "ADV"), ("extraordinary", "ADJ"), ("dogs", "NOUN")]
  text = data.tokenize([words * 8, words], subject.vocab)
  pieces = np.bincount(text.word_index[0])
  assert len(text.tokens[0]) > subject.sentence_tokens and pieces.max() > 1
  for limit in range(1, len(text.tokens[0])):
    kept = data.fit(text, limit).word_index[0]
    whole = np.cumsum(pieces)   # tokens up to the end of each word
    assert len(kept) == whole[whole <= limit].max(initial=0), limit   # every whole word that fits
    if limit >= len(text.tokens[1]):
      np.testing.assert_array_equal(data.fit(text, limit).tokens[1], text.tokens[1])
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    rows = representations.clean_rows(subject, text)
    preds = predictions.build(subject, text)
  fitted = data.fit(text, subject.sentence_tokens)
  assert rows.text is fitted and caplog.text.count("probe sentences are longer") == 1
  assert (f"1 of 2 probe sentences are longer than the model's {subject.sentence_tokens} token "
          f"positions (the run's config.data.sequence_length, less the framing tokens): their "
          f"last {32 - (fitted.word_index[0][-1] + 1)} of 36 words are left out") in caplog.text
  assert preds.counts_for_pos.sum() <= sum(map(len, fitted.tokens))


def test_attention_probs_are_distributions_and_scan_agnostic(text):
  outs, params = [], None
  for scan in (False, True):
    subject = subject_lib.Subject(tiny_config("bert", scan_layers=scan))
    # The same weights in both layouts.
    params = layers.stack_layer_params(params) if scan else subject.init_params()
    rows = representations.clean_rows(subject, data.tokenize(text[:4], subject.vocab))
    outs.append(subject.attention_probs(params, rows.tokens, rows.segment_ids))
  probs = outs[0]
  assert probs.shape[:3] == (2, 4, 4)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)


def test_linear_probe_tests_seen_words_only_on_types_it_trained_on():
  rng = np.random.default_rng(0)
  word_type, sentence = rng.zipf(1.5, size=2000) % 300, np.repeat(np.arange(200), 10)
  split = linear_probe.word_splits(word_type, sentence, seed=0)
  assert (split["train"].astype(int) + split["test"] + split["unseen"] == 1).all()
  assert set(word_type[split["test"]]) <= set(word_type[split["train"]])
  assert not set(word_type[split["unseen"]]) & set(word_type[split["train"]])
  assert (sentence[split["test"]] % linear_probe.TEST_EVERY == 0).all()
  assert split["test"].sum() > 100 and split["unseen"].sum() > 100


def test_word_type_baseline_predicts_each_types_training_tag():
  pos = np.array([5, 5, 7, 7, 1, 5, 7, 1])
  word_type = np.array([0, 0, 0, 1, 1, 0, 1, 1])
  train = np.arange(8) < 5
  split = {"train": train, "test": ~train}
  # type 0 trained as 5, 5, 7 -> 5 (hit); type 1 as 7, 1 -> a tie, the lower tag 1 (miss, hit)
  assert linear_probe.word_type_baseline(pos, word_type, split) == pytest.approx(2 / 3)


def test_linear_probe_refuses_too_few_sentences_up_front(text):
  # One sentence left no training words: a bare LinAlgError after the checkpoint was read (a
  # test split without seen words wrote majority_baseline as null).
  subject = subject_lib.Subject(tiny_config("gpt"))
  with pytest.raises(ValueError, match=r"linear_probe: the 1 probe sentences leave no train and "
                     r"no test words .*--probe_sentences"):
    linear_probe.LinearProbe(subject, data.tokenize(text[:1], subject.vocab))
  assert linear_probe.LinearProbe(subject, data.tokenize(text, subject.vocab)).split["test"].any()


def test_ridge_and_cka_maths():
  rng = np.random.default_rng(0)
  labels = rng.integers(3, size=300)
  features = np.eye(3)[labels] @ rng.normal(size=(3, 8)) + 0.01 * rng.normal(size=(300, 8))
  model = linear_probe.ridge_fit(features, labels, 3)
  assert (linear_probe.ridge_predict(model, features) == labels).all()
  x = rng.normal(size=(200, 16))
  rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
  assert cka.linear_cka(x, 3.0 * x @ rotation + 1.0) == pytest.approx(1.0)
  assert cka.linear_cka(x, rng.normal(size=(200, 16))) < 0.3
