"""GPT-2: pre-LN causal transformer decoder with learned positions and tied embeddings.

Matches `transformers.GPT2LMHeadModel` numerically (see ssl_jax.interop.hf). Packed rows
(examples told apart by `segment_ids`) attend causally within their own example only.
With decode=True the model runs incrementally from the 'cache' collection (see
ssl_jax.models.decoding): create it with `decoding.init_cache`, then feed chunks of tokens.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.models import layers
from ssl_jax.models.config import GPTConfig


class GPT(nn.Module):
  """Token + position embeddings -> pre-LN decoder stack -> final LayerNorm -> tied logits."""
  config: GPTConfig

  @nn.compact
  def __call__(self, tokens, segment_ids=None, positions=None, *, deterministic: bool = True,
               decode: bool = False) -> jax.Array:
    """tokens [B, L] -> float32 logits [B, L, V] for the next token at each position.

    segment_ids None means one unpadded example per row. decode=True appends `tokens` to
    the KV cache (positions default to the number of tokens already cached) and attends to
    the whole cache; segment_ids are ignored then.
    """
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    init = layers.normal_init(cfg.initializer_range)
    token_embed = layers.Embed(cfg.vocab_size, cfg.hidden_size, init, dtype=dtype,
                               param_dtype=param_dtype, name='token_embed')
    length = tokens.shape[1]
    if not decode:
      layers.check_length(length, cfg.max_length)
    if positions is None:
      positions = jnp.arange(length)[None, :]
      if decode:
        start = self.variable('cache', 'position_index', lambda: jnp.array(0, jnp.int32))
        positions = positions + start.value
        if not self.is_initializing():
          start.value = start.value + length
    x = token_embed(tokens) + layers.position_embed(
        cfg.max_length, cfg.hidden_size, cfg.initializer_range, dtype, param_dtype)(positions)
    x = layers.constrain(nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic))
    if decode:
      mask = None   # the attention cache builds the causal mask over cached positions
    else:
      mask = layers.combine_masks(
          layers.make_causal_mask(length),
          None if segment_ids is None else layers.make_attention_mask(segment_ids, segment_ids))
    layer_kwargs = dict(
        num_heads=cfg.num_heads, head_dim=cfg.resolved_head_dim, mlp_dim=cfg.mlp_dim,
        activation=cfg.activation, pre_norm=True, norm='layer',
        layer_norm_eps=cfg.layer_norm_eps, dropout_rate=cfg.dropout_rate,
        attention_dropout_rate=cfg.attention_dropout_rate, kernel_init=init,
        # GPT-2 scales residual output projections by 1/sqrt(2 * num_layers).
        out_kernel_init=layers.normal_init(cfg.initializer_range / math.sqrt(2 * cfg.num_layers)),
        dtype=dtype, param_dtype=param_dtype)
    x = layers.LayerStack(layers.TransformerLayer, layer_kwargs, cfg.num_layers,
                          cfg.scan_layers, cfg.remat_policy, name='decoder')(
                              x, mask, deterministic=deterministic, decode=decode)
    x = layers.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype,
                         name='final_norm')(x)
    return token_embed.attend(x).astype(jnp.float32)
