"""BERT: post-LN transformer encoder with masked-LM and sentence (NSP/SOP) heads.

Matches `transformers.BertModel` / `BertForPreTraining` numerically (see ssl_jax.interop.hf);
packed rows (several examples per row, told apart by `segment_ids`) never attend across
examples, and positions restart per example when `positions` is given. With
`position_embedding='alibi'` (MosaicBERT) positions come from ALiBi's attention bias instead.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.models import layers
from ssl_jax.models.config import BertConfig


def _dense(features, axes, cfg: BertConfig, name):
  return layers.Projection((features,), 1, axes,
                           kernel_init=layers.normal_init(cfg.initializer_range),
                           dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                           name=name)


def gather(x: jax.Array, positions: jax.Array) -> jax.Array:
  """x [B, L, ...], positions [B, P] -> x at those positions [B, P, ...]."""
  idx = positions.reshape(positions.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


class BertModel(nn.Module):
  """Embeddings (token + position + token type, LayerNorm, dropout), encoder and pooler."""
  config: BertConfig

  def setup(self):
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    init = layers.normal_init(cfg.initializer_range)
    self.token_embed = layers.Embed(cfg.vocab_size, cfg.hidden_size, init, dtype=dtype,
                                    param_dtype=param_dtype)
    # ALiBi has no position table: it biases the attention logits by distance instead.
    self.position_embed = (layers.position_embed(cfg.max_length, cfg.hidden_size,
                                                 cfg.initializer_range, dtype, param_dtype)
                           if cfg.position_embedding == 'learned' else None)
    self.type_embed = layers.Embed(cfg.type_vocab_size, cfg.hidden_size, init,
                                   axes=(None, 'embed'), dtype=dtype, param_dtype=param_dtype)
    self.embed_norm = layers.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dtype,
                                       param_dtype=param_dtype)
    self.embed_dropout = nn.Dropout(cfg.dropout_rate)
    self.encoder = layers.LayerStack(
        layers.TransformerLayer,
        dict(num_heads=cfg.num_heads, head_dim=cfg.resolved_head_dim, mlp_dim=cfg.mlp_dim,
             activation=cfg.activation, pre_norm=False, norm='layer',
             layer_norm_eps=cfg.layer_norm_eps, dropout_rate=cfg.dropout_rate,
             attention_dropout_rate=cfg.attention_dropout_rate, kernel_init=init,
             dtype=dtype, param_dtype=param_dtype),
        cfg.num_layers, cfg.scan_layers, cfg.remat_policy)
    self.pooler = _dense(cfg.hidden_size, ('mlp', 'embed'), cfg, 'pooler')

  def __call__(self, input_tokens, token_type_ids=None, segment_ids=None, positions=None,
               sentence_positions=None, *, deterministic: bool = True) -> dict:
    """input_tokens [B, L] -> {'hidden': [B, L, E], 'pooled': [B, S, E] or [B, E]}.

    pooled = tanh(dense(hidden)) at `sentence_positions` [B, S] (each packed example's
    [CLS]), or at position 0 when None. segment_ids None means no padding mask.
    """
    hidden = self.encode(input_tokens, token_type_ids, segment_ids, positions,
                         deterministic=deterministic)
    return {'hidden': hidden, 'pooled': self.pool(hidden, sentence_positions)}

  def encode(self, input_tokens, token_type_ids=None, segment_ids=None, positions=None, *,
             deterministic: bool = True):
    """input_tokens [B, L] -> final hidden states [B, L, E]."""
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_tokens)
    x = self.token_embed(input_tokens) + self.type_embed(token_type_ids)
    bias = None
    if self.position_embed is not None:
      layers.check_length(input_tokens.shape[1], self.config.max_length)
      if positions is None:
        positions = jnp.arange(input_tokens.shape[1])[None, :]
      x = x + self.position_embed(positions)
    else:   # ALiBi: distances within a packed example are index distances; across, masked
      bias = layers.alibi_bias(self.config.num_heads, input_tokens.shape[1],
                               self.config.alibi_bias_max)
    x = self.embed_dropout(self.embed_norm(x), deterministic=deterministic)
    x = layers.constrain(x)
    mask = None if segment_ids is None else layers.make_attention_mask(segment_ids, segment_ids)
    return self.encoder(x, mask, bias, deterministic=deterministic)

  def pool(self, hidden, sentence_positions=None):
    """tanh(dense(hidden)) at sentence_positions [B, S] -> [B, S, E]; None -> [B, E] at 0."""
    first = hidden[:, 0] if sentence_positions is None else gather(hidden, sentence_positions)
    return jnp.tanh(self.pooler(first))


class BertForPreTraining(nn.Module):
  """BertModel + MLM head (tied output embedding + vocab bias) + 2-way sentence head."""
  config: BertConfig

  def setup(self):
    cfg = self.config
    self.bert = BertModel(cfg)
    self.mlm_transform = _dense(cfg.hidden_size, ('mlp', 'embed'), cfg, 'mlm_transform')
    self.mlm_norm = layers.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.dtype(cfg.dtype),
                                     param_dtype=jnp.dtype(cfg.param_dtype))
    self.mlm_bias = self.param(
        'mlm_bias', nn.with_logical_partitioning(nn.initializers.zeros, ('vocab',)),
        (cfg.vocab_size,), jnp.dtype(cfg.param_dtype))
    self.sentence_head = _dense(2, ('embed', None), cfg, 'sentence_head')

  def __call__(self, input_tokens, token_type_ids=None, segment_ids=None, positions=None,
               masked_positions: Optional[jax.Array] = None,
               sentence_positions: Optional[jax.Array] = None, *,
               deterministic: bool = True) -> dict:
    """Returns {'hidden' [B,L,E], 'mlm_logits' [B,P,V] (or [B,L,V] when masked_positions is
    None), 'sentence_logits' [B,S,2] (or [B,2] when sentence_positions is None)}; logits
    are float32."""
    hidden = self.bert.encode(input_tokens, token_type_ids, segment_ids, positions,
                              deterministic=deterministic)
    # Gather before the vocab projection: [B,P,V] instead of [B,L,V] logits.
    h = hidden if masked_positions is None else gather(hidden, masked_positions)
    h = self.mlm_norm(layers.ACTIVATIONS[self.config.activation](self.mlm_transform(h)))
    mlm_logits = self.bert.token_embed.attend(h, self.mlm_bias)
    pooled = self.bert.pool(hidden, sentence_positions)
    return {'hidden': hidden, 'mlm_logits': mlm_logits.astype(jnp.float32),
            'sentence_logits': self.sentence_head(pooled).astype(jnp.float32)}
