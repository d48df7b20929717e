"""Hugging Face <-> ssl_jax conversion for `T5ForConditionalGeneration`,
`BartForConditionalGeneration` and `MBartForConditionalGeneration` (the 't5' and 'bart'
families of ssl_jax.interop.hf; mBART is the 'bart' family with pre_norm=True).

Four functions, all pure data (torch and transformers are imported only by
`hf_config_from`, so the rest works without the interop extra):

  config_from_hf(hf_config) -> EncoderDecoderConfig
  params_from_hf(cfg, state_dict) -> params          (scanned or not, per cfg.scan_layers)
  params_to_hf(cfg, params) -> state_dict            (numpy, HF names and layouts)
  hf_config_from(cfg) -> transformers.T5Config | BartConfig | MBartConfig

An HF option that changes what the model computes and that ssl_jax does not implement raises
ValueError naming the option and its value. Options that only change training-time
regularisation (BART activation_dropout different from dropout, LayerDrop) only warn, since a
converted model computes the same function: ssl_jax applies dropout_rate after the MLP
activation and has no LayerDrop.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.models import layers
from ssl_jax.models.config import EncoderDecoderConfig

BART_LAYER_NORM_EPS = 1e-5   # HF BART hard-codes torch.nn.LayerNorm's default.
_T5_ACTIVATIONS = {'gated-gelu': 'gated-gelu', 'gated-gelu_new': 'gated-gelu',
                   'gelu': 'gelu', 'gelu_new': 'gelu_new', 'relu': 'relu'}
_BART_ACTIVATIONS = ('gelu', 'gelu_new', 'relu')


def _getter(hf_config):
  if isinstance(hf_config, dict):
    return hf_config.get
  return lambda key, default=None: getattr(hf_config, key, default)


def _unsupported(field: str, value: Any, fix: str) -> ValueError:
  return ValueError(f'HF config {field}={value!r} is not supported by ssl_jax; {fix}')


def config_from_hf(hf_config) -> EncoderDecoderConfig:
  """The EncoderDecoderConfig computing the same function as an HF T5, BART or mBART config
  (a transformers config object or its dict). Raises ValueError for options ssl_jax lacks."""
  get = _getter(hf_config)
  model_type = get('model_type')
  if model_type == 't5':
    return _t5_config_from_hf(get)
  if model_type in ('bart', 'mbart'):
    return _bart_config_from_hf(get, pre_norm=model_type == 'mbart')
  raise _unsupported('model_type', model_type,
                     "encoder-decoders must be 't5', 'bart' or 'mbart'")


def _t5_config_from_hf(get) -> EncoderDecoderConfig:
  proj = get('feed_forward_proj', 'relu')
  if proj not in _T5_ACTIVATIONS:
    raise _unsupported('feed_forward_proj', proj, f'use one of {sorted(_T5_ACTIVATIONS)}')
  # transformers >= 5 always ties lm_head to `shared` unless the checkpoint holds a distinct
  # lm_head, and records T5 v1.0's output rescaling as scale_decoder_outputs; earlier versions
  # tie (and rescale) exactly when tie_word_embeddings.
  tied = get('scale_decoder_outputs')
  if tied is None:
    tied = get('tie_word_embeddings', True)
  pad = get('pad_token_id', 0)
  start = get('decoder_start_token_id')
  return EncoderDecoderConfig(
      family='t5', vocab_size=get('vocab_size'), hidden_size=get('d_model'),
      num_layers=get('num_layers'), num_decoder_layers=get('num_decoder_layers') or get(
          'num_layers'),
      num_heads=get('num_heads'), head_dim=get('d_kv'), mlp_dim=get('d_ff'), max_length=512,
      relative_attention_num_buckets=get('relative_attention_num_buckets', 32),
      relative_attention_max_distance=get('relative_attention_max_distance', 128),
      dropout_rate=float(get('dropout_rate', 0.1)),
      attention_dropout_rate=float(get('dropout_rate', 0.1)),   # HF T5 uses one rate
      layer_norm_eps=get('layer_norm_epsilon', 1e-6), activation=_T5_ACTIVATIONS[proj],
      tie_word_embeddings=bool(tied), pad_token_id=pad,
      decoder_start_token_id=pad if start is None else start)


def _bart_config_from_hf(get, pre_norm: bool) -> EncoderDecoderConfig:
  # Options of older BART-family configs (mBART, Blenderbot, PEGASUS shared the class); the
  # pre-LN layout they could ask for is model_type 'mbart' now.
  for field, supported in (('normalize_before', pre_norm), ('add_final_layer_norm', pre_norm),
                           ('add_bias_logits', False), ('static_position_embeddings', False),
                           ('do_blenderbot_90_layernorm', False), ('normalize_embedding', True)):
    value = get(field)
    if value is not None and bool(value) != supported:
      raise _unsupported(field, value, f'ssl_jax {get("model_type")} requires '
                         f'{field}={supported}')
  if get('extra_pos_embeddings') not in (None, 2):
    raise _unsupported('extra_pos_embeddings', get('extra_pos_embeddings'),
                       'ssl_jax BART uses HF BART\'s position offset of 2')
  for enc, dec in (('encoder_attention_heads', 'decoder_attention_heads'),
                   ('encoder_ffn_dim', 'decoder_ffn_dim')):
    if get(enc) != get(dec):
      raise _unsupported(dec, get(dec), f'ssl_jax uses one value for encoder and decoder; '
                         f'it must equal {enc}={get(enc)}')
  activation = get('activation_function', 'gelu')
  if activation not in _BART_ACTIVATIONS:
    raise _unsupported('activation_function', activation, f'use one of {_BART_ACTIVATIONS}')
  if get('d_model') % get('encoder_attention_heads'):
    raise _unsupported('encoder_attention_heads', get('encoder_attention_heads'),
                       f'it must divide d_model={get("d_model")}')
  dropout = float(get('dropout', 0.1))
  if float(get('activation_dropout', 0.0)) != dropout:
    warnings.warn(f'HF config activation_dropout={get("activation_dropout")} differs from '
                  f'dropout={dropout}; ssl_jax applies dropout_rate={dropout} after the MLP '
                  'activation (training only; the converted model computes the same function)')
  for field in ('encoder_layerdrop', 'decoder_layerdrop'):
    if get(field):
      warnings.warn(f'HF config {field}={get(field)}: ssl_jax has no LayerDrop and trains all '
                    'layers (the converted model computes the same function)')
  start = get('decoder_start_token_id')
  return EncoderDecoderConfig(
      family='bart', vocab_size=get('vocab_size'), hidden_size=get('d_model'),
      num_layers=get('encoder_layers'), num_decoder_layers=get('decoder_layers'),
      num_heads=get('encoder_attention_heads'), mlp_dim=get('encoder_ffn_dim'),
      max_length=get('max_position_embeddings'), dropout_rate=dropout,
      attention_dropout_rate=float(get('attention_dropout', 0.0)),
      layer_norm_eps=BART_LAYER_NORM_EPS, activation=activation,
      initializer_range=get('init_std', 0.02),
      tie_word_embeddings=bool(get('tie_word_embeddings', True)),
      scale_embedding=bool(get('scale_embedding', False)), pre_norm=pre_norm,
      pad_token_id=get('pad_token_id', 1),
      # mBART leaves it None (it starts from a language code); its EOS, 2, when unset.
      decoder_start_token_id=2 if start is None else start)


def hf_config_from(cfg: EncoderDecoderConfig):
  """The transformers T5Config / BartConfig / MBartConfig (pre_norm) of `cfg`'s architecture.

  HF T5 has one dropout rate (cfg.dropout_rate, also used on attention probabilities) and
  no max_length. Raises ValueError where HF cannot express cfg.
  """
  import transformers   # pylint: disable=g-import-not-at-top  (optional interop extra)
  if cfg.family == 't5':
    config = transformers.T5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.hidden_size, d_kv=cfg.resolved_head_dim,
        d_ff=cfg.mlp_dim, num_layers=cfg.num_layers, num_decoder_layers=cfg.num_decoder_layers,
        num_heads=cfg.num_heads,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance,
        dropout_rate=cfg.dropout_rate, layer_norm_epsilon=cfg.layer_norm_eps,
        feed_forward_proj=cfg.activation, tie_word_embeddings=cfg.tie_word_embeddings,
        pad_token_id=cfg.pad_token_id, decoder_start_token_id=cfg.decoder_start_token_id,
        architectures=['T5ForConditionalGeneration'])
    # transformers 5 sets tie_word_embeddings=True whatever it is given (an untied checkpoint
    # unties on load): a model built from this object would share lm_head with the embeddings.
    config.tie_word_embeddings = cfg.tie_word_embeddings
    return config
  if cfg.activation not in _BART_ACTIVATIONS:
    raise ValueError(f'model.activation={cfg.activation!r} has no HF BART equivalent; use one '
                     f'of {_BART_ACTIVATIONS}')
  if cfg.resolved_head_dim * cfg.num_heads != cfg.hidden_size:
    raise ValueError(f'model.head_dim={cfg.head_dim}: HF BART needs head_dim * num_heads == '
                     f'hidden_size={cfg.hidden_size}; set head_dim=0')
  if not math.isclose(cfg.layer_norm_eps, BART_LAYER_NORM_EPS):
    raise ValueError(f'model.layer_norm_eps={cfg.layer_norm_eps}: HF BART fixes it at '
                     f'{BART_LAYER_NORM_EPS}; set layer_norm_eps={BART_LAYER_NORM_EPS}')
  config_cls, architecture = ((transformers.MBartConfig, 'MBartForConditionalGeneration')
                               if cfg.pre_norm else
                               (transformers.BartConfig, 'BartForConditionalGeneration'))
  return config_cls(
      vocab_size=cfg.vocab_size, d_model=cfg.hidden_size, encoder_layers=cfg.num_layers,
      decoder_layers=cfg.num_decoder_layers, encoder_attention_heads=cfg.num_heads,
      decoder_attention_heads=cfg.num_heads, encoder_ffn_dim=cfg.mlp_dim,
      decoder_ffn_dim=cfg.mlp_dim, max_position_embeddings=cfg.max_length,
      dropout=cfg.dropout_rate, attention_dropout=cfg.attention_dropout_rate,
      activation_dropout=cfg.dropout_rate, activation_function=cfg.activation,
      init_std=cfg.initializer_range, scale_embedding=cfg.scale_embedding,
      tie_word_embeddings=cfg.tie_word_embeddings, pad_token_id=cfg.pad_token_id,
      decoder_start_token_id=cfg.decoder_start_token_id,
      forced_eos_token_id=None, architectures=[architecture])


def fix_saved_config(cfg: EncoderDecoderConfig, out_dir: str) -> None:
  """Rewrites what `hf_config_from(cfg).save_pretrained(out_dir)` wrote where transformers
  versions read it differently. transformers 5 writes an untied T5 (v1.1) as
  tie_word_embeddings=true with scale_decoder_outputs=false, which transformers 4 reads as a tied
  T5 v1.0: it drops the exported lm_head and scales the decoder output, with no error. The v4
  form reads alike in both."""
  if cfg.family != 't5':
    return
  path = os.path.join(out_dir, 'config.json')
  with open(path, encoding='utf-8') as f:
    config = json.load(f)
  config['tie_word_embeddings'] = cfg.tie_word_embeddings
  config.pop('scale_decoder_outputs', None)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(config, f, indent=2, sort_keys=True)
    f.write('\n')


# ------------------------------------------------------------------------------ name tables
# Each entry: (ssl_jax path in the unscanned layout, HF key, layout kind). Kinds:
#   'qkv'  HF [N*H, E] -> [E, N, H]      'qkv_bias'  [N*H] -> [N, H]
#   'out'  HF [E, N*H] -> [N, H, E]      'dense'     HF [out, in] -> [in, out]
#   'vec'  unchanged                     'row'       HF [1, V] -> [V]
def _attention_entries(path, hf, names, bias):
  entries = []
  for ours, theirs in zip(('query', 'key', 'value', 'out'), names):
    kind = 'out' if ours == 'out' else 'qkv'
    entries.append((path + (ours, 'kernel'), f'{hf}.{theirs}.weight', kind))
    if bias:
      entries.append((path + (ours, 'bias'), f'{hf}.{theirs}.bias',
                      'vec' if ours == 'out' else 'qkv_bias'))
  return entries


def _norm_entries(path, hf, bias):
  entries = [(path + ('scale',), f'{hf}.weight', 'vec')]
  if bias:
    entries.append((path + ('bias',), f'{hf}.bias', 'vec'))
  return entries


def _mlp_entries(path, hf, cfg, bias):
  if cfg.family == 'bart':
    pairs = (('wi', 'fc1'), ('wo', 'fc2'))
  elif cfg.activation == 'gated-gelu':
    pairs = (('wi_0', 'DenseReluDense.wi_0'), ('wi_1', 'DenseReluDense.wi_1'),
             ('wo', 'DenseReluDense.wo'))
  else:
    pairs = (('wi', 'DenseReluDense.wi'), ('wo', 'DenseReluDense.wo'))
  entries = []
  for ours, theirs in pairs:
    entries.append((path + ('mlp', ours, 'kernel'), f'{hf}.{theirs}.weight', 'dense'))
    if bias:
      entries.append((path + ('mlp', ours, 'bias'), f'{hf}.{theirs}.bias', 'vec'))
  return entries


def _t5_entries(cfg) -> list:
  entries = [(('token_embed', 'embedding'), 'shared.weight', 'vec')]
  for stack, num_layers in (('encoder', cfg.num_layers), ('decoder', cfg.num_decoder_layers)):
    decoder = stack == 'decoder'
    entries += [
        ((stack, 'relative_bias', 'rel_embedding'),
         f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight', 'vec'),
        ((stack, 'final_norm', 'scale'), f'{stack}.final_layer_norm.weight', 'vec')]
    for i in range(num_layers):
      path, hf = (stack, 'stack', f'layers_{i}'), f'{stack}.block.{i}.layer'
      entries += _attention_entries(path + ('attention',), f'{hf}.0.SelfAttention', ('q', 'k', 'v', 'o'),
                                    False)
      entries += _norm_entries(path + ('attention_norm',), f'{hf}.0.layer_norm', False)
      if decoder:
        entries += _attention_entries(path + ('cross_attention',), f'{hf}.1.EncDecAttention',
                                      ('q', 'k', 'v', 'o'), False)
        entries += _norm_entries(path + ('cross_attention_norm',), f'{hf}.1.layer_norm', False)
      mlp = f'{hf}.{2 if decoder else 1}'
      entries += _mlp_entries(path, mlp, cfg, False)
      entries += _norm_entries(path + ('mlp_norm',), f'{mlp}.layer_norm', False)
  if not cfg.tie_word_embeddings:
    entries.append((('lm_head', 'kernel'), 'lm_head.weight', 'dense'))
  return entries


def _bart_entries(cfg) -> list:
  entries = [(('token_embed', 'embedding'), 'model.shared.weight', 'vec'),
             (('final_logits_bias',), 'final_logits_bias', 'row')]
  projections = ('q_proj', 'k_proj', 'v_proj', 'out_proj')
  for stack, num_layers in (('encoder', cfg.num_layers), ('decoder', cfg.num_decoder_layers)):
    entries += [((stack, 'position_embed', 'embedding'),
                 f'model.{stack}.embed_positions.weight', 'vec')]
    entries += _norm_entries((stack, 'embed_norm'), f'model.{stack}.layernorm_embedding', True)
    if cfg.pre_norm:
      entries += _norm_entries((stack, 'final_norm'), f'model.{stack}.layer_norm', True)
    for i in range(num_layers):
      path, hf = (stack, 'stack', f'layers_{i}'), f'model.{stack}.layers.{i}'
      entries += _attention_entries(path + ('attention',), f'{hf}.self_attn', projections, True)
      entries += _norm_entries(path + ('attention_norm',), f'{hf}.self_attn_layer_norm', True)
      if stack == 'decoder':
        entries += _attention_entries(path + ('cross_attention',), f'{hf}.encoder_attn',
                                      projections, True)
        entries += _norm_entries(path + ('cross_attention_norm',),
                                 f'{hf}.encoder_attn_layer_norm', True)
      entries += _mlp_entries(path, hf, cfg, True)
      entries += _norm_entries(path + ('mlp_norm',), f'{hf}.final_layer_norm', True)
  if not cfg.tie_word_embeddings:
    entries.append((('lm_head', 'kernel'), 'lm_head.weight', 'dense'))
  return entries


def _entries(cfg) -> list:
  return _t5_entries(cfg) if cfg.family == 't5' else _bart_entries(cfg)


def _shared_key(cfg) -> str:
  return 'shared.weight' if cfg.family == 't5' else 'model.shared.weight'


def _tied_copies(cfg) -> list[str]:
  """HF keys that must equal the shared embedding: ssl_jax keeps one table for them."""
  prefix = '' if cfg.family == 't5' else 'model.'
  keys = [f'{prefix}{stack}.embed_tokens.weight' for stack in ('encoder', 'decoder')]
  return keys + (['lm_head.weight'] if cfg.tie_word_embeddings else [])


def _ignorable_keys(cfg) -> set:
  """HF keys that duplicate a converted tensor (tied copies) or that HF itself ignores."""
  keys = set(_tied_copies(cfg))
  if cfg.family == 't5':
    keys.add('decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight')
  return keys


# ------------------------------------------------------------------------------ conversion
def _to_numpy(value) -> np.ndarray:
  if hasattr(value, 'detach'):   # a torch tensor; numpy has no bfloat16 view of it
    value = value.detach().cpu().float().numpy()
  return np.asarray(value)


def _from_hf_layout(x: np.ndarray, kind: str, cfg) -> np.ndarray:
  heads, head_dim = cfg.num_heads, cfg.resolved_head_dim
  if kind == 'qkv':
    return x.T.reshape(x.shape[1], heads, head_dim)
  if kind == 'qkv_bias':
    return x.reshape(heads, head_dim)
  if kind == 'out':
    return x.T.reshape(heads, head_dim, x.shape[0])
  if kind == 'dense':
    return x.T
  if kind == 'row':
    return x.reshape(-1)
  return x


def _to_hf_layout(x: np.ndarray, kind: str) -> np.ndarray:
  if kind == 'qkv':
    return x.reshape(x.shape[0], -1).T
  if kind == 'qkv_bias':
    return x.reshape(-1)
  if kind == 'out':
    return x.reshape(-1, x.shape[-1]).T
  if kind == 'dense':
    return x.T
  if kind == 'row':
    return x.reshape(1, -1)
  return x


def expected_param_shapes(cfg: EncoderDecoderConfig) -> dict:
  """{path tuple: shape} of EncoderDecoder(cfg)'s params (by jax.eval_shape; no allocation)."""
  from ssl_jax.models.encoder_decoder import EncoderDecoder  # pylint: disable=g-import-not-at-top
  tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  shapes = jax.eval_shape(lambda e, d: EncoderDecoder(cfg).init(jax.random.key(0), e, d),
                          tokens, tokens)['params']
  flat = flax.traverse_util.flatten_dict(flax.core.meta.unbox(shapes))
  return {path: tuple(s.shape) for path, s in flat.items()}


def params_from_hf(cfg: EncoderDecoderConfig, state_dict: dict) -> dict:
  """HF state dict (name -> numpy array or torch tensor) -> EncoderDecoder(cfg) params.

  The layout follows cfg.scan_layers and the dtype cfg.param_dtype. Raises ValueError naming
  missing, unexpected or wrongly shaped tensors (e.g. a state dict of another architecture).
  """
  state_dict = dict(state_dict)
  if (cfg.family == 't5' and not cfg.tie_word_embeddings and 'lm_head.weight' not in state_dict
      and 'shared.weight' in state_dict):
    # transformers >= 5 omits lm_head.weight when it is tied to `shared` even though
    # the config asks for an untied head; the head then equals the embedding.
    state_dict['lm_head.weight'] = state_dict['shared.weight']
  entries = _entries(cfg)
  missing = [hf for _, hf, _ in entries if hf not in state_dict]
  unexpected = sorted(set(state_dict) - {hf for _, hf, _ in entries} - _ignorable_keys(cfg))
  if any(k.startswith('model.') and k[len('model.'):] in state_dict for k in missing):
    raise ValueError(
        f'the HF state dict is a {cfg.family} model without its language-model head (its keys '
        'lack the \'model.\' prefix: a BartModel, not a BartForConditionalGeneration); only '
        'BartForConditionalGeneration / MBartForConditionalGeneration / '
        'T5ForConditionalGeneration checkpoints convert: save the model with its LM head.')
  if missing or unexpected:
    raise ValueError(f'HF state dict does not match the {cfg.family} config: missing '
                     f'{missing[:8]}{"..." if len(missing) > 8 else ""}, unexpected '
                     f'{unexpected[:8]}{"..." if len(unexpected) > 8 else ""}; check that the '
                     'config came from config_from_hf of the same checkpoint')
  shared = _to_numpy(state_dict[_shared_key(cfg)])
  for key in _tied_copies(cfg):
    if key in state_dict and not np.array_equal(_to_numpy(state_dict[key]), shared):
      raise ValueError(f'{key} differs from {_shared_key(cfg)}: a checkpoint with untied '
                       f'embeddings (tie_word_embeddings=False) is not a {cfg.family} model '
                       'ssl_jax converts; its encoder, decoder and tied head share one table.')
  dtype = jnp.dtype(cfg.param_dtype)
  flat = {path: np.asarray(_from_hf_layout(_to_numpy(state_dict[hf]), kind, cfg), dtype)
          for path, hf, kind in entries}
  expected = expected_param_shapes(dataclasses.replace(cfg, scan_layers=False))
  wrong = [(path, flat[path].shape, shape) for path, shape in expected.items()
           if path not in flat or flat[path].shape != shape]
  if wrong or set(flat) != set(expected):
    raise ValueError(f'converted {cfg.family} params do not fit the model: (path, got, want) '
                     f'{wrong[:4]}; extra {sorted(set(flat) - set(expected))[:4]}')
  params = flax.traverse_util.unflatten_dict(flat)
  if cfg.scan_layers:
    params = jax.tree.map(np.asarray, layers.stack_layer_params(params))
  return params


def params_to_hf(cfg: EncoderDecoderConfig, params) -> dict:
  """EncoderDecoder(cfg) params (scanned or not, boxed or not) -> HF state dict of numpy
  float32 arrays. Tied copies are written too (HF's shared, embed_tokens and lm_head)."""
  params = flax.core.meta.unbox(params)
  params = flax.core.unfreeze(params) if isinstance(params, flax.core.FrozenDict) else params
  if cfg.scan_layers:
    params = layers.unstack_layer_params(params)
  flat = flax.traverse_util.flatten_dict(params)
  state = {hf: np.asarray(_to_hf_layout(np.asarray(flat[path], np.float32), kind))
           for path, hf, kind in _entries(cfg)}
  for key in _tied_copies(cfg):
    state[key] = state[_shared_key(cfg)]
  return state
