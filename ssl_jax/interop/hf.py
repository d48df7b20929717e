"""Hugging Face <-> ssl_jax conversion for BERT, GPT-2, T5 and BART.

    model, params = from_pretrained('path/to/hf_dir')      # or a transformers model object
    save_pretrained(model, params, 'out_dir')               # transformers.AutoModel... loads it

Four functions, dispatched on the family, do the work (T5 and BART live in
`ssl_jax.interop.hf_encoder_decoder` under the same names):
  config_from_hf(hf_config) -> ssl_jax config      hf_config_from(cfg) -> transformers config
  params_from_hf(cfg, state_dict) -> params        params_to_hf(cfg, params) -> state_dict
State dicts map HF names to numpy arrays. Params may be scanned or not (`cfg.scan_layers`).
An HF option ssl_jax does not implement raises ValueError naming it: a converted model is
the same function as the original or the conversion fails.

torch / transformers / safetensors are imported lazily: they are the optional 'interop' extra.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.models import bert, gpt
from ssl_jax.models.config import BertConfig, EncoderDecoderConfig, GPTConfig
from ssl_jax.models.layers import unstack_layer_params, with_layer_layout

# HF activation name -> ssl_jax activation name (gelu_pytorch_tanh is the tanh formula).
_ACTS = {'gelu': 'gelu', 'gelu_new': 'gelu_new', 'gelu_pytorch_tanh': 'gelu_new', 'relu': 'relu'}


def _unsupported(hf_config, field, value, fix='ssl_jax does not implement it'):
  raise ValueError(f'{type(hf_config).__name__}.{field}={value!r} is not supported: {fix}')


def _require(hf_config, field, expected, default=None):
  value = getattr(hf_config, field, default)
  if value != expected:
    _unsupported(hf_config, field, value, f'ssl_jax implements only {field}={expected!r}')


def _activation(hf_config, field):
  act = getattr(hf_config, field)
  if act not in _ACTS:
    _unsupported(hf_config, field, act, f'use one of {sorted(_ACTS)}')
  return _ACTS[act]


def _encoder_decoder():
  from ssl_jax.interop import hf_encoder_decoder   # the T5/BART half of this module
  return hf_encoder_decoder


# ------------------------------------------------------------------------------ dispatch
def config_from_hf(hf_config):
  """transformers config -> ssl_jax config (BertConfig, GPTConfig or EncoderDecoderConfig)."""
  model_type = getattr(hf_config, 'model_type', None)
  if model_type == 'bert':
    return _bert_config_from_hf(hf_config)
  if model_type == 'gpt2':
    return _gpt2_config_from_hf(hf_config)
  if model_type in ('t5', 'bart', 'mbart'):
    return _encoder_decoder().config_from_hf(hf_config)
  raise ValueError(f'model_type={model_type!r} is not supported; ssl_jax converts '
                   "'bert', 'gpt2', 't5', 'bart' and 'mbart'")


def hf_config_from(cfg):
  """ssl_jax config -> transformers config of the same model."""
  if isinstance(cfg, BertConfig):
    return _bert_hf_config(cfg)
  if isinstance(cfg, GPTConfig):
    return _gpt2_hf_config(cfg)
  return _encoder_decoder().hf_config_from(cfg)


def params_from_hf(cfg, state_dict: dict[str, np.ndarray]) -> dict:
  """HF state dict (numpy) -> ssl_jax params for `model_for(cfg, params)`."""
  if isinstance(cfg, BertConfig):
    params = _bert_from_hf(cfg, state_dict)
  elif isinstance(cfg, GPTConfig):
    params = _gpt2_from_hf(cfg, state_dict)
  else:
    return _encoder_decoder().params_from_hf(cfg, state_dict)
  dtype = jnp.dtype(cfg.param_dtype)   # as the encoder-decoders' (e.g. param_dtype='bfloat16')
  return with_layer_layout(jax.tree.map(lambda x: np.asarray(x, dtype), params), cfg.scan_layers)


def params_to_hf(cfg, params: dict) -> dict[str, np.ndarray]:
  """ssl_jax params (scanned or not) -> HF state dict (numpy, float32 as stored)."""
  if isinstance(cfg, EncoderDecoderConfig):
    return _encoder_decoder().params_to_hf(cfg, params)
  params = unstack_layer_params(_unbox(params))
  if isinstance(cfg, BertConfig):
    return _bert_to_hf(cfg, params)
  return _gpt2_to_hf(cfg, params)


def model_for(cfg, params=None):
  """The ssl_jax module for a config (BERT: BertForPreTraining unless params lack heads)."""
  if isinstance(cfg, BertConfig):
    return bert.BertModel(cfg) if params is not None and 'bert' not in params else \
        bert.BertForPreTraining(cfg)
  if isinstance(cfg, GPTConfig):
    return gpt.GPT(cfg)
  from ssl_jax.models import encoder_decoder
  return encoder_decoder.EncoderDecoder(cfg)


# ------------------------------------------------------------------------------ files
def from_pretrained(path_or_model, **config_overrides) -> tuple[Any, dict]:
  """Loads an HF model (a transformers model object, or a directory with config.json and
  model.safetensors or pytorch_model.bin) as (ssl_jax module, params).

  config_overrides replace fields of the converted config (e.g. scan_layers=True,
  dtype='bfloat16'). BERT checkpoints with an MLM head give BertForPreTraining, without one
  BertModel; a pooler or sentence head the checkpoint lacks (BertForMaskedLM has neither) is
  initialised as transformers initialises it, with a warning naming it.
  """
  if isinstance(path_or_model, (str, os.PathLike)):
    hf_config, state_dict = _read_dir(os.fspath(path_or_model))
  else:
    hf_config = path_or_model.config
    state_dict = {k: v.detach().cpu().float().numpy()
                  for k, v in path_or_model.state_dict().items()}
  cfg = dataclasses.replace(config_from_hf(hf_config), **config_overrides)
  params = params_from_hf(cfg, state_dict)
  return model_for(cfg, params), params


def save_pretrained(model, params: dict, out_dir: str, token_ids: dict | None = None) -> None:
  """Writes config.json + model.safetensors that `transformers` loads as the same model.

  token_ids (e.g. {'pad_token_id': 0, 'eos_token_id': 3}) set the config's special ids to the
  vocabulary's; without them config.json keeps transformers' defaults for the family.
  """
  from safetensors.numpy import save_file
  cfg = model.config
  hf_config = hf_config_from(cfg)
  if isinstance(model, bert.BertModel):
    hf_config.architectures = ['BertModel']
  for name, value in (token_ids or {}).items():
    setattr(hf_config, name, value)
  state_dict = params_to_hf(cfg, params)
  os.makedirs(out_dir, exist_ok=True)
  hf_config.save_pretrained(out_dir)
  if isinstance(cfg, EncoderDecoderConfig):
    _encoder_decoder().fix_saved_config(cfg, out_dir)
  save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()},
            os.path.join(out_dir, 'model.safetensors'), metadata={'format': 'pt'})


def _read_dir(path):
  import transformers
  if not os.path.isfile(os.path.join(path, 'config.json')):
    raise FileNotFoundError(f'{path}/config.json not found: pass a Hugging Face model '
                            'directory (config.json + model.safetensors or pytorch_model.bin)')
  hf_config = transformers.AutoConfig.from_pretrained(path)
  st, pt = os.path.join(path, 'model.safetensors'), os.path.join(path, 'pytorch_model.bin')
  if os.path.isfile(st):
    from safetensors.numpy import load_file
    state_dict = load_file(st)
  elif os.path.isfile(pt):
    import torch
    state_dict = {k: v.float().numpy() for k, v in
                  torch.load(pt, map_location='cpu', weights_only=True).items()}
  elif any(name.endswith('.index.json') for name in os.listdir(path)):
    raise FileNotFoundError(f'{path} holds a sharded checkpoint (an *.index.json), which is not '
                            'supported; save the model unsharded (model.safetensors)')
  else:
    raise FileNotFoundError(f'{path} has config.json but no weights: no model.safetensors or '
                            'pytorch_model.bin; pass the directory save_pretrained wrote')
  return hf_config, {k: np.asarray(v, np.float32) if v.dtype != np.int64 else v
                     for k, v in state_dict.items()}


def _unbox(params):
  import flax.linen as nn
  return nn.unbox(params)


class _StateDict:
  """Reads HF weights by name, remembering which were used so leftovers are reported."""

  def __init__(self, state_dict, prefix, ignore=()):
    self.sd, self.prefix, self.used = state_dict, prefix, set()
    self.ignore = ignore

  def __call__(self, name):
    key = self.prefix + name
    if key not in self.sd:
      raise ValueError(f'HF weight {key!r} is missing from the state dict; is the checkpoint '
                       'complete and of the expected architecture?')
    self.used.add(key)
    return np.asarray(self.sd[key], np.float32)

  def check_all_used(self):
    left = sorted(k for k in self.sd if k not in self.used and not any(
        s in k for s in self.ignore))
    if left:
      raise ValueError(f'HF weights not used by the ssl_jax model: {left[:8]}'
                       f'{" ..." if len(left) > 8 else ""}; the checkpoint has parts '
                       'ssl_jax does not implement')


# ------------------------------------------------------------------------------ BERT
def _bert_config_from_hf(c) -> BertConfig:
  for field in ('is_decoder', 'add_cross_attention'):
    _require(c, field, False, False)
  _require(c, 'position_embedding_type', 'absolute', 'absolute')
  return BertConfig(
      vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_layers=c.num_hidden_layers,
      num_heads=c.num_attention_heads, mlp_dim=c.intermediate_size,
      max_length=c.max_position_embeddings, dropout_rate=c.hidden_dropout_prob,
      attention_dropout_rate=c.attention_probs_dropout_prob, layer_norm_eps=c.layer_norm_eps,
      initializer_range=c.initializer_range, type_vocab_size=c.type_vocab_size,
      activation=_activation(c, 'hidden_act'), pad_token_id=c.pad_token_id or 0)


def _check_bert_exportable(cfg: BertConfig) -> None:
  """Raises for a BertConfig that transformers' BERT cannot express (config and weights alike)."""
  if cfg.position_embedding != 'learned':
    raise ValueError(f'BertConfig.position_embedding={cfg.position_embedding!r}: transformers '
                     "BERT has learned absolute positions only; only a model trained with "
                     "position_embedding='learned' converts")


def _bert_hf_config(cfg: BertConfig):
  import transformers
  _check_bert_exportable(cfg)
  if cfg.resolved_head_dim * cfg.num_heads != cfg.hidden_size:
    raise ValueError(f'BertConfig.head_dim={cfg.head_dim}: HF BERT needs num_heads * head_dim '
                     '== hidden_size; set head_dim=0')
  return transformers.BertConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      intermediate_size=cfg.mlp_dim, hidden_act=cfg.activation,
      hidden_dropout_prob=cfg.dropout_rate,
      attention_probs_dropout_prob=cfg.attention_dropout_rate,
      max_position_embeddings=cfg.max_length, type_vocab_size=cfg.type_vocab_size,
      initializer_range=cfg.initializer_range, layer_norm_eps=cfg.layer_norm_eps,
      pad_token_id=cfg.pad_token_id, architectures=['BertForPreTraining'])


def _dense_from(w, b):   # torch Linear [out, in] -> flax Dense
  return {'kernel': w.T, 'bias': b}


def _norm_from(w, b):
  return {'scale': w, 'bias': b}


def _bert_from_hf(cfg: BertConfig, sd) -> dict:
  prefix = 'bert.' if 'bert.embeddings.word_embeddings.weight' in sd else ''
  # BertForPreTraining has both heads; BertForMaskedLM (what run_mlm.py saves) has the MLM head
  # but neither the pooler nor the sentence head, which then start as transformers starts them.
  with_heads = 'cls.predictions.bias' in sd
  fresh = []

  def dense_or_fresh(name, features):
    if f'{get.prefix}{name}.weight' in sd:
      return _dense_from(p(f'{name}.weight'), p(f'{name}.bias'))
    fresh.append(get.prefix + name)
    kernel = np.random.default_rng(len(fresh)).normal(0, cfg.initializer_range, (e, features))
    return {'kernel': kernel.astype(np.float32), 'bias': np.zeros(features, np.float32)}

  # position_ids is a buffer; heads of other architectures are dropped when loading BertModel.
  get = _StateDict(sd, prefix, ignore=('position_ids',) if with_heads else
                   ('position_ids', 'cls.', 'classifier.', 'qa_outputs.'))
  n, h, e = cfg.num_heads, cfg.resolved_head_dim, cfg.hidden_size
  p = lambda name: get(name)   # noqa: E731
  model = {
      'token_embed': {'embedding': p('embeddings.word_embeddings.weight')},
      'position_embed': {'embedding': p('embeddings.position_embeddings.weight')},
      'type_embed': {'embedding': p('embeddings.token_type_embeddings.weight')},
      'embed_norm': _norm_from(p('embeddings.LayerNorm.weight'), p('embeddings.LayerNorm.bias')),
      'pooler': dense_or_fresh('pooler.dense', e),
      'encoder': {},
  }
  for i in range(cfg.num_layers):
    q = lambda name, i=i: p(f'encoder.layer.{i}.{name}')   # noqa: E731
    attn = {nm: {'kernel': q(f'attention.self.{nm}.weight').T.reshape(e, n, h),
                 'bias': q(f'attention.self.{nm}.bias').reshape(n, h)}
            for nm in ('query', 'key', 'value')}
    attn['out'] = {'kernel': q('attention.output.dense.weight').T.reshape(n, h, e),
                   'bias': q('attention.output.dense.bias')}
    model['encoder'][f'layers_{i}'] = {
        'attention': attn,
        'attention_norm': _norm_from(q('attention.output.LayerNorm.weight'),
                                     q('attention.output.LayerNorm.bias')),
        'mlp': {'wi': _dense_from(q('intermediate.dense.weight'), q('intermediate.dense.bias')),
                'wo': _dense_from(q('output.dense.weight'), q('output.dense.bias'))},
        'mlp_norm': _norm_from(q('output.LayerNorm.weight'), q('output.LayerNorm.bias')),
    }
  if not with_heads:
    get.check_all_used()
    _warn_fresh(fresh)
    return model
  get.prefix = ''
  params = {
      'bert': model,
      'mlm_transform': _dense_from(p('cls.predictions.transform.dense.weight'),
                                   p('cls.predictions.transform.dense.bias')),
      'mlm_norm': _norm_from(p('cls.predictions.transform.LayerNorm.weight'),
                             p('cls.predictions.transform.LayerNorm.bias')),
      'mlm_bias': p('cls.predictions.bias'),
      'sentence_head': dense_or_fresh('cls.seq_relationship', 2),
  }
  # The decoder is tied to the word embeddings (and its bias to cls.predictions.bias).
  for tied, source in (('cls.predictions.decoder.weight', f'{prefix}embeddings.word_embeddings.weight'),
                       ('cls.predictions.decoder.bias', 'cls.predictions.bias')):
    if tied in sd and not np.array_equal(sd[tied], sd[source]):
      raise ValueError(f'{tied} differs from {source}: untied MLM decoders are not supported')
    get.used.add(tied)
  get.check_all_used()
  _warn_fresh(fresh)
  return params


def _warn_fresh(names):
  if names:
    warnings.warn(f'the checkpoint has no {", ".join(names)}: initialised from a normal '
                  'distribution with the config\'s initializer_range, as transformers does; '
                  'train them before relying on them')


def _bert_to_hf(cfg: BertConfig, params) -> dict:
  _check_bert_exportable(cfg)
  with_heads = 'bert' in params
  model = params['bert'] if with_heads else params
  prefix = 'bert.' if with_heads else ''
  e = cfg.hidden_size
  sd = {}

  def dense(name, d):
    sd[f'{name}.weight'], sd[f'{name}.bias'] = np.asarray(d['kernel']).T, d['bias']

  def norm(name, d):
    sd[f'{name}.weight'], sd[f'{name}.bias'] = d['scale'], d['bias']

  sd[f'{prefix}embeddings.word_embeddings.weight'] = model['token_embed']['embedding']
  sd[f'{prefix}embeddings.position_embeddings.weight'] = model['position_embed']['embedding']
  sd[f'{prefix}embeddings.token_type_embeddings.weight'] = model['type_embed']['embedding']
  norm(f'{prefix}embeddings.LayerNorm', model['embed_norm'])
  dense(f'{prefix}pooler.dense', model['pooler'])
  for i in range(cfg.num_layers):
    layer, name = model['encoder'][f'layers_{i}'], f'{prefix}encoder.layer.{i}'
    for nm in ('query', 'key', 'value'):
      a = layer['attention'][nm]
      sd[f'{name}.attention.self.{nm}.weight'] = np.asarray(a['kernel']).reshape(e, -1).T
      sd[f'{name}.attention.self.{nm}.bias'] = np.asarray(a['bias']).reshape(-1)
    out = layer['attention']['out']
    sd[f'{name}.attention.output.dense.weight'] = np.asarray(out['kernel']).reshape(-1, e).T
    sd[f'{name}.attention.output.dense.bias'] = out['bias']
    norm(f'{name}.attention.output.LayerNorm', layer['attention_norm'])
    dense(f'{name}.intermediate.dense', layer['mlp']['wi'])
    dense(f'{name}.output.dense', layer['mlp']['wo'])
    norm(f'{name}.output.LayerNorm', layer['mlp_norm'])
  if with_heads:
    dense('cls.predictions.transform.dense', params['mlm_transform'])
    norm('cls.predictions.transform.LayerNorm', params['mlm_norm'])
    sd['cls.predictions.bias'] = params['mlm_bias']
    dense('cls.seq_relationship', params['sentence_head'])
  return {k: np.asarray(v, np.float32) for k, v in sd.items()}


# ------------------------------------------------------------------------------ GPT-2
def _gpt2_config_from_hf(c) -> GPTConfig:
  _require(c, 'add_cross_attention', False, False)
  _require(c, 'scale_attn_weights', True, True)
  _require(c, 'scale_attn_by_inverse_layer_idx', False, False)
  _require(c, 'tie_word_embeddings', True, True)
  if c.embd_pdrop != c.resid_pdrop:
    _unsupported(c, 'embd_pdrop', c.embd_pdrop, f'ssl_jax uses one dropout_rate; set it equal '
                 f'to resid_pdrop={c.resid_pdrop}')
  return GPTConfig(
      vocab_size=c.vocab_size, hidden_size=c.n_embd, num_layers=c.n_layer, num_heads=c.n_head,
      mlp_dim=c.n_inner or 4 * c.n_embd, max_length=c.n_positions,
      dropout_rate=c.resid_pdrop, attention_dropout_rate=c.attn_pdrop,
      layer_norm_eps=c.layer_norm_epsilon, initializer_range=c.initializer_range,
      activation=_activation(c, 'activation_function'))


_GPT2_EOS = 50256   # GPT-2's <|endoftext|>


def _gpt2_hf_config(cfg: GPTConfig):
  import transformers
  if cfg.resolved_head_dim * cfg.num_heads != cfg.hidden_size:
    raise ValueError(f'GPTConfig.head_dim={cfg.head_dim}: HF GPT-2 needs num_heads * head_dim '
                     '== hidden_size; set head_dim=0')
  return transformers.GPT2Config(
      vocab_size=cfg.vocab_size, n_positions=cfg.max_length, n_embd=cfg.hidden_size,
      n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.mlp_dim,
      activation_function=cfg.activation, resid_pdrop=cfg.dropout_rate,
      embd_pdrop=cfg.dropout_rate, attn_pdrop=cfg.attention_dropout_rate,
      layer_norm_epsilon=cfg.layer_norm_eps, initializer_range=cfg.initializer_range,
      architectures=['GPT2LMHeadModel'], **_gpt2_default_ids(cfg.vocab_size))


def _gpt2_default_ids(vocab_size: int) -> dict:
  """transformers' GPT-2 BOS/EOS default, 50256, where the vocabulary has that id; none in a
  smaller one (transformers warns of an id outside the vocabulary; `ssl-jax convert` sets the
  run's own)."""
  return {} if vocab_size > _GPT2_EOS else {'bos_token_id': None, 'eos_token_id': None}


def _gpt2_from_hf(cfg: GPTConfig, sd) -> dict:
  prefix = 'transformer.' if 'transformer.wte.weight' in sd else ''
  # attn.bias / masked_bias are causal-mask buffers of older checkpoints; lm_head is tied.
  get = _StateDict(sd, prefix, ignore=('.attn.bias', '.attn.masked_bias'))
  if 'lm_head.weight' in sd:
    if not np.array_equal(sd['lm_head.weight'], sd[prefix + 'wte.weight']):
      raise ValueError('lm_head.weight differs from wte.weight: untied GPT-2 heads are not '
                       'supported')
    get.used.add('lm_head.weight')
  n, h, e = cfg.num_heads, cfg.resolved_head_dim, cfg.hidden_size
  norm = lambda name: _norm_from(get(f'{name}.weight'), get(f'{name}.bias'))   # noqa: E731
  params = {'token_embed': {'embedding': get('wte.weight')},
            'position_embed': {'embedding': get('wpe.weight')},
            'final_norm': norm('ln_f'), 'decoder': {}}
  for i in range(cfg.num_layers):
    name = f'h.{i}'
    # Conv1D weights are [in, out]: no transpose.
    qkv_w, qkv_b = get(f'{name}.attn.c_attn.weight'), get(f'{name}.attn.c_attn.bias')
    attn = {nm: {'kernel': qkv_w[:, j * e:(j + 1) * e].reshape(e, n, h),
                 'bias': qkv_b[j * e:(j + 1) * e].reshape(n, h)}
            for j, nm in enumerate(('query', 'key', 'value'))}
    attn['out'] = {'kernel': get(f'{name}.attn.c_proj.weight').reshape(n, h, e),
                   'bias': get(f'{name}.attn.c_proj.bias')}
    params['decoder'][f'layers_{i}'] = {
        'attention_norm': norm(f'{name}.ln_1'), 'attention': attn,
        'mlp_norm': norm(f'{name}.ln_2'),
        'mlp': {'wi': {'kernel': get(f'{name}.mlp.c_fc.weight'),
                       'bias': get(f'{name}.mlp.c_fc.bias')},
                'wo': {'kernel': get(f'{name}.mlp.c_proj.weight'),
                       'bias': get(f'{name}.mlp.c_proj.bias')}},
    }
  get.check_all_used()
  return params


def _gpt2_to_hf(cfg: GPTConfig, params) -> dict:
  e = cfg.hidden_size
  sd = {'transformer.wte.weight': params['token_embed']['embedding'],
        'transformer.wpe.weight': params['position_embed']['embedding']}

  def put(name, d, keys=('kernel', 'bias'), hf=('weight', 'bias')):
    for k, k_hf in zip(keys, hf):
      sd[f'transformer.{name}.{k_hf}'] = d[k]

  put('ln_f', params['final_norm'], ('scale', 'bias'))
  for i in range(cfg.num_layers):
    layer, name = params['decoder'][f'layers_{i}'], f'h.{i}'
    attn = layer['attention']
    put(f'{name}.ln_1', layer['attention_norm'], ('scale', 'bias'))
    put(f'{name}.ln_2', layer['mlp_norm'], ('scale', 'bias'))
    sd[f'transformer.{name}.attn.c_attn.weight'] = np.concatenate(
        [np.asarray(attn[nm]['kernel']).reshape(e, e) for nm in ('query', 'key', 'value')], 1)
    sd[f'transformer.{name}.attn.c_attn.bias'] = np.concatenate(
        [np.asarray(attn[nm]['bias']).reshape(e) for nm in ('query', 'key', 'value')])
    sd[f'transformer.{name}.attn.c_proj.weight'] = np.asarray(attn['out']['kernel']).reshape(e, e)
    sd[f'transformer.{name}.attn.c_proj.bias'] = attn['out']['bias']
    put(f'{name}.mlp.c_fc', layer['mlp']['wi'])
    put(f'{name}.mlp.c_proj', layer['mlp']['wo'])
  return {k: np.asarray(v, np.float32) for k, v in sd.items()}
