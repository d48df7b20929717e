"""Encoder-decoder transformer: T5 v1.1 or BART, chosen by `EncoderDecoderConfig.family`.

Matches `transformers.T5ForConditionalGeneration` / `BartForConditionalGeneration`
numerically (see ssl_jax.interop.hf_encoder_decoder).

  family 't5':   shared token embedding; relative position bias computed once per stack
                 (bidirectional in the encoder, causal buckets in the decoder) and added in
                 every layer; pre-norm RMSNorm; no biases; no 1/sqrt(head_dim) in attention
                 (folded into the query init); final RMSNorm per stack; LM head untied, or
                 tied and scaled by hidden_size**-0.5 (T5 v1.0) when tie_word_embeddings.
  family 'bart': shared token embedding (times sqrt(hidden_size) if scale_embedding) plus
                 learned positions with HF's offset of 2, then LayerNorm; post-norm
                 LayerNorm layers with biases; LM head tied (or untied) + final_logits_bias.
                 With pre_norm (mBART's layout): pre-norm layers and a final LayerNorm
                 per stack.

Packed rows (seqio EncDecFeatureConverter: several examples per row, told apart by
`*_segment_ids`, `*_positions` restarting at 0) never attend across examples, and positions
(learned or relative) come from `*_positions`. With decode=True the decoder runs incrementally
from the 'cache' collection (see ssl_jax.models.decoding).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.models import dense
from ssl_jax.models import layers
from ssl_jax.models.config import EncoderDecoderConfig

BART_POSITION_OFFSET = 2   # HF BartLearnedPositionalEmbedding reserves rows 0 and 1.


def _inits(cfg: EncoderDecoderConfig) -> dict:
  """Kernel initialisers per family: T5 scales by fan-in (as t5x/HF), BART uses N(0, std)."""
  if cfg.family == 't5':
    fan_in = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
    return dict(kernel_init=layers.normal_init(cfg.hidden_size ** -0.5),
                query_kernel_init=layers.normal_init(
                    (cfg.hidden_size * cfg.resolved_head_dim) ** -0.5),
                out_kernel_init=fan_in)
  return dict(kernel_init=layers.normal_init(cfg.initializer_range))


def _layer_kwargs(cfg: EncoderDecoderConfig, cross_attention: bool) -> dict:
  t5 = cfg.family == 't5'
  return dict(
      num_heads=cfg.num_heads, head_dim=cfg.resolved_head_dim, mlp_dim=cfg.mlp_dim,
      activation=cfg.activation, pre_norm=t5 or cfg.pre_norm, norm='rms' if t5 else 'layer',
      layer_norm_eps=cfg.layer_norm_eps, use_bias=not t5, scale_attention=not t5,
      cross_attention=cross_attention, dropout_rate=cfg.dropout_rate,
      attention_dropout_rate=cfg.attention_dropout_rate,
      intermediate_dropout_rate=cfg.dropout_rate, dtype=jnp.dtype(cfg.dtype),
      param_dtype=jnp.dtype(cfg.param_dtype), **_inits(cfg))


class _Stack(nn.Module):
  """Embeddings -> encoder or decoder layers -> final norm (T5, pre-norm BART) -> [B, L, E]."""
  config: EncoderDecoderConfig
  token_embed: nn.Module
  is_decoder: bool

  @nn.compact
  def __call__(self, tokens, segment_ids=None, positions=None, encoded=None,
               encoder_segment_ids=None, *, deterministic: bool = True,
               decode: bool = False):
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    length = tokens.shape[1]
    key_positions = positions
    if decode:
      # The position written into each cache slot: the keys' positions for the T5 bias.
      written = self.variable('cache', 'cached_positions', jnp.zeros, tokens.shape, jnp.int32)
      start = self.variable('cache', 'position_index', lambda: jnp.array(0, jnp.int32))
      if positions is None:
        positions = start.value + jnp.arange(length)[None]
      positions = jnp.broadcast_to(positions, tokens.shape).astype(jnp.int32)
      if not self.is_initializing():
        written.value = jax.lax.dynamic_update_slice(written.value, positions, (0, start.value))
        start.value = start.value + length
      key_positions = written.value

    x = self.token_embed(tokens)
    if cfg.family == 'bart':
      if not decode:
        layers.check_length(length, cfg.max_length)
      if cfg.scale_embedding:
        x = x * jnp.asarray(math.sqrt(cfg.hidden_size), dtype)
      if positions is None:
        positions = jnp.arange(length)[None]
      x = x + layers.position_embed(cfg.max_length + BART_POSITION_OFFSET, cfg.hidden_size,
                                    cfg.initializer_range, dtype, param_dtype)(
                                        positions + BART_POSITION_OFFSET)
      x = layers.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype,
                           name='embed_norm')(x)
    x = layers.constrain(nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic))

    # Self-attention mask; while decoding the KV cache supplies the causal mask instead.
    mask = None
    if not decode:
      mask = layers.combine_masks(
          layers.make_causal_mask(length) if self.is_decoder else None,
          None if segment_ids is None else layers.make_attention_mask(segment_ids, segment_ids))
    bias = None
    if cfg.family == 't5':
      # One bias table per stack, shared by all its layers (HF keeps it in layer 0).
      bias = layers.RelativePositionBias(
          cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
          cfg.num_heads, bidirectional=not self.is_decoder,
          embedding_init=layers.normal_init(cfg.hidden_size ** -0.5), dtype=dtype,
          param_dtype=param_dtype, name='relative_bias')(
              length, length if key_positions is None else key_positions.shape[1],
              q_positions=positions, k_positions=key_positions)

    args = (mask, bias)
    if self.is_decoder:
      if encoder_segment_ids is None:
        cross_mask = None
      elif segment_ids is None or decode:
        cross_mask = (encoder_segment_ids > 0)[:, None, None, :]
      else:
        cross_mask = layers.make_attention_mask(segment_ids, encoder_segment_ids)
      args += (encoded, cross_mask)
    x = layers.LayerStack(layers.TransformerLayer, _layer_kwargs(cfg, self.is_decoder),
                          cfg.num_decoder_layers if self.is_decoder else cfg.num_layers,
                          cfg.scan_layers, cfg.remat_policy, name='stack')(
                              x, *args, deterministic=deterministic, decode=decode)
    if cfg.family == 't5':
      x = layers.RMSNorm(epsilon=cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype,
                         name='final_norm')(x)
      x = layers.constrain(nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic))
    elif cfg.pre_norm:   # mBART: no dropout after the final LayerNorm
      x = layers.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype,
                           name='final_norm')(x)
    return x


class EncoderDecoder(nn.Module):
  """T5 v1.1 / BART encoder-decoder returning next-token logits of the decoder.

  Params: 'token_embed' (shared by encoder, decoder and, when tied, the LM head),
  'encoder', 'decoder' (each with a LayerStack 'stack'), 'lm_head' (untied) and
  'final_logits_bias' (BART). Layer outputs are sown to 'intermediates' as
  encoder/stack/hidden_states and decoder/stack/hidden_states ([num_layers, B, L, E]).
  """
  config: EncoderDecoderConfig

  def setup(self):
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    embed_std = 1.0 if cfg.family == 't5' else cfg.initializer_range
    self.token_embed = layers.Embed(cfg.vocab_size, cfg.hidden_size,
                                    layers.normal_init(embed_std), dtype=dtype,
                                    param_dtype=param_dtype)
    self.encoder = _Stack(cfg, self.token_embed, is_decoder=False)
    self.decoder = _Stack(cfg, self.token_embed, is_decoder=True)
    if not cfg.tie_word_embeddings:
      head_init = (nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')   # as t5x
                   if cfg.family == 't5' else layers.normal_init(cfg.initializer_range))
      self.lm_head = layers.Projection((cfg.vocab_size,), 1, ('embed', 'vocab'), use_bias=False,
                                       kernel_init=head_init, dtype=dtype,
                                       param_dtype=param_dtype)
    if cfg.family == 'bart':
      # A buffer in HF (always zeros when pretrained from scratch); a plain param here.
      self.final_logits_bias = self.param(
          'final_logits_bias', nn.with_logical_partitioning(nn.initializers.zeros, ('vocab',)),
          (cfg.vocab_size,), param_dtype)

  def encode(self, encoder_input_tokens, encoder_segment_ids=None, encoder_positions=None, *,
             deterministic: bool = True) -> jax.Array:
    """encoder_input_tokens [B, Le] -> encoder output [B, Le, E] (compute dtype)."""
    return self.encoder(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                        deterministic=deterministic)

  def decode(self, encoded, decoder_input_tokens, encoder_segment_ids=None,
             decoder_segment_ids=None, decoder_positions=None, *, deterministic: bool = True,
             decode: bool = False) -> jax.Array:
    """Encoder output [B, Le, E] and decoder_input_tokens [B, Ld] -> float32 logits [B, Ld, V].

    encoder_segment_ids masks encoder padding (and, with decoder_segment_ids, other packed
    examples) out of cross-attention. decode=True appends decoder_input_tokens to the KV
    cache (positions default to the number of tokens already cached); decoder_segment_ids
    are ignored then, and so is `encoded` after the first call, which adds its cross-attention
    keys and values to the cache (so a cache from `decoding.init_cache` changes structure once,
    and a new encoder output needs a new cache).
    """
    cfg = self.config
    x = self.decoder(decoder_input_tokens, decoder_segment_ids, decoder_positions, encoded,
                     encoder_segment_ids, deterministic=deterministic, decode=decode)
    if cfg.tie_word_embeddings:
      if cfg.family == 't5':   # T5 v1.0 rescales before reusing the input embedding.
        x = x * jnp.asarray(cfg.hidden_size ** -0.5, x.dtype)
      logits = self.token_embed.attend(x)
    else:
      logits = self.lm_head(x)
    logits = nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))
    logits = logits.astype(jnp.float32)
    if cfg.family == 'bart':
      logits = dense.bias_add(logits, jnp.asarray(self.final_logits_bias, jnp.float32))
    return logits

  def __call__(self, encoder_input_tokens, decoder_input_tokens, encoder_segment_ids=None,
               decoder_segment_ids=None, encoder_positions=None, decoder_positions=None, *,
               deterministic: bool = True, decode: bool = False) -> jax.Array:
    """Teacher-forced logits [B, Ld, V] (float32) for the token after each decoder input.

    segment ids None mean one unpadded example per row; positions None mean 0..L-1.
    """
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                          deterministic=deterministic)
    return self.decode(encoded, decoder_input_tokens, encoder_segment_ids, decoder_segment_ids,
                       decoder_positions, deterministic=deterministic, decode=decode)
