"""EncoderDecoder (T5 v1.1, BART, pre-norm BART = mBART): parity with transformers, HF round
trip, packing, presets, KV-cache decoding, greedy and beam search, and rejection of HF options
ssl_jax lacks."""
import dataclasses
import functools
import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.interop import hf as hf_interop
from ssl_jax.interop import hf_encoder_decoder
from ssl_jax.models import config as config_lib
from ssl_jax.models import decoding
from ssl_jax.models import dense
from ssl_jax.models import layers
from ssl_jax.models.encoder_decoder import EncoderDecoder

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

VOCAB, ENC_LEN, DEC_LEN = 96, 13, 9


@pytest.fixture(autouse=True)
def _highest_precision():
  with jax.default_matmul_precision('highest'):
    yield


def _hf_config(family):
  if family == 't5':   # v1.1: gated-gelu, untied head; few buckets so the log buckets are used
    return transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=12,
        feed_forward_proj='gated-gelu', tie_word_embeddings=False, dropout_rate=0.0,
        attn_implementation='eager')
  config_cls = transformers.MBartConfig if family == 'mbart' else transformers.BartConfig
  return config_cls(
      vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=3,
      encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
      decoder_ffn_dim=48, max_position_embeddings=32, scale_embedding=True, dropout=0.0,
      activation_dropout=0.0, attention_dropout=0.0, attn_implementation='eager')


@functools.lru_cache(maxsize=None)
def _hf_model(family):
  """A randomly initialised HF model whose norms, biases and head are perturbed away from
  their trivial initial values, so that every converted tensor matters."""
  torch.manual_seed(0)
  cls = {'t5': transformers.T5ForConditionalGeneration,
         'bart': transformers.BartForConditionalGeneration,
         'mbart': transformers.MBartForConditionalGeneration}[family]
  model = cls(_hf_config(family)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'norm' in name:
        p.add_(0.1 * torch.randn_like(p))
      if name.endswith('bias'):
        p.normal_(0.0, 0.1)
    if family == 't5':   # transformers >= 5 ties a fresh T5's head; v1.1 has its own
      model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    else:
      model.final_logits_bias.normal_(0.0, 0.5)
  return model


def _converted(family, **changes):
  """(EncoderDecoder, params) converted from `_hf_model(family)` (cheaper than an init)."""
  hf_model = _hf_model(family)
  cfg = dataclasses.replace(hf_encoder_decoder.config_from_hf(hf_model.config), **changes)
  return EncoderDecoder(cfg), hf_encoder_decoder.params_from_hf(
      cfg, {k: v.numpy() for k, v in hf_model.state_dict().items()})


@functools.partial(jax.jit, static_argnums=0)
def _logits(model, params, *args):
  return model.apply({'params': params}, *args)


def _inputs(seed=0):
  rng = np.random.RandomState(seed)
  enc = rng.randint(3, VOCAB, (3, ENC_LEN))
  dec = rng.randint(3, VOCAB, (3, DEC_LEN))
  enc_mask = (np.arange(ENC_LEN)[None] < np.array([[13], [7], [10]])).astype(np.int32)
  dec_mask = (np.arange(DEC_LEN)[None] < np.array([[9], [4], [6]])).astype(np.int32)
  return enc, dec, enc_mask, dec_mask


def _torch_logits(model, enc, dec, enc_mask, dec_mask):
  with torch.no_grad():
    return model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc_mask),
                 decoder_input_ids=torch.tensor(dec),
                 decoder_attention_mask=torch.tensor(dec_mask)).logits.numpy()


@pytest.mark.parametrize('scan_layers', [False, True])
@pytest.mark.parametrize('family', ['t5', 'bart', 'mbart'])
def test_converted_hf_model_gives_same_logits(family, scan_layers):
  hf_model = _hf_model(family)
  model, params = _converted(family, scan_layers=scan_layers)
  cfg = model.config
  enc, dec, enc_mask, dec_mask = _inputs()
  ours = np.asarray(_logits(model, params, enc, dec, enc_mask, dec_mask))
  theirs = _torch_logits(hf_model, enc, dec, enc_mask, dec_mask)
  real = dec_mask.astype(bool)   # HF's outputs at padded decoder positions are arbitrary
  np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=0)
  # params_to_hf inverts params_from_hf exactly.
  back = hf_encoder_decoder.params_to_hf(cfg, params)
  for name, value in hf_model.state_dict().items():
    np.testing.assert_array_equal(back[name], value.numpy(), err_msg=name)


@pytest.mark.parametrize('family', ['t5', 'bart', 'mbart'])
def test_save_pretrained_loads_in_transformers(family, tmp_path):
  model, params = _converted(family)
  noise = np.random.RandomState(1)   # new values, so the test does not just echo HF's weights
  params = jax.tree.map(lambda x: x + 0.05 * noise.standard_normal(x.shape).astype(x.dtype),
                        params)
  enc, dec, enc_mask, dec_mask = _inputs(seed=1)
  hf_interop.save_pretrained(model, params, str(tmp_path))
  if family == 't5':
    # transformers 5 wrote an untied T5 as tie_word_embeddings=true + scale_decoder_outputs=false,
    # which transformers 4 loads as a tied T5 v1.0 (its lm_head dropped), with no error.
    with open(tmp_path / 'config.json', encoding='utf-8') as f:
      written = json.load(f)
    assert written['tie_word_embeddings'] == model.config.tie_word_embeddings is False
    assert 'scale_decoder_outputs' not in written
  hf_model = transformers.AutoModelForSeq2SeqLM.from_pretrained(
      str(tmp_path), attn_implementation='eager').eval()
  assert type(hf_model).__name__ == {'t5': 'T5ForConditionalGeneration',
                                     'bart': 'BartForConditionalGeneration',
                                     'mbart': 'MBartForConditionalGeneration'}[family]
  ours = np.asarray(_logits(model, params, enc, dec, enc_mask, dec_mask))
  theirs = _torch_logits(hf_model, enc, dec, enc_mask, dec_mask)
  real = dec_mask.astype(bool)
  np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=0)
  # ... and from_pretrained brings back the same params.
  _, loaded = hf_interop.from_pretrained(str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, params))


@pytest.mark.parametrize('family', ['t5', 'bart'])
def test_packed_row_equals_each_segment_alone(family):
  model, params = _converted(family)
  rng = np.random.RandomState(2)
  enc_lens, dec_lens, enc_len, dec_len = (5, 7), (4, 3), 14, 8
  a_enc, b_enc = (rng.randint(3, VOCAB, n) for n in enc_lens)
  a_dec, b_dec = (rng.randint(3, VOCAB, n) for n in dec_lens)

  def row(parts, length):   # tokens, segment ids, positions of the parts packed left to right
    tokens, segs, pos = (np.zeros(length, np.int32) for _ in range(3))
    start = 0
    for seg, part in enumerate(parts, 1):
      tokens[start:start + len(part)] = part
      segs[start:start + len(part)] = seg
      pos[start:start + len(part)] = np.arange(len(part))
      start += len(part)
    return tokens, segs, pos

  # Row 0: both examples packed; rows 1 and 2: each example alone (right-padded).
  enc_rows = [row([a_enc, b_enc], enc_len), row([a_enc], enc_len), row([b_enc], enc_len)]
  dec_rows = [row([a_dec, b_dec], dec_len), row([a_dec], dec_len), row([b_dec], dec_len)]
  enc, enc_seg, enc_pos = (np.stack(x) for x in zip(*enc_rows))
  dec, dec_seg, dec_pos = (np.stack(x) for x in zip(*dec_rows))
  logits = np.asarray(_logits(model, params, enc, dec, enc_seg, dec_seg, enc_pos, dec_pos))
  na, nb = dec_lens
  np.testing.assert_allclose(logits[0, :na], logits[1, :na], atol=1e-5, rtol=0)
  np.testing.assert_allclose(logits[0, na:na + nb], logits[2, :nb], atol=1e-5, rtol=0)
  assert not np.allclose(logits[1, :nb], logits[2, :nb], atol=1e-3)   # the test can fail


@pytest.mark.parametrize('family, expected', [('t5', 248e6), ('bart', 140e6)])
def test_preset_base_parameter_count(family, expected):
  cfg = dataclasses.replace(config_lib.get_preset(family, 'base'), scan_layers=True)
  tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda e, d: EncoderDecoder(cfg).init(jax.random.key(0), e, d),
                          tokens, tokens)['params']
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert abs(count - expected) / expected < 0.01, count


@pytest.mark.parametrize('family', ['t5', 'bart'])
@pytest.mark.parametrize('scan_layers', [False, True])
def test_every_param_has_logical_axes(family, scan_layers):
  cfg = dataclasses.replace(config_lib.get_preset(family, 'tiny'), scan_layers=scan_layers)
  tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  variables = jax.eval_shape(lambda e, d: EncoderDecoder(cfg).init(jax.random.key(0), e, d),
                             tokens, tokens)
  allowed = {'embed', 'mlp', 'heads', 'kv', 'vocab', 'layers', None}
  is_box = lambda x: isinstance(x, flax.core.meta.Partitioned)
  for box in jax.tree.leaves(variables['params'], is_leaf=is_box):
    assert is_box(box), type(box)
    assert set(box.names) <= allowed and len(box.names) == box.value.ndim, box.names
    assert ('layers' in box.names) == (scan_layers and box.names[0] == 'layers')


@pytest.mark.parametrize('family, scan_layers', [('t5', True), ('bart', False),
                                                ('mbart', True)])
def test_kv_cache_greedy_and_beam_search(family, scan_layers):
  model, params = _converted(family, scan_layers=scan_layers)
  cfg = model.config
  max_decode_len = 6
  enc, _, enc_mask, _ = _inputs(seed=3)

  greedy = np.asarray(decoding.seq2seq_generate(model, params, enc, max_decode_len,
                                                encoder_segment_ids=enc_mask))
  assert (greedy[:, 0] == cfg.decoder_start_token_id).all()

  # Greedy == the argmax loop re-running the full forward on the growing prefix (padded to
  # one shape: the causal mask hides what follows the prefix).
  tokens = np.full_like(greedy, cfg.pad_token_id)
  tokens[:, 0] = cfg.decoder_start_token_id
  for i in range(max_decode_len):
    full = np.asarray(_logits(model, params, enc, tokens, enc_mask))
    tokens[:, i + 1] = full[:, i].argmax(-1)
  np.testing.assert_array_equal(greedy, tokens)

  # Fed any tokens one at a time, the KV-cache decoder gives the full decoder's logits.
  forced = np.random.RandomState(5).randint(3, VOCAB, greedy.shape)
  full = np.asarray(_logits(model, params, enc, forced, enc_mask))
  cache = decoding.init_cache(model, jax.ShapeDtypeStruct(enc.shape, jnp.int32),
                              jax.ShapeDtypeStruct(greedy.shape, jnp.int32))
  encoded = model.apply({'params': params}, enc, enc_mask, method='encode')
  step = jax.jit(lambda cache, token: model.apply(
      {'params': params, 'cache': cache}, encoded, token, enc_mask, decode=True,
      mutable=['cache'], method='decode'))
  for i in range(forced.shape[1]):
    step_logits, variables = step(cache, forced[:, i:i + 1])
    cache = variables['cache']
    np.testing.assert_allclose(step_logits[:, 0], full[:, i], atol=1e-4, rtol=0)

  # Beam size 1 is greedy (no EOS, so hypotheses never finish early).
  beams, _ = decoding.beam_search(model, params, enc, max_decode_len, beam_size=1,
                                  encoder_segment_ids=enc_mask, length_penalty=1.0)
  np.testing.assert_array_equal(beams[:, 0], greedy)

  # Beam size 4 with EOS: best first, and each score is the hypothesis' log-probability
  # under the full model divided by its generated length ** length_penalty.
  eos, alpha = int(greedy[0, 3]), 0.6   # a token the model likes, so some beams finish
  beams, scores = decoding.beam_search(model, params, enc, max_decode_len, beam_size=4,
                                       encoder_segment_ids=enc_mask, eos_id=eos,
                                       length_penalty=alpha)
  beams, scores = np.asarray(beams), np.asarray(scores)
  assert (np.diff(scores, axis=1) <= 1e-6).all()
  assert (beams[:, :, 1:] == eos).any()
  for beam in range(4):
    log_probs = np.asarray(jax.nn.log_softmax(
        _logits(model, params, enc, beams[:, beam], enc_mask)))
    for row, seq in enumerate(beams[:, beam]):
      ends = np.flatnonzero(seq[1:] == eos)
      length = ends[0] + 1 if len(ends) else max_decode_len
      total = log_probs[row, np.arange(length), seq[1:length + 1]].sum()
      assert (seq[length + 1:] == cfg.pad_token_id).all()
      np.testing.assert_allclose(scores[row, beam], total / length ** alpha, atol=1e-4)


@pytest.mark.parametrize('family, scan_layers, remat_policy', [
    ('t5', False, 'none'), ('t5', True, 'full'), ('bart', False, 'full'), ('bart', True, 'none')])
def test_decoding_projects_the_encoder_output_once(family, scan_layers, remat_policy):
  # Every decode step projected the whole encoder output into each layer's cross-attention
  # keys and values again. The first step now adds them to the cache and later steps read
  # them: fed a zero encoder output from the second step on, the steps still give the full
  # decoder's logits.
  model, params = _converted(family, scan_layers=scan_layers, remat_policy=remat_policy)
  enc, dec, enc_mask, _ = _inputs(seed=3)
  full = np.asarray(_logits(model, params, enc, dec, enc_mask))
  encoded = model.apply({'params': params}, enc, enc_mask, method='encode')
  cache = decoding.init_cache(model, jax.ShapeDtypeStruct(enc.shape, jnp.int32),
                              jax.ShapeDtypeStruct(dec.shape, jnp.int32))
  step = jax.jit(lambda cache, encoded, token: model.apply(
      {'params': params, 'cache': cache}, encoded, token, enc_mask, decode=True,
      mutable=['cache'], method='decode'))
  for i in range(dec.shape[1]):
    step_logits, variables = step(cache, encoded if i == 0 else jnp.zeros_like(encoded),
                                  dec[:, i:i + 1])
    cache = variables['cache']
    np.testing.assert_allclose(step_logits[:, 0], full[:, i], atol=1e-4, rtol=0)
  last = f'layers_{model.config.num_decoder_layers - 1}'
  key = layers.unstack_layer_params(params)['decoder']['stack'][last]['cross_attention']['key']
  cached = layers.unstack_layer_params(cache)['decoder']['stack'][last]['cross_attention']
  np.testing.assert_allclose(cached['cross_key'],
                             dense.dense(encoded, key['kernel'], key.get('bias')), atol=1e-6)


@pytest.mark.parametrize('length_penalty', [0.0, 1.0])
def test_beam_search_equals_hf_generate_when_eos_is_likely(length_penalty):
  # An EOS ranked k+1..2k among the candidates finished a hypothesis (HF takes it only in the
  # top k): with EOS likely, beams differed from HF's, and beam size 1 from greedy.
  torch.manual_seed(1)
  hf_model = transformers.BartForConditionalGeneration(transformers.BartConfig(
      vocab_size=24, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
      decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48,
      max_position_embeddings=32, dropout=0.0, pad_token_id=1, eos_token_id=2, bos_token_id=0,
      decoder_start_token_id=2, forced_bos_token_id=None, forced_eos_token_id=None,
      init_std=0.2)).eval()
  with torch.no_grad():
    hf_model.final_logits_bias.normal_(0.0, 1.0)
    hf_model.final_logits_bias[0, 2] += 1.0   # EOS likely: hypotheses end at many lengths
  model, params = hf_interop.from_pretrained(hf_model)
  enc = np.random.RandomState(0).randint(3, 24, (8, 7)).astype(np.int32)
  k, steps = 3, 8
  with torch.no_grad():
    out = hf_model.generate(torch.tensor(enc, dtype=torch.long), num_beams=k,
                            num_return_sequences=k, length_penalty=length_penalty,
                            early_stopping='never', max_new_tokens=steps, do_sample=False,
                            return_dict_in_generate=True, output_scores=True)
  want = out.sequences.numpy().reshape(8, k, -1)[:, :, 1:]
  beams, scores = decoding.beam_search(model, params, enc, steps, beam_size=k, eos_id=2,
                                       length_penalty=length_penalty)
  until_eos = lambda row: row[:row.index(2) + 1] if 2 in row else row   # noqa: E731
  assert [[until_eos(b[1:].tolist()) for b in beam] for beam in np.asarray(beams)] == \
      [[until_eos(b.tolist()) for b in beam] for beam in want]
  np.testing.assert_allclose(scores, out.sequences_scores.numpy().reshape(8, k), atol=1e-4)
  if length_penalty == 0.0:
    one, _ = decoding.beam_search(model, params, enc, steps, beam_size=1, eos_id=2,
                                  length_penalty=0.0)
    np.testing.assert_array_equal(one[:, 0],
                                  decoding.seq2seq_generate(model, params, enc, steps, eos_id=2))


def test_bart_decodes_as_many_tokens_as_it_has_positions():
  # The start token and the first max_length - 1 generated tokens are fed to the decoder;
  # the last generated one is not (as HF's generate). Decoding max_length tokens was refused.
  model, params = _converted('bart')
  cfg = model.config
  enc, _, enc_mask, _ = _inputs(seed=4)
  greedy = np.asarray(decoding.seq2seq_generate(model, params, enc, cfg.max_length,
                                                encoder_segment_ids=enc_mask))
  assert greedy.shape == (3, cfg.max_length + 1)
  tokens = np.full_like(greedy, cfg.pad_token_id)
  tokens[:, 0] = cfg.decoder_start_token_id
  full = None
  for i in range(cfg.max_length):
    full = np.asarray(_logits(model, params, enc, tokens[:, :-1], enc_mask))
    tokens[:, i + 1] = full[:, i].argmax(-1)
  assert np.isfinite(full).all()
  np.testing.assert_array_equal(greedy, tokens)
  beams, _ = decoding.beam_search(model, params, enc, cfg.max_length, beam_size=1,
                                  encoder_segment_ids=enc_mask, length_penalty=1.0)
  np.testing.assert_array_equal(beams[:, 0], greedy)
  with pytest.raises(ValueError, match=f'max_decode_len={cfg.max_length + 1} exceeds'):
    decoding.seq2seq_generate(model, params, enc, cfg.max_length + 1)


@pytest.mark.parametrize('family, field, value', [
    ('t5', 'feed_forward_proj', 'gated-silu'),
    ('bart', 'activation_function', 'silu'),
    ('bart', 'decoder_attention_heads', 2),
    ('bart', 'normalize_before', True),
    ('mbart', 'normalize_before', False),
    ('bart', 'add_bias_logits', True),
])
def test_unsupported_hf_option_is_named(family, field, value):
  hf_config = _hf_config(family).to_dict()
  hf_config[field] = value
  with pytest.raises(ValueError, match=f'{field}={value!r}'):
    hf_encoder_decoder.config_from_hf(hf_config)


@pytest.mark.parametrize('family', ['bart', 'mbart'])
def test_untied_bart_embeddings_are_refused(family):
  # transformers 5 gives an untied BART three embedding tables; ssl_jax's BART has one.
  hf_config = _hf_config(family)
  hf_config.tie_word_embeddings = False
  cls = {'bart': transformers.BartForConditionalGeneration,
         'mbart': transformers.MBartForConditionalGeneration}[family]
  model = cls(hf_config)
  cfg = hf_encoder_decoder.config_from_hf(model.config)
  with pytest.raises(ValueError, match='model.encoder.embed_tokens.weight differs from '
                     'model.shared.weight: a checkpoint with untied embeddings'):
    hf_encoder_decoder.params_from_hf(cfg, model.state_dict())


def test_hf_config_round_trips_the_architecture():
  for family in ('t5', 'bart', 'mbart'):
    cfg = hf_encoder_decoder.config_from_hf(_hf_config(family))
    assert cfg.pre_norm == (family == 'mbart')
    again = hf_encoder_decoder.config_from_hf(hf_encoder_decoder.hf_config_from(cfg))
    assert again == cfg
  # An untied T5 (v1.1) config builds an untied model (transformers 5 forced the tie).
  untied = hf_encoder_decoder.hf_config_from(config_lib.get_preset('t5', 'tiny'))
  model = transformers.T5ForConditionalGeneration(untied)
  assert model.lm_head.weight is not model.shared.weight
  with pytest.raises(ValueError, match='pre_norm=True.*leave it False for family t5'):
    dataclasses.replace(config_lib.get_preset('t5', 'tiny'), pre_norm=True)
  bad = dataclasses.replace(config_lib.get_preset('bart', 'tiny'), layer_norm_eps=1e-6)
  with pytest.raises(ValueError, match='layer_norm_eps'):
    hf_encoder_decoder.hf_config_from(bad)
