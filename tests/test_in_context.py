"""GPT in-context evaluation: prompts, shot selection, log-likelihood scoring, greedy answers.

The slow test pretrains a tiny GPT (the `ssl-jax train` flags, run in this process) on text written
in a prompt format and scores it through `ssl-jax finetune`'s in-context path.
"""
import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from ssl_jax import config as config_lib
from ssl_jax import metrics as metrics_lib
from ssl_jax.data import corpora, vocabularies
from ssl_jax.finetune import in_context as ic
from ssl_jax.finetune import lm_init
from ssl_jax.finetune import metrics as task_metrics
from ssl_jax.finetune import run as finetune_run
from ssl_jax.models import config as model_config, decoding, gpt

import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMT = ic.PromptFormat(input_prefix='Review: ', output_prefix='\nSentiment:')


@pytest.fixture(autouse=True)
def highest_precision():
  with jax.default_matmul_precision('highest'):
    yield


@pytest.fixture(scope='module')
def vocab():
  return vocabularies.get_vocabulary(dict(kind='default', extra_ids=0))


@pytest.fixture(scope='module')
def tiny_gpt(vocab):
  cfg = dataclasses.replace(model_config.get_preset('gpt', 'tiny'), hidden_size=32, mlp_dim=64,
                            num_heads=2, max_length=48,
                            vocab_size=-(-vocab.vocab_size // 128) * 128)
  model = gpt.GPT(cfg)
  params = model.init(jax.random.key(0), np.zeros((1, 8), np.int32))['params']
  return model, jax.tree.map(lambda x: getattr(x, 'value', x), params,
                             is_leaf=lambda x: hasattr(x, 'value'))


def examples(n, seed=0):
  rng = np.random.default_rng(seed)
  words = ['dog', 'cat', 'tree', 'song', 'boat', 'cloud', 'soup', 'team']
  return [ic.Example(' '.join(rng.choice(words, rng.integers(1, 4))),
                     ('positive' if rng.integers(2) else 'negative',)) for _ in range(n)]


# ------------------------------------------------------------------------------ prompts
def test_zero_one_and_few_shot_prompts_are_built_literally():
  good, bad, query = (ic.Example('a gripping film', ('positive',)),
                      ic.Example('dull', ('negative',)), 'I loved it')
  assert ic.build_prompt(query, [], FMT) == 'Review: I loved it\nSentiment:'
  assert ic.build_prompt(query, [good], FMT) == (
      'Review: a gripping film\nSentiment: positive\n\nReview: I loved it\nSentiment:')
  fmt = dataclasses.replace(FMT, instruction='Classify the review.', example_separator='\n')
  assert ic.build_prompt(query, [good, bad], fmt) == (
      'Classify the review.\nReview: a gripping film\nSentiment: positive\n'
      'Review: dull\nSentiment: negative\nReview: I loved it\nSentiment:')
  assert FMT.completion('positive') == ' positive'
  # One-shot from a pool of one: that example, for every query.
  prompts = ic.build_prompts([ic.Example(query, ('positive',))] * 2, 1, [bad], FMT)
  assert prompts == ['Review: dull\nSentiment: negative\n\nReview: I loved it\nSentiment:'] * 2


def test_shot_selection_is_deterministic_by_seed_and_never_shows_the_query():
  picks = ic.select_shots(20, 3, seed=7)
  assert picks == ic.select_shots(20, 3, seed=7)
  assert picks != ic.select_shots(20, 3, seed=8)
  for i, chosen in enumerate(picks):
    assert len(set(chosen)) == 3 and i not in chosen and all(0 <= j < 20 for j in chosen)
  # A query's shots depend on its index and the seed only, not on how many queries there are.
  assert ic.select_shots(5, 2, seed=1, pool_size=9) == ic.select_shots(50, 2, seed=1,
                                                                       pool_size=9)[:5]
  with pytest.raises(ValueError, match='shots=4 but the shot pool has only 3'):
    ic.select_shots(4, 4, seed=0)


def test_task_files_become_examples_with_the_configs_answers(tmp_path):
  rte = tmp_path / 'rte.tsv'
  rte.write_text('sentence1\tsentence2\tlabel\tidx\nA cat sat.\tA cat.\t0\t0\nB.\tC.\t1\t1\n')
  config = ic.base_config('rte', text_template='{a}\nQuestion: {b} True or False?',
                          options='True,False')
  config.data.eval_file = str(rte)
  assert ic.read_examples(config, 'validation') == [
      ic.Example('A cat sat.\nQuestion: A cat. True or False?', ('True',)),
      ic.Example('B.\nQuestion: C. True or False?', ('False',))]
  config.in_context.options = 'yes'
  with pytest.raises(ValueError, match="options='yes' names 1 answers but task 'rte' has 2"):
    ic.read_examples(config, 'validation')
  # A file labelled with the user's names (data.labels): its label ids index those names, and
  # the task's own names in their order gave every example the other answer.
  sst2 = tmp_path / 'sst2.tsv'
  sst2.write_text('sentence\tlabel\nit is good\tpos\nit is bad\tneg\n')
  config = ic.base_config('sst2', text_template='{a}')
  config.data.update(eval_file=str(sst2), labels='pos,neg')
  assert [e.answers for e in ic.read_examples(config, 'validation')] == [('pos',), ('neg',)]
  squad = tmp_path / 'squad.json'
  squad.write_text(json.dumps({'data': [{'paragraphs': [{'context': 'Ann ran.', 'qas': [
      {'id': '1', 'question': 'Who?', 'answers': [{'text': 'Ann', 'answer_start': 0}]},
      {'id': '2', 'question': 'Why?', 'answers': [], 'is_impossible': True}]}]}]}))
  config = ic.base_config('squad', 'squad_json', text_template='Context: {a}\nQuestion: {b}')
  config.data.eval_file = str(squad)
  assert ic.read_examples(config, 'validation') == [
      ic.Example('Context: Ann ran.\nQuestion: Who?', ('Ann',), 'Ann ran.'),
      ic.Example('Context: Ann ran.\nQuestion: Why?', (), 'Ann ran.')]
  with pytest.raises(ValueError, match='config.data.train_file is empty'):
    ic.read_examples(config, 'train')


def test_squad_shots_from_the_eval_file_are_on_other_passages(tmp_path):
  # Shots were drawn from all other questions: a sibling question on the query's passage showed
  # it the passage (and that question's answer), though a query never demonstrates itself.
  passages = {'Ann ran home.': ['Who ran?', 'Where?'], 'Bob sat.': ['Who sat?', 'Did Bob sit?'],
              'Cy hid.': ['Who hid?']}
  squad = tmp_path / 'squad.json'
  squad.write_text(json.dumps({'data': [{'paragraphs': [
      {'context': context, 'qas': [{'id': q, 'question': q, 'answers': [], 'is_impossible': True}
                                   for q in questions]}
      for context, questions in passages.items()]}]}))
  config = ic.base_config('squad', 'squad_json', text_template='{a} Question: {b}')
  config.data.eval_file, config.in_context.shots = str(squad), 3
  evaluated = ic.check(config)
  for seed in range(4):
    for query, prompt in zip(evaluated, ic.build_prompts(evaluated, 3, seed=seed)):
      assert prompt.count(query.text.split(' Question:')[0]) == 1, prompt
  config.in_context.shots = 4   # a query on a two-question passage has 3 others
  with pytest.raises(ValueError, match=r'shots=4 is invalid: the shot pool \(the other eval '
                                       r'examples on other passages: .*\) holds only 3'):
    ic.check(config)


def test_squad_config_stops_an_answer_where_a_next_example_starts():
  config = config_lib.load_config_file(
      os.path.join(REPO, 'configs', 'finetune', 'in_context', 'squad.py'), 'pretrained')
  fmt = ic.prompt_format(config)
  demonstration = fmt.render(config.in_context.text_template.format(a='Ann ran.', b='Who?'), 'Ann')
  assert demonstration == 'Context: Ann ran.\nQuestion: Who?\nAnswer: Ann'
  # Newlines do not survive WordPiece or SentencePiece, so the separator cannot be the only stop.
  assert fmt.stops() == ['Context: ']


# ------------------------------------------------------------------------------ scoring
def reference_log_prob(model, params, vocab, prompt, completion, longest, bos=0):
  """log p(completion | prompt) from one unbatched, unpadded forward pass, the prompt's oldest
  tokens cut by hand to leave room for its longest option (`longest` tokens)."""
  context, comp = list(vocab.encode(prompt)), list(vocab.encode(completion))
  context = context[max(0, len(context) + longest - model.config.max_length):]
  tokens = np.array([[bos] + context + comp])
  logits = model.apply({'params': params}, tokens[:, :-1])
  log_probs = np.asarray(jax.nn.log_softmax(logits[0]))
  positions = np.arange(tokens.shape[1] - 1 - len(comp), tokens.shape[1] - 1)
  return log_probs[positions, tokens[0, positions + 1]].sum(), len(comp)


@pytest.mark.parametrize('length_normalize', [False, True])
def test_scores_equal_one_forward_pass_per_candidate(tiny_gpt, vocab, length_normalize):
  model, params = tiny_gpt
  evaluated, pool = examples(5), examples(6, seed=1)
  options = ('negative', 'positive', 'so so')   # completions of 8, 8 and 2 tokens
  result = ic.evaluate_in_context(model, params, vocab, evaluated, 2, shot_pool=pool,
                                  options=options, prompt_format=FMT, seed=3, batch_size=4,
                                  length_normalize=length_normalize, return_predictions=True)
  # Two shots of ~20 tokens each overflow max_length=48: the oldest prompt tokens go.
  assert result['truncated_prompts'] == 5
  expected = np.zeros((5, 3))
  longest = max(len(vocab.encode(FMT.completion(option))) for option in options)
  for i, prompt in enumerate(result['prompts']):
    for j, option in enumerate(options):
      total, count = reference_log_prob(model, params, vocab, prompt, FMT.completion(option),
                                        longest)
      expected[i, j] = total / count if length_normalize else total
  np.testing.assert_allclose(result['option_scores'], expected, atol=1e-4, rtol=1e-5)
  assert result['predictions'] == [options[j] for j in expected.argmax(1)]
  gold = [ex.answers[0] for ex in evaluated]
  assert result['accuracy'] == np.mean(np.array(result['predictions']) == np.array(gold))
  if not length_normalize:
    # A task's own metric (CoLA's Matthews correlation; the suite scored in-context CoLA by
    # accuracy), over label indices.
    mcc = ic.evaluate_in_context(model, params, vocab, evaluated, 2, shot_pool=pool,
                                 options=options, prompt_format=FMT, seed=3, batch_size=4,
                                 metrics=('matthews_corr',))
    index = lambda answers: [options.index(a) for a in answers]   # noqa: E731
    assert mcc['matthews_corr'] == task_metrics.matthews_corr(index(result['predictions']),
                                                              index(gold))


def test_a_truncated_prompts_options_see_the_same_context(tiny_gpt, vocab):
  # Each option was given the room its own length left: the 1-token option saw 4 more context
  # tokens than the 5-token one, so the options were compared given different prompts.
  model, params = tiny_gpt
  prompt = 'Review: ' + ' '.join(['dog cat tree'] * 12) + '\nSentiment:'   # 53 tokens > 48
  completions = [' good', ' so so so so so']
  scores, counts, truncated = ic.score_completions(model, params, vocab, [prompt] * 2,
                                                   completions, batch_size=4)
  assert counts.tolist() == [1, 5] and truncated.all()
  for score, completion in zip(scores, completions):
    expected, _ = reference_log_prob(model, params, vocab, prompt, completion, longest=5)
    np.testing.assert_allclose(score, expected, atol=1e-4, rtol=1e-5)


def test_config_errors_name_the_setting(tmp_path):
  # A variant typo was accepted; batch_size=0 ended in range()'s "arg 3 must not be zero".
  with pytest.raises(ValueError, match="config variant 'tinyy' is unknown"):
    config_lib.load_config_file(os.path.join(helpers.REPO, 'configs', 'finetune', 'in_context',
                                             'sst2.py'), 'tinyy')
  config = ic.base_config('sst2')
  config.in_context.batch_size = 0
  with pytest.raises(ValueError, match='config.in_context.batch_size=0 is invalid'):
    ic.run(config, str(tmp_path), 'none')
  # Checked before the model is read (the eval-suite checks every task before the first trains).
  # A repeated answer gave an untrained model accuracy 1.0; a template without {a} made every
  # prompt alike; too many shots failed after the model was loaded.
  sst2 = tmp_path / 'sst2.tsv'
  sst2.write_text('sentence\tlabel\nfine .\t1\nbad .\t0\ngood .\t1\n')
  for setting, value, message in (
      ('options', 'good,good', "options='good,good': each label needs its own non-empty answer"),
      ('options', 'good,', "options='good,': each label needs its own"),
      ('text_template', 'a review', "text_template='a review' is invalid: it must place"),
      ('text_template', '{a} {c}', r"text_template='\{a\} \{c\}' is invalid"),
      ('shots', 3, r"shots=3 is invalid: the shot pool \(the other eval examples: "
       r"config.data.train_file is empty\) holds only 2 examples"),
      ('seed', -1, 'seed=-1 is invalid'),   # failed in numpy's default_rng after the model
      ('max_new_tokens', 0, 'max_new_tokens=0 is invalid')):
    config = ic.base_config('sst2')
    config.data.eval_file = str(sst2)
    config.in_context[setting] = value
    with pytest.raises(ValueError, match=f'config.in_context.{message}'):
      ic.check(config)
  # A pair task's template without {b} left its second text (SQuAD's question) out of prompts.
  for pair, message in ((ic.base_config('rte'), "the second text of task 'rte'"),
                        (ic.base_config('squad', 'squad_json', text_template='Context: {a}'),
                         "the question of task 'squad'")):
    with pytest.raises(ValueError, match='config.in_context.text_template=.* leaves out '
                       + message):
      ic.check(pair)
  config.in_context.max_new_tokens, config.in_context.shots = 16, 2
  assert len(ic.check(config)) == 3
  # The eval file as train_file: a query's own answer was among its shots (2 of 6 prompts in a
  # 3-shot run). The pool is the other eval examples, as without a train file.
  config.data.train_file = str(sst2)
  ic.run(config, str(tmp_path / 'same'), 'none')
  with open(tmp_path / 'same' / 'eval_predictions.jsonl') as f:
    prompts = [json.loads(line)['prompt'] for line in f]
  for prompt, text in zip(prompts, ('fine .', 'bad .', 'good .')):
    assert prompt.count(text) == 1, prompt
  config.in_context.shots = 3
  with pytest.raises(ValueError, match=r"shots=3 is invalid: the shot pool \(the other eval "):
    ic.check(config)
  # Zero-shot reads no train file: the eval-suite's default train.tsv, absent, failed the task
  # after its model was loaded.
  config.data.train_file, config.in_context.shots = str(tmp_path / 'absent.tsv'), 0
  ic.run(config, str(tmp_path / 'zero'), 'none')
  assert os.path.exists(tmp_path / 'zero' / 'eval_results.json')


def test_tfds_shots_come_from_the_train_split():
  # With data.format='tfds' the shots came from the eval split, whatever data.train_split said.
  tfds = pytest.importorskip('tensorflow_datasets')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  texts = {'train': [b'a dog', b'a cat', b'a tree'], 'validation': [b'a song', b'a boat']}

  def as_dataset(builder, split, **unused):
    del builder, unused
    return tf.data.Dataset.from_tensor_slices({'sentence': texts[split], 'label': [1, 0, 1][
        :len(texts[split])], 'idx': list(range(len(texts[split])))})

  config = ic.base_config('sst2', 'tfds')
  config.in_context.shots = 3
  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    assert len(ic.check(config)) == 2
    config.in_context.shots = 4
    with pytest.raises(ValueError, match=r'shots=4 is invalid: the shot pool \(the TFDS sst2 '
                                         r'train split\) holds only 3 examples'):
      ic.check(config)
    config.data.train_split, config.in_context.shots = 'validation', 2
    with pytest.raises(ValueError, match=r'the shot pool \(the other eval examples: '
                                         r'config.data.train_split is the eval split\) holds only 1'):
      ic.check(config)


def test_greedy_answers_equal_generate_run_on_each_prompt(tiny_gpt, vocab):
  model, params = tiny_gpt
  prompts = ['Review: dog\nSentiment:', 'Review: a cat and a tree by the boat\nSentiment:',
             'Review: song\nSentiment: no\n\nReview: soup\nSentiment:']
  answers, truncated = ic.greedy_answers(model, params, vocab, prompts, max_new_tokens=5,
                                         batch_size=2)
  assert truncated == 0
  for prompt, answer in zip(prompts, answers):
    ids = [0] + list(vocab.encode(prompt))
    out = np.asarray(decoding.generate(model, params, np.array([ids]), 5))[0, len(ids):].tolist()
    out = out[:out.index(vocab.eos_id)] if vocab.eos_id in out else out
    assert answer == vocab.decode(out).strip()
  # Generation mode scores the greedy answers with the official SQuAD exact match and F1.
  # SQuAD v2.0's answerable (HasAns_*) and unanswerable (NoAns_*) scores were dropped.
  evaluated = [ic.Example('dog', ('a dog',)), ic.Example('cat', ('cat', '')),
               ic.Example('tree', ())]
  result = ic.evaluate_in_context(model, params, vocab, evaluated, 1, prompt_format=FMT,
                                  max_new_tokens=5, return_predictions=True)
  expected = task_metrics.squad_scores({'0': ['a dog'], '1': ['cat', ''], '2': []},
                                       dict(zip('012', result['predictions'])))
  del expected['total']   # result['num_examples']
  assert {'HasAns_f1', 'NoAns_exact'} <= set(expected)
  assert {k: result[k] for k in expected} == expected


def test_user_errors_name_the_setting(tiny_gpt, vocab):
  model, params = tiny_gpt
  with pytest.raises(ValueError, match=r"answers \('meh',\) do not start with one of options"):
    ic.evaluate_in_context(model, params, vocab, [ic.Example('x', ('meh',))],
                           options=('negative', 'positive'))
  with pytest.raises(ValueError, match='max_new_tokens=48'):
    ic.greedy_answers(model, params, vocab, ['x'], max_new_tokens=48)


# ------------------------------------------------------------------------------ a trained GPT
def _write_task(tmp_path):
  """A bag-of-words task over corpus nouns: label 1 ('good') iff the text holds a word of
  pool A. Returns (GPT training text file, eval TSV, shot-pool TSV) in SST-2 format."""
  nouns = sorted(w for w, (tag, rank) in corpora.lexicon().items()
                 if tag == 'NOUN' and rank < 300)
  pool_a, pool_b, neutral = nouns[:10], nouns[10:20], nouns[20:40]

  def sample(rng):
    label = int(rng.integers(2))
    words = list(rng.choice(pool_a if label else pool_b, rng.integers(1, 3)))
    words += list(rng.choice(neutral, rng.integers(1, 3)))
    rng.shuffle(words)
    return ' '.join(words), label

  rng = np.random.default_rng(0)
  names = ('old', 'good')   # answers for labels 0, 1: corpus words, one token each
  text = tmp_path / 'gpt_train.txt'
  with open(text, 'w') as f:
    for _ in range(400):
      shown = (sample(rng) for _ in range(6))
      f.write(' . '.join(f'{t} : {names[y]}' for t, y in shown) + ' .\n\n')
  files = []
  for name, n, seed in (('dev.tsv', 48, 1), ('train.tsv', 32, 2)):
    rng = np.random.default_rng(seed)
    with open(tmp_path / name, 'w') as f:
      f.write('sentence\tlabel\n' + ''.join('%s\t%d\n' % sample(rng) for _ in range(n)))
    files.append(str(tmp_path / name))
  return str(text), *files


@pytest.mark.slow
def test_trained_gpt_picks_the_right_label_in_context(tmp_path, vocab):
  text, dev, train = _write_task(tmp_path)
  run_dir = str(tmp_path / 'gpt')
  helpers.train_here(
      'gpt', run_dir, '--config.data.source=text_files', f'--config.data.text_files={text}',
      '--config.data.sequence_length=64', '--config.train.num_steps=200',
      '--config.train.global_batch_size=16', '--config.train.eval_steps=0',
      '--config.train.save_every=200', '--config.optim.warmup_steps=20', num_devices=1)

  config = config_lib.load_config_file(
      os.path.join(REPO, 'configs', 'finetune', 'in_context', 'sst2.py'), 'tiny')
  config.data.update(eval_file=dev, train_file=train)
  config.in_context.update(input_prefix='', output_prefix=' :', example_separator=' . ',
                           options='old,good', shots=2)
  # `ssl-jax finetune` with a GPT config scores the model in context (no training).
  workdir = str(tmp_path / 'in_context')
  scores = finetune_run.finetune(config, workdir, init=run_dir)
  assert scores['accuracy'] >= 0.9, scores
  with open(os.path.join(workdir, 'eval_results.json')) as f:
    results = json.load(f)
  assert results['scores'] == scores
  # the eval-suite's scores name the same (they named the config's 'causal_lm')
  assert results['objective'] == finetune_run.method(config) == 'in_context'
  # A re-run replaces its row. The pretraining run's own workdir is refused: its metrics.jsonl
  # was cut to the one in-context row and its config.json replaced.
  finetune_run.finetune(config, workdir, init=run_dir)
  assert len(metrics_lib.read_metrics(workdir)) == 1
  with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
    rows = f.read()
  with pytest.raises(ValueError, match=r"--workdir=.* holds another run"):
    finetune_run.finetune(config, run_dir, init=run_dir)
  with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
    assert f.read() == rows

  # Zero- and few-shot, ranked by log-likelihood and answered by greedy decoding.
  config = lm_init.config_from_init(config, run_dir, families=('gpt',))
  from ssl_jax import trainer  # pylint: disable=g-import-not-at-top
  exp = trainer.Experiment.build(config, devices=jax.devices()[:1])
  params = lm_init.params_from_init(config, run_dir, exp.layout)
  evaluated, pool = ic.read_examples(config, 'validation'), ic.read_examples(config, 'train')
  fmt = ic.PromptFormat('', ' :', ' ', ' . ')
  for shots in (0, 4):
    result = ic.evaluate_in_context(exp.model, params, vocab, evaluated, shots, shot_pool=pool,
                                    options=('old', 'good'), prompt_format=fmt)
    assert result['accuracy'] >= 0.9, (shots, result)
  result = ic.evaluate_in_context(exp.model, params, vocab, evaluated, 4, shot_pool=pool,
                                  prompt_format=fmt, max_new_tokens=3)
  assert result['exact'] >= 90.0, result
