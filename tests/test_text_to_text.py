"""Text-to-text fine-tuning of T5 / BART: task formats, metrics on decoded text, train batches,
decoding (sharded, greedy vs beam 1), `--init`, and (slow) learning a generated task.

Beam search, greedy decoding and the KV cache against the full forward pass are tested at the
model level in test_encoder_decoder.py::test_kv_cache_greedy_and_beam_search (T5 and BART).
"""
import copy
import json
import os

import jax
import numpy as np
import pytest

from ssl_jax import metrics as metrics_lib
from ssl_jax import trainer
from ssl_jax.data import corpora, pipeline, vocabularies
from ssl_jax.finetune import formats, lm_init
from ssl_jax.finetune import text_to_text as t2t

import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def vocab():
  return vocabularies.get_vocabulary(dict(kind='default', extra_ids=100))


def tiny_config(family='t5', **data):
  """configs/finetune/text_to_text.py's tiny variant, smaller still."""
  config = t2t.base_config(family, 'tiny')
  config.model.update(vocab_size=-1, dropout_rate=0.0, hidden_size=64, mlp_dim=128, num_heads=2,
                      head_dim=32)
  config.data.update(sequence_length=32, targets_length=12, **data)
  config.train.update(global_batch_size=16, log_every=20)
  return config


def write(path, text):
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)
  return str(path)


# ------------------------------------------------------------------------------ tasks
def test_tasks_become_text_pairs_in_t5_format(tmp_path):
  sst2 = write(tmp_path / 'sst2.tsv', 'sentence\tlabel\nfun film \t1\ndull\t0\n')
  assert t2t.glue_pairs('sst2', formats.read_glue_tsv('sst2', sst2)) == [
      t2t.TextPair('sst2 sentence: fun film', 'positive', ('positive',)),
      t2t.TextPair('sst2 sentence: dull', 'negative', ('negative',))]
  rte = write(tmp_path / 'rte.tsv', 'sentence1\tsentence2\tlabel\tidx\nA b.\tB.\t1\t0\n')
  assert t2t.glue_pairs('rte', formats.read_glue_tsv('rte', rte)) == [
      t2t.TextPair('rte sentence1: A b. sentence2: B.', 'not_entailment', ('not_entailment',))]
  stsb = formats.TextExample('a', 'b', 3.13, '0')
  assert t2t.glue_pairs('stsb', [stsb])[0].targets == '3.2'
  # T5 orders the fields by name (t5.data.preprocessors.glue), so MNLI's hypothesis comes first.
  mnli = formats.TextExample('P.', 'H.', 0, '0')
  assert t2t.glue_pairs('mnli', [mnli])[0].inputs == 'mnli hypothesis: H. premise: P.'
  qa = [formats.QAExample('1', 'Who?', 'Ann ran.', (formats.Answer('Ann', 0),
                                                    formats.Answer('Ann ran', 0))),
        formats.QAExample('2', 'Why?', 'Ann ran.', ())]
  assert t2t.squad_pairs(qa) == [
      t2t.TextPair('question: Who? context: Ann ran.', 'Ann', ('Ann', 'Ann ran')),
      t2t.TextPair('question: Why? context: Ann ran.', '', ())]
  pairs = write(tmp_path / 'pairs.tsv', 'a b c\tc b a\n\nx\ty\n')
  assert t2t.read_tsv_pairs(pairs) == [t2t.TextPair('a b c', 'c b a', ('c b a',)),
                                       t2t.TextPair('x', 'y', ('y',))]
  with pytest.raises(ValueError, match="line 1 has 3 tab-separated fields; config.data.format"):
    t2t.read_tsv_pairs(write(tmp_path / 'bad.tsv', 'a\tb\tc\n'))
  config = tiny_config(format='tsv', train_file=pairs)
  with pytest.raises(ValueError, match='config.data.eval_file is empty'):
    t2t.read_pairs(config, 'validation')
  config.data.max_train_examples = 1
  assert len(t2t.read_pairs(config, 'train')) == 1


def test_decoded_text_is_scored_with_the_tasks_metric(vocab):
  # The default vocabulary lower-cases and splits punctuation, and so do decoded predictions.
  pairs = [t2t.TextPair('', 'not_entailment', ()), t2t.TextPair('', 'entailment', ())]
  assert t2t.score('rte', ['not _ entailment', 'not _ entailment'], pairs, vocab) == {
      'accuracy': 0.5}
  pairs = [t2t.TextPair('', 'positive', ()), t2t.TextPair('', 'negative', ())]
  assert t2t.score('sst2', ['positive', 'nonsense'], pairs, vocab) == {'accuracy': 0.5}
  pairs = [t2t.TextPair('', '1.0', ()), t2t.TextPair('', '4.2', ()), t2t.TextPair('', '2.0', ())]
  assert t2t.score('stsb', ['1.2', '4.0', '2.2'], pairs, vocab)['pearson'] > 0.9
  # STS-B scores as the WordPiece vocabulary decodes them (every score was -1 before: NaN).
  assert t2t.canonical(vocab, ['4.2']) == ['4 . 2']
  assert t2t.score('stsb', t2t.canonical(vocab, [p.targets for p in pairs]), pairs,
                   vocab)['pearson'] == pytest.approx(1.0)
  pairs = [t2t.TextPair('', 'Ann', ('Ann', 'Ann ran')), t2t.TextPair('', '', ())]
  assert t2t.score('squad', ['ann ran', ''], pairs, vocab) == {'exact': 100.0, 'f1': 100.0}
  pairs = [t2t.TextPair('', 'Hello, World', ()), t2t.TextPair('', 'x', ())]
  assert t2t.score('reverse', ['hello , world', 'y'], pairs, vocab) == {'accuracy': 0.5}
  # The metric follows the format: a tsv file under the default task name 'sst2' scored every
  # prediction right (its targets and wrong outputs all mapped to label -1).
  config = tiny_config(format='tsv')
  assert config.data.task == 'sst2'
  assert t2t.score(t2t.scored_as(config), ['y', 'z'], pairs, vocab) == {'accuracy': 0.0}
  config.data.format = 'squad_json'
  assert t2t.scored_as(config) == 'squad'


# ------------------------------------------------------------------------------ data
@pytest.mark.parametrize('family, pack', [('t5', False), ('bart', True)])
def test_train_batches_start_every_target_with_the_models_start_token(vocab, family, pack):
  config = tiny_config(family, pack=pack)
  config.data.targets_length = 16
  if family == 'bart':   # a start token other than seqio's 0, as an HF BART checkpoint has
    config.model.decoder_start_token_id = 2
  model_cfg = trainer.resolve_model_config(config)
  pairs = [t2t.TextPair('dog', 'cat', ()), t2t.TextPair('the tree', 'a big song', ())]
  task = t2t.make_task('pairs', {'train': pairs}, vocab)
  batch = next(t2t.make_train_iterator(config, task, model_cfg))
  assert set(batch) == set(pipeline.batch_spec(config))
  assert all(batch[k].shape == v.shape for k, v in pipeline.batch_spec(config).items())
  eos, start = vocab.eos_id, model_cfg.decoder_start_token_id
  assert start == (0 if family == 't5' else 2)
  targets = {tuple(vocab.encode(p.targets)) + (eos,) for p in pairs}
  inputs = {tuple(vocab.encode(p.inputs)) + (eos,) for p in pairs}
  for row in range(16):
    for segment in np.unique(batch['decoder_segment_ids'][row]):
      if segment == 0:
        continue
      dec = batch['decoder_segment_ids'][row] == segment
      enc = batch['encoder_segment_ids'][row] == segment
      target = batch['decoder_target_tokens'][row][dec]
      assert tuple(target) in targets
      assert tuple(batch['encoder_input_tokens'][row][enc]) in inputs
      np.testing.assert_array_equal(batch['decoder_input_tokens'][row][dec],
                                    np.concatenate([[start], target[:-1]]))
      np.testing.assert_array_equal(batch['decoder_positions'][row][dec], np.arange(dec.sum()))
  assert pack == (batch['decoder_segment_ids'].max() > 1)


def test_every_epoch_is_a_permutation_of_the_train_pairs(vocab):
  # seqio's shuffle buffer after its repeat mixed epochs: after one epoch's batches a third of
  # the pairs had not been seen and others up to five times.
  config = tiny_config('t5', pack=False)
  words = ('dog', 'cat', 'tree', 'song')
  pairs = [t2t.TextPair(' '.join(words[i // 4 ** k % 4] for k in range(3)), 'cat', ())
           for i in range(48)]   # 3 batches of 16
  model_cfg = trainer.resolve_model_config(config)
  it = t2t.make_train_iterator(config, t2t.make_task('pairs', {'train': pairs}, vocab), model_cfg)
  epochs = [[tuple(row[row > 0]) for _ in range(3) for row in next(it)['encoder_input_tokens']]
            for _ in range(2)]
  expected = sorted(tuple(vocab.encode(p.inputs)) + (vocab.eos_id,) for p in pairs)
  assert sorted(epochs[0]) == sorted(epochs[1]) == expected and epochs[0] != epochs[1]


# ------------------------------------------------------------------------------ decoding
def test_sharded_decoding_equals_unsharded_and_beam_one_equals_greedy(vocab):
  config = tiny_config('t5')
  exp = trainer.Experiment.build(config)   # 8 devices: rows are split 8 ways
  sharded = exp.init_state().params
  params = jax.device_get(sharded)   # host arrays: the unsharded calls run on one device
  inputs = ['dog', 'the tree by the river', 'a song', 'cat'] * 3
  kwargs = dict(max_input_length=16, max_decode_len=6, batch_size=5)
  greedy = t2t.predict(exp.model, params, vocab, inputs, **kwargs)
  assert len(greedy) == 12 and greedy[:4] == greedy[4:8]
  assert t2t.predict(exp.model, sharded, vocab, inputs, batch_sharding=exp.batch_sharding,
                     **kwargs) == greedy
  # With EOS, beam size 1 is greedy when scores are not length-normalised.
  assert t2t.predict(exp.model, params, vocab, inputs, decoding='beam', beam_size=1,
                     length_penalty=0.0, **kwargs) == greedy
  with pytest.raises(ValueError, match="config.eval.decoding='sample'"):
    t2t.predict(exp.model, params, vocab, inputs, decoding='sample', **kwargs)


def test_eval_targets_longer_than_decoding_writes_are_warned_about(vocab, caplog, tmp_path):
  # Decoding stops after max_decode_len (or targets_length) tokens, so such a target could never
  # be matched; only eval inputs were checked, and its row was scored wrong without a word.
  config = tiny_config(format='tsv')
  pairs = [t2t.TextPair('a question', ' '.join(['word'] * n), ()) for n in (3, 100, 200)]
  with caplog.at_level('WARNING'):
    t2t._warn_if_truncated(pairs, vocab, config, 'eval')
  assert ('2 of 3 eval targets are longer than config.data.targets_length=12 tokens, the most '
          'decoding writes, and cannot be matched') in caplog.text
  caplog.clear()
  config.eval.max_decode_len = 1000
  with caplog.at_level('WARNING'):
    t2t._warn_if_truncated(pairs, vocab, config, 'eval')
  assert 'eval targets' not in caplog.text
  # eval_results.json names the task its scores are of: a tsv run recorded data.task's default.
  t2t._write_results(str(tmp_path), config, 1, {'accuracy': 1.0}, [], [])
  with open(os.path.join(tmp_path, metrics_lib.RESULTS_FILE)) as f:
    assert json.load(f)['task'] == 'tsv'


@pytest.mark.parametrize('setting, value, message', [
    ('decoding', 'beem', "config.eval.decoding='beem'"),
    ('beam_size', 0, 'config.eval.beam_size=0 is invalid'),
    ('max_decode_len', 129, 'config.eval.max_decode_len=129 exceeds'),
])
def test_eval_settings_are_refused_before_training(tmp_path, setting, value, message):
  # They were read only when the first eval decoded, after train.eval_every steps.
  config = tiny_config('bart', format='tsv', train_file=write(tmp_path / 'p.tsv', 'a\tb\n'),
                       eval_file=write(tmp_path / 'e.tsv', 'a\tb\n'))
  config.model.max_length = 128
  config.eval[setting] = value
  with pytest.raises(ValueError, match=message):
    t2t.finetune(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_packing_with_epochs_is_refused_before_training(tmp_path):
  # The epochs' step count is ceil(epochs * pairs / batch), but a packed row holds several pairs:
  # a run of num_epochs=1 was measured to train 2.0 epochs.
  config = tiny_config(format='tsv', pack=True,
                       train_file=write(tmp_path / 'p.tsv', 'a dog\tb\n' * 64),
                       eval_file=write(tmp_path / 'e.tsv', 'a\tb\n'))
  config.finetune.num_epochs = 1.0
  with pytest.raises(ValueError, match=r'config.data.pack=True and '
                     r'config.finetune.num_epochs=1.0: .* Set --config.finetune.num_epochs=0 and --config.train.num_steps=N, or '
                     r'--config.data.pack=False.'):
    t2t.prepare(config)
  config.finetune.num_epochs = 0.0   # train.num_steps decides: packing is fine
  assert t2t.prepare(config).train.num_steps == 1000
  config.update_from_flattened_dict({'data.pack': False, 'finetune.num_epochs': 1.0})
  assert t2t.prepare(config).train.num_steps == 4   # 64 pairs of 16 per batch


# ------------------------------------------------------------------------------ --init
def test_init_takes_model_vocabulary_and_params_from_a_run(tmp_path, monkeypatch):
  devices = jax.devices()[:1]
  pretrain = tiny_config('bart')   # a BART span-corruption run
  pretrain.model.hidden_size = 96   # differs from the fine-tuning config's model
  saved = helpers.save_untrained_run(str(tmp_path / 'bart'), pretrain, devices)

  finetune = tiny_config('t5')
  finetune.model.dropout_rate = 0.2  # a fine-tuning choice: kept over the run's 0.0
  config = lm_init.config_from_init(finetune, str(tmp_path / 'bart'), ('t5', 'bart'))
  assert (config.model.family, config.model.hidden_size, config.model.dropout_rate,
          config.finetune.init) == ('bart', 96, 0.2, str(tmp_path / 'bart'))
  exp = trainer.Experiment.build(config, devices)
  for init in (str(tmp_path / 'bart'), str(tmp_path / 'bart' / 'checkpoints' / '1')):
    params = lm_init.params_from_init(config, init, exp.layout)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), saved)
  assert lm_init.params_from_init(config, 'none', exp.layout) is None
  # A config with the other layer layout (scan_layers) gets the run's layers stacked (it was
  # refused); a relative run directory works (Orbax refused it at the first save and restore).
  stacked = copy.deepcopy(config)
  stacked.model.scan_layers = True
  monkeypatch.chdir(tmp_path)
  params = lm_init.params_from_init(stacked, 'bart', trainer.Experiment.build(stacked, devices).layout)
  np.testing.assert_array_equal(
      params['encoder']['stack']['layers']['mlp']['wi']['kernel'][1],
      saved['encoder']['stack']['layers_1']['mlp']['wi']['kernel'])
  helpers.save_untrained_run('relative_run', tiny_config('t5'), devices)
  assert os.path.isdir(tmp_path / 'relative_run' / 'checkpoints' / '1')

  with pytest.raises(ValueError, match="is a 'bart' model; this run needs 'gpt'"):
    lm_init.config_from_init(tiny_config('t5'), str(tmp_path / 'bart'), ('gpt',))
  with pytest.raises(FileNotFoundError, match='neither'):
    lm_init.config_from_init(tiny_config('t5'), str(tmp_path), ('t5',))


def test_init_from_a_hugging_face_t5(tmp_path):
  import transformers  # pylint: disable=g-import-not-at-top
  hf_config = transformers.T5Config(vocab_size=1024, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                    num_heads=4, feed_forward_proj='gated-gelu',
                                    tie_word_embeddings=False, decoder_start_token_id=0)
  transformers.T5ForConditionalGeneration(hf_config).save_pretrained(tmp_path / 'hf_t5')
  init = f'hf:{tmp_path / "hf_t5"}'
  with pytest.raises(ValueError, match="neither spiece.model nor vocab.txt, and "
                     "config.data.vocab.kind='default'"):
    lm_init.config_from_init(tiny_config('bart'), init, ('t5', 'bart'))
  # T5's SentencePiece model, next to the weights, becomes the vocabulary.
  sentences = [corpora.sentence_text(s) for d in corpora.generate_documents(50, 0) for s in d]
  spiece = str(tmp_path / 'hf_t5' / 'spiece.model')
  vocabularies.train_sentencepiece(sentences, 200, spiece)
  config = lm_init.config_from_init(tiny_config('bart'), init, ('t5', 'bart'))
  assert (config.model.family, config.model.hidden_size) == ('t5', 32)
  assert (config.data.vocab.kind, config.data.vocab.path) == ('sentencepiece', spiece)
  exp = trainer.Experiment.build(config, jax.devices()[:1])
  params = lm_init.params_from_init(config, init, exp.layout)
  from ssl_jax.interop import hf  # pylint: disable=g-import-not-at-top
  _, expected = hf.from_pretrained(str(tmp_path / 'hf_t5'))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), expected)


# ------------------------------------------------------------------------------ learning
def write_sentiment_task(tmp_path):
  """SST-2-format files of a generated task: label 1 iff the sentence holds a word of pool A
  (corpus nouns; pool B words mark label 0, other nouns are noise)."""
  nouns = sorted(w for w, (tag, rank) in corpora.lexicon().items()
                 if tag == 'NOUN' and rank < 300)
  paths = []
  for name, n, seed in (('train.tsv', 512, 0), ('dev.tsv', 64, 1)):
    rng = np.random.default_rng(seed)
    lines = ['sentence\tlabel']
    for _ in range(n):
      label = int(rng.integers(2))
      words = list(rng.choice(nouns[:10] if label else nouns[10:20], rng.integers(1, 4)))
      words += list(rng.choice(nouns[20:40], rng.integers(1, 4)))
      rng.shuffle(words)
      lines.append(f'{" ".join(words)}\t{label}')
    paths.append(write(tmp_path / name, '\n'.join(lines) + '\n'))
  return paths


@pytest.mark.slow
# The tiny BART learns the label between steps 150 and 200 (data seeds 0-2; 150 sufficed while
# the stream sampled pairs as if with replacement, not an epoch at a time).
@pytest.mark.parametrize('family, steps, learning_rate', [('t5', 100, 3e-3), ('bart', 200, 1e-3)])
def test_text_to_text_learns_a_generated_task(tmp_path, family, steps, learning_rate):
  train, dev = write_sentiment_task(tmp_path)
  config = tiny_config(family, train_file=train, eval_file=dev)
  config.train.update(num_steps=steps // 2, eval_every=1000, save_every=1000)
  config.optim.learning_rate = learning_rate
  workdir = str(tmp_path / 'run')
  devices = jax.devices()[:1]
  t2t.finetune(config, workdir, devices=devices)
  # Re-running with more steps resumes from the checkpoint (state and data position).
  config.train.num_steps = steps
  scores = t2t.finetune(config, workdir, devices=devices)
  assert scores['accuracy'] >= 0.9, scores   # chance: 0.5
  with open(os.path.join(workdir, metrics_lib.RESULTS_FILE)) as f:
    assert json.load(f)['scores'] == scores
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert [r['step'] for r in rows if r['split'] == 'eval'] == [steps // 2, steps]
  with open(os.path.join(workdir, t2t.PREDICTIONS_FILE)) as f:
    predictions = [json.loads(line) for line in f]
  assert len(predictions) == 64 and {p['prediction'] for p in predictions} <= {
      'positive', 'negative'}
  # Beam search over the fine-tuned model agrees (the run is finished: only re-scored).
  config.eval.decoding = 'beam'
  assert t2t.finetune(config, workdir, devices=devices)['accuracy'] >= 0.9
  # Its row replaced the final one (each re-score appended another row of the step).
  assert [r['step'] for r in metrics_lib.read_metrics(workdir, 'eval')] == [steps // 2, steps]
