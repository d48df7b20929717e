"""BERT / GPT modules: configs, presets, packing, KV-cache decoding, partitioning metadata."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssl_jax import objectives
from ssl_jax.models import bert, config, decoding, dense, gpt, layers

ALLOWED_AXES = {'embed', 'mlp', 'heads', 'kv', 'vocab', 'layers', None}


@pytest.fixture(autouse=True)
def highest_precision():
  with jax.default_matmul_precision('highest'):
    yield


def tiny(family, **kw):
  """Smaller than the 'tiny' preset: these tests check wiring, compile time dominates."""
  return dataclasses.replace(config.get_preset(family, 'tiny'), vocab_size=97, hidden_size=32,
                             mlp_dim=64, max_length=32, **kw)


def jit_apply(model, **kw):
  return jax.jit(lambda params, *args: model.apply({'params': params}, *args, **kw))


def num_params(model, *args):
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args))
  return sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(shapes['params'])))


# ------------------------------------------------------------------------------ configs
def test_config_dict_round_trip_for_every_preset():
  for family, presets in config.PRESETS.items():
    for name, cfg in presets.items():
      d = config.config_to_dict(cfg)
      assert d['family'] == family, (family, name)
      assert config.config_from_dict(d) == cfg


@pytest.mark.parametrize('overrides,match', [
    ({'family': 'bert', 'hiden_size': 64}, r"unknown model config key\(s\) \['hiden_size'\].*hidden_size"),
    ({'family': 'bert', 'num_heads': 3}, 'num_heads=3'),
    ({'family': 'gpt', 'activation': 'swish'}, "activation='swish'"),
    ({'family': 'gpt', 'remat_policy': 'some'}, "remat_policy='some'"),
    ({'family': 'bert', 'dtype': 'fp8'}, "dtype='fp8'"),
    ({'family': 'gpt', 'dtype': 'float16'}, "dtype='float16'.*loss scaling.*'bfloat16'"),
    ({'family': 't5', 'activation': 'geglu'}, "activation='geglu'"),
    ({'family': 'roberta'}, "family='roberta'"),
    ({'family': 'bert', 'position_embedding': 'rotary'}, "position_embedding='rotary'"),
    ({'family': 'bert', 'alibi_bias_max': 0.0}, 'alibi_bias_max=0.0'),
    # max_distance at or under the decoder's 16 exact offsets: NaN logits (log(16 / 16) = 0).
    ({'family': 't5', 'relative_attention_max_distance': 16},
     'relative_attention_max_distance=16: must be more than .* = 16'),
    ({'family': 't5', 'relative_attention_num_buckets': 2}, 'relative_attention_num_buckets=2'),
    ({'family': 'gpt', 'initializer_range': 0.0}, 'initializer_range=0.0: must be a finite'),
    ({'family': 'bert', 'num_heads': 3}, r'^config.model.num_heads=3: does not divide'),
    # Accepted before: inf passed `> 0`; settings that the family ignored; ids out of range.
    ({'family': 'bert', 'layer_norm_eps': float('inf')}, 'layer_norm_eps=inf: must be a finite'),
    ({'family': 't5', 'scale_embedding': True}, 'scale_embedding=True: is a BART option'),
    ({'family': 'bart', 'relative_attention_num_buckets': 64},
     "relative_attention_num_buckets=64: sets T5's relative position buckets"),
    ({'family': 'bert', 'pad_token_id': -3}, 'pad_token_id=-3: must be a token id'),
    ({'family': 'bart', 'vocab_size': 100, 'decoder_start_token_id': 100},
     'decoder_start_token_id=100: must be a token id: at least 0 and under vocab_size=100'),
])
def test_config_from_dict_rejects_bad_values(overrides, match):
  with pytest.raises(ValueError, match=match):
    config.config_from_dict(overrides)


def test_alibi_bert_config_takes_rows_longer_than_max_length():
  # ALiBi has no position table (it extrapolates), but config validation refused
  # data.sequence_length > model.max_length, naming positions the model does not have.
  import importlib  # pylint: disable=g-import-not-at-top
  from ssl_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  cfg = importlib.import_module('configs.bert').get_config('tiny')
  assert cfg.model.position_embedding == 'alibi'
  cfg.data.sequence_length = 2 * cfg.model.max_length
  config_lib.validate(cfg)
  cfg.model.position_embedding = 'learned'
  with pytest.raises(ValueError, match=r'config.data.sequence_length=256.*128 positions'):
    config_lib.validate(cfg)


def test_get_preset_unknown_name_lists_choices():
  with pytest.raises(ValueError, match=r"'huge'.*\['base', 'large', 'small', 'tiny'\]"):
    config.get_preset('bert', 'huge')


@pytest.mark.parametrize('family,name,expected,model_cls', [
    ('bert', 'base', 110e6, bert.BertForPreTraining),
    ('gpt', 'small', 124e6, gpt.GPT),
    ('gpt', 'medium', 355e6, gpt.GPT),
])
def test_preset_parameter_counts_match_published(family, name, expected, model_cls):
  count = num_params(model_cls(config.get_preset(family, name)), jnp.ones((1, 8), jnp.int32))
  assert abs(count - expected) / expected < 0.01, count


# ------------------------------------------------------------------------------ metadata
@pytest.mark.parametrize('scan_layers', [False, True])
@pytest.mark.parametrize('family', ['bert', 'gpt'])
def test_every_param_has_allowed_logical_axes(family, scan_layers):
  cfg = tiny(family, scan_layers=scan_layers)
  model = bert.BertForPreTraining(cfg) if family == 'bert' else gpt.GPT(cfg)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32)))
  specs = nn.get_partition_spec(shapes['params'])
  leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  params = jax.tree.leaves(nn.unbox(shapes['params']))
  assert len(leaves) == len(params)
  for spec, p in zip(leaves, params):
    assert isinstance(spec, jax.sharding.PartitionSpec) and len(spec) == p.ndim, spec
    assert set(spec) <= ALLOWED_AXES, spec
    assert (spec[0] == 'layers') == (scan_layers and p.ndim > 1 and spec[0] == 'layers')


# ------------------------------------------------------------------------------ behaviour
@pytest.mark.parametrize('scan_layers,position_embedding',
                         [(False, 'learned'), (True, 'learned'), (False, 'alibi')])
def test_bert_packed_row_equals_segments_run_alone(scan_layers, position_embedding):
  model = bert.BertForPreTraining(tiny('bert', scan_layers=scan_layers,
                                       position_embedding=position_embedding))
  rng = np.random.default_rng(0)
  a, b = rng.integers(5, 97, 6), rng.integers(5, 97, 4)
  packed = np.concatenate([a, b, [0, 0]])[None]
  seg = np.array([[1] * 6 + [2] * 4 + [0, 0]])
  pos = np.array([list(range(6)) + list(range(4)) + [0, 0]])
  types = np.array([[0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 0]])
  params = model.init(jax.random.key(0), packed)['params']
  apply = jit_apply(model)
  out = apply(params, packed, types, seg, pos, None, np.array([[0, 6]]))
  for start, toks, k in ((0, a, 0), (6, b, 1)):
    n = len(toks)
    alone = apply(params, toks[None], types[:, start:start + n])
    np.testing.assert_allclose(out['mlm_logits'][:, start:start + n], alone['mlm_logits'],
                               atol=1e-5)
    np.testing.assert_allclose(out['sentence_logits'][:, k], alone['sentence_logits'],
                               atol=1e-5)


def test_alibi_bias_has_the_papers_slopes():
  # Press et al. (2022): with 8 heads the slopes are 1/2, 1/4, ..., 1/256.
  bias = np.asarray(layers.alibi_bias(8, 5))
  distance = np.abs(np.arange(5)[None, :] - np.arange(5)[:, None])
  assert bias.shape == (1, 8, 5, 5)
  for h in range(8):
    np.testing.assert_allclose(bias[0, h], -distance / 2.0 ** (h + 1))
  np.testing.assert_allclose(layers.alibi_bias(4, 5, bias_max=4.0), bias[:, :4])
  # Other head counts: the paper's code (and llm-foundry's gen_slopes), e.g. 12 heads take the
  # 8-head slopes, then every other slope of 16 heads.
  slopes = -np.asarray(layers.alibi_bias(12, 2))[0, :, 0, 1]
  np.testing.assert_allclose(slopes, [2.0 ** -k for k in range(1, 9)] +
                             [2.0 ** -k for k in (0.5, 1.5, 2.5, 3.5)], rtol=1e-6)


def test_alibi_bert_has_no_position_table_and_attends_nearby_from_init():
  cfg = tiny('bert', position_embedding='alibi', alibi_bias_max=4.0)
  model = bert.BertForPreTraining(cfg)
  tokens = np.arange(1, 25)[None] % 97
  params = model.init(jax.random.key(0), tokens)['params']
  assert 'position_embed' not in params['bert']
  _, state = model.apply({'params': params}, tokens, mutable=[layers.ATTENTION_WEIGHTS])
  probs = np.asarray(layers.attention_probs(state[layers.ATTENTION_WEIGHTS]['bert'], 'encoder'))
  # [layers, B, heads, Lq, Lk]: each head's steepest slope (1/2) makes neighbours outweigh
  # tokens ten positions away, in every layer, before any training.
  near, far = probs[..., 12, 13], probs[..., 12, 22]
  assert probs.shape[2] == 4 and (near > far).all()
  assert (near[..., 0] > 10 * far[..., 0]).all()


def test_bf16_attention_scores_are_float32_on_every_path():
  # Training with attention dropout and probe runs spell attention out; in bfloat16 they took
  # the q.k scores in bfloat16 while the fused path (eval) takes them in float32: the same layer
  # gave outputs 0.48 apart.
  attention = layers.MultiHeadAttention(num_heads=4, head_dim=16, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (2, 64, 64)) * 60
  params = attention.init(jax.random.key(1), x)
  fused = attention.apply(params, x)
  spelled_out, _ = attention.apply(params, x, mutable=[layers.ATTENTION_WEIGHTS])
  np.testing.assert_allclose(np.float32(spelled_out), np.float32(fused), atol=0.02)


def test_bert_gathers_masked_positions():
  model = bert.BertForPreTraining(tiny('bert'))
  tokens = np.arange(1, 13)[None] % 97
  params = model.init(jax.random.key(0), tokens)['params']
  apply = jit_apply(model)
  full = apply(params, tokens)['mlm_logits']
  picked = apply(params, tokens, None, None, None, np.array([[3, 0, 7]]))
  np.testing.assert_allclose(picked['mlm_logits'], full[:, [3, 0, 7]], atol=1e-5)


@pytest.mark.parametrize('scan_layers', [False, True])
def test_gpt_packed_row_equals_segments_run_alone(scan_layers):
  model = gpt.GPT(tiny('gpt', scan_layers=scan_layers))
  rng = np.random.default_rng(1)
  a, b = rng.integers(1, 97, 5), rng.integers(1, 97, 6)
  packed = np.concatenate([a, b, [0]])[None]
  seg = np.array([[1] * 5 + [2] * 6 + [0]])
  pos = np.array([list(range(5)) + list(range(6)) + [0]])
  params = model.init(jax.random.key(0), packed)['params']
  apply = jit_apply(model)
  logits = apply(params, packed, seg, pos)
  np.testing.assert_allclose(logits[:, :5], apply(params, a[None]), atol=1e-5)
  np.testing.assert_allclose(logits[:, 5:11], apply(params, b[None]), atol=1e-5)


@pytest.mark.parametrize('scan_layers', [False, True])
def test_kv_cache_greedy_decoding_equals_full_forward(scan_layers):
  model = gpt.GPT(tiny('gpt', scan_layers=scan_layers))
  prompt = np.array([[5, 9, 13, 2], [7, 7, 1, 0]])
  params = model.init(jax.random.key(0), prompt)['params']
  lengths = np.array([4, 3])
  out = np.asarray(decoding.generate(model, params, prompt, 6, prompt_lengths=lengths))
  # Reference: re-run the whole (causal) model on the sequence so far at every step; the
  # right padding of the fixed-size buffer cannot influence earlier positions.
  apply, seqs = jit_apply(model), np.pad(prompt, ((0, 0), (0, 6)))
  for t in range(3, 10):
    next_tokens = np.argmax(apply(params, seqs)[:, t - 1], axis=-1)
    seqs[:, t] = np.where(t < lengths, seqs[:, t], next_tokens)
  np.testing.assert_array_equal(out, seqs)


def test_sampling_respects_top_k_and_seed():
  model = gpt.GPT(tiny('gpt'))
  prompt = np.array([[3, 4]])
  params = model.init(jax.random.key(0), prompt)['params']
  kw = dict(rng=jax.random.key(3), temperature=1.0, top_k=1)
  top1 = decoding.generate(model, params, prompt, 5, **kw)
  np.testing.assert_array_equal(top1, decoding.generate(model, params, prompt, 5))
  sampled = [decoding.generate(model, params, prompt, 5, rng=jax.random.key(s),
                               temperature=2.0) for s in (1, 1, 2)]
  np.testing.assert_array_equal(sampled[0], sampled[1])
  with pytest.raises(ValueError, match='max_length=32'):
    decoding.generate(model, params, prompt, 31)
  # A top_k past the vocabulary is every token, as in transformers (it raised XLA's own error).
  whole = dict(rng=jax.random.key(1), temperature=2.0)
  np.testing.assert_array_equal(
      decoding.generate(model, params, prompt, 5, top_k=model.config.vocab_size + 1, **whole),
      sampled[0])
  with pytest.raises(ValueError, match=r'top_k=-1 must be >= 0 \(0 = every token\)'):
    decoding.generate(model, params, prompt, 5, top_k=-1, **whole)


@pytest.mark.parametrize('scan_layers', [False, True])
def test_layer_outputs_are_sown_as_one_stacked_array(scan_layers):
  cfg = tiny('bert', scan_layers=scan_layers)
  model = bert.BertModel(cfg)
  tokens = np.ones((2, 7), np.int32)
  variables = model.init(jax.random.key(0), tokens)
  out, state = jax.jit(lambda v, t: model.apply(v, t, mutable=['intermediates']))(
      variables, tokens)
  hs = layers.hidden_states(state['intermediates'], 'encoder')
  assert hs.shape == (cfg.num_layers, 2, 7, cfg.hidden_size)
  np.testing.assert_allclose(hs[-1], out['hidden'], atol=1e-6)


@pytest.mark.parametrize('remat_policy', ['full', 'dots'])
def test_remat_and_scan_do_not_change_the_function(remat_policy):
  tokens = np.arange(10)[None] % 97 + 1
  base = gpt.GPT(tiny('gpt'))
  params = base.init(jax.random.key(0), tokens)['params']
  variant = gpt.GPT(tiny('gpt', scan_layers=True, remat_policy=remat_policy))
  loss = lambda m, p: m.apply({'params': p}, tokens, deterministic=False,  # noqa: E731
                              rngs={'dropout': jax.random.key(1)}).mean()
  stacked = layers.stack_layer_params(nn.unbox(params))
  np.testing.assert_allclose(jit_apply(base)(params, tokens),
                             jit_apply(variant)(stacked, tokens), atol=1e-5)
  grads = jax.jit(jax.grad(lambda p: loss(variant, p)))(stacked)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  # Without dropout (its masks are drawn per layer differently) the gradients are the same too.
  exact = lambda m, p: m.apply({'params': p}, tokens).mean()  # noqa: E731
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               layers.stack_layer_params(nn.unbox(jax.grad(lambda p: exact(base, p))(params))),
               jax.jit(jax.grad(lambda p: exact(variant, p)))(stacked))


@pytest.mark.parametrize('x_shape,kernel_shape,in_ndim,use_bias', [
    ((2, 5, 8), (8, 12), 1, False),        # in < out: x is copied transposed
    ((2, 5, 3, 4), (3, 4, 2), 2, True),    # in > out (attention's output): grad is copied
    ((7, 6), (6, 2, 3), 1, True),          # q/k/v: embed -> [heads, head_dim]
])
def test_dense_backward_pass_equals_autodiff(x_shape, kernel_shape, in_ndim, use_bias):
  keys = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(keys[0], x_shape)
  kernel = jax.random.normal(keys[1], kernel_shape)
  bias = jax.random.normal(keys[2], kernel_shape[in_ndim:]) if use_bias else None
  probe = jax.random.normal(keys[3], x_shape[:x.ndim - in_ndim] + kernel_shape[in_ndim:])

  def autodiff(x, kernel, bias):
    contract = tuple(range(x.ndim - in_ndim, x.ndim)), tuple(range(in_ndim))
    y = jax.lax.dot_general(x, kernel, (contract, ((), ())))
    return jnp.sum((y if bias is None else y + bias) * probe)

  ours = lambda x, kernel, bias: jnp.sum(dense.dense(x, kernel, bias, in_ndim) * probe)  # noqa: E731
  both = jax.jit(lambda *args: [jax.value_and_grad(f, argnums=(0, 1, 2))(*args)
                                for f in (ours, autodiff)])
  got, want = both(x, kernel, bias)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_bias_add_gradient_equals_autodiff_and_is_hand_written_on_cpu():
  keys = jax.random.split(jax.random.key(0), 3)
  y, bias = jax.random.normal(keys[0], (3, 5, 11)), jax.random.normal(keys[1], (11,))
  probe = jax.random.normal(keys[2], (3, 5, 11))
  loss = lambda add: lambda y, b: jnp.sum(add(y, b) * probe)  # noqa: E731
  got = jax.jit(jax.value_and_grad(loss(dense.bias_add), argnums=(0, 1)))(y, bias)
  want = jax.value_and_grad(loss(jnp.add), argnums=(0, 1))(y, bias)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  # BART's final_logits_bias took a 15 ms reduce-window of a 250 ms tiny step without it.
  assert 'custom_vjp_call' in str(jax.make_jaxpr(lambda *a: dense.bias_add(*a))(y, bias))


def test_token_losses_and_their_gradient_equal_optax_cross_entropy():
  keys = jax.random.split(jax.random.key(0), 3)
  logits = 3 * jax.random.normal(keys[0], (3, 5, 11))
  targets = jax.random.randint(keys[1], (3, 5), 0, 11)
  logits = logits.at[0, 0].set(1.0)  # every logit tied for the largest: a hit
  probe = jax.random.normal(keys[2], (3, 5))

  def ours(logits, z_loss=0.0):
    losses, hits, log_z = objectives.token_losses(logits, targets)
    return jnp.sum(losses * probe) + objectives.z_loss_sum(log_z, probe, z_loss), hits

  def reference(logits, z_loss=0.0):  # t5x's cross_entropy_with_logits(..., z_loss)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    return jnp.sum((optax.softmax_cross_entropy_with_integer_labels(logits, targets)
                    + z_loss * log_z ** 2) * probe)

  (loss, hits), grad = jax.jit(jax.value_and_grad(ours, has_aux=True))(logits)
  want_loss, want_grad = jax.jit(jax.value_and_grad(reference))(logits)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)
  # with the z-loss (a large weight, so that it shows in the gradient)
  (z_loss, _), z_grad = jax.value_and_grad(ours, has_aux=True)(logits, 0.1)
  want_loss, want_z_grad = jax.value_and_grad(reference)(logits, 0.1)
  assert np.abs(want_z_grad - want_grad).max() > 0.1
  np.testing.assert_allclose(z_loss, want_loss, rtol=1e-6)
  np.testing.assert_allclose(z_grad, want_z_grad, rtol=1e-5, atol=1e-6)
  want_hits = np.array(jnp.argmax(logits, -1) == targets)
  want_hits[0, 0] = True
  np.testing.assert_array_equal(hits, want_hits.astype(np.float32))
  # bfloat16 logits: the loss is computed in float32, the gradient comes back in bfloat16
  bf16_grad = jax.grad(lambda l: ours(l)[0])(logits.astype(jnp.bfloat16))
  assert bf16_grad.dtype == jnp.bfloat16
  np.testing.assert_allclose(bf16_grad.astype(jnp.float32), want_grad, atol=2e-2)
  # bfloat16 logits tie at the top in a few % of rows: each of n tied tokens counts 1/n (every
  # tied token counted as a hit, ~1 point of accuracy more than float32 reported).
  tied = logits.at[1, 2].set(jnp.where(jnp.arange(11) < 4, 9.0, 0.0)).astype(jnp.bfloat16)
  _, bf16_hits, _ = objectives.token_losses(tied, targets.at[1, 2].set(3))
  assert float(bf16_hits[1, 2]) == 0.25 and float(bf16_hits[0, 0]) == pytest.approx(1 / 11)
  np.testing.assert_array_equal(np.delete(np.asarray(bf16_hits).ravel(), [0, 7]),
                                np.delete(want_hits.ravel(), [0, 7]))


def test_z_loss_is_added_to_every_pretraining_loss_and_logged_apart():
  from ssl_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  keys = jax.random.split(jax.random.key(1), 3)
  logits = 3 * jax.random.normal(keys[0], (2, 5, 11))
  targets = jax.random.randint(keys[1], (2, 5), 0, 11)
  weights = jax.random.bernoulli(keys[2], 0.7, (2, 5)).astype(jnp.float32)
  want_z = 1e-2 * float(jnp.sum(jax.nn.logsumexp(logits, -1) ** 2 * weights))
  decoder_batch = dict(decoder_target_tokens=targets, decoder_loss_weights=weights)
  mlm_batch = dict(masked_targets=targets, masked_weights=weights, masked_kinds=weights.astype(int),
                   sentence_labels=jnp.zeros(2, int), sentence_weights=jnp.ones(2))
  for name, family, outputs, batch in (
      ("causal_lm", "gpt", logits, decoder_batch), ("span_corruption", "t5", logits, decoder_batch),
      ("denoising", "bart", logits, decoder_batch),
      ("mlm", "bert", dict(mlm_logits=logits, sentence_logits=jnp.zeros((2, 2))), mlm_batch)):
    cfg = config_lib.base_config(name, family, "tiny")
    plain = objectives.get(name, cfg)
    cfg.train.z_loss = 1e-2
    config_lib.validate(cfg)
    with_z = objectives.get(name, cfg)
    dens = plain.denominators(batch)
    loss, sums = plain.loss(outputs, batch, dens)
    z_loss, z_sums = with_z.loss(outputs, batch, dens)
    np.testing.assert_allclose(z_loss - loss, want_z / float(weights.sum()), rtol=1e-5)
    np.testing.assert_allclose(z_sums.pop("z_loss"), (want_z, weights.sum()), rtol=1e-5)
    assert "z_loss" not in sums
    jax.tree.map(np.testing.assert_array_equal, z_sums, sums)  # the cross-entropy, logged alone
  cfg = config_lib.base_config("classification", "bert", "tiny")
  cfg.train.z_loss = 1e-4
  with pytest.raises(ValueError, match=r"config.train.z_loss=0.0001 is invalid: the z-loss acts on"
                                       r" a vocabulary softmax, which objective 'classification'"):
    config_lib.validate(cfg)
  cfg.objective, cfg.train.z_loss = "mlm", -1e-4
  with pytest.raises(ValueError, match=r"config.train.z_loss=-0.0001 is invalid: use 0"):
    config_lib.validate(cfg)


def test_autodiff_dense_traces_autodiffs_backward_pass_inside_the_context_only():
  x, kernel = jnp.ones((4, 3)), jnp.ones((3, 2))
  # a new function each time: JAX caches traces by function, and the context is not in the key
  jaxpr = lambda: str(jax.make_jaxpr(lambda *a: dense.dense(*a))(x, kernel))  # noqa: E731
  assert 'custom_vjp_call' in jaxpr()
  with dense.autodiff_dense():
    assert 'custom_vjp_call' not in jaxpr()
  assert 'custom_vjp_call' in jaxpr()


def test_vocab_size_minus_one_must_be_resolved_before_building():
  model = gpt.GPT(dataclasses.replace(config.get_preset('gpt', 'tiny'), vocab_size=-1))
  with pytest.raises(ValueError, match='vocab_size'):
    model.init(jax.random.key(0), np.ones((1, 4), np.int32))


@pytest.mark.parametrize('family', ['gpt', 'bert', 'bart'])
def test_rows_longer_than_the_position_table_are_refused(family):
  # The lookup past the table gave NaN, which attention spread to every position of the row.
  from ssl_jax.models import encoder_decoder  # pylint: disable=g-import-not-at-top
  cfg = tiny(family)
  tokens = jax.ShapeDtypeStruct((1, cfg.max_length + 1), jnp.int32)
  model = {'gpt': gpt.GPT, 'bert': bert.BertModel,
           'bart': encoder_decoder.EncoderDecoder}[family](cfg)
  args = (tokens, tokens) if family == 'bart' else (tokens,)
  with pytest.raises(ValueError, match=f'{cfg.max_length + 1} tokens exceed '
                     f'config.model.max_length={cfg.max_length}'):
    jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a), *args)
