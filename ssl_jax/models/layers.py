"""Transformer building blocks shared by every family (BERT, GPT, T5, BART).

Conventions every module here keeps:
- every parameter is created with `nn.with_logical_partitioning` using the logical axis names
  'embed', 'mlp', 'heads', 'kv', 'vocab' (or None); scanned stacks add a leading 'layers' axis;
- `dtype` is the compute dtype, `param_dtype` the storage dtype;
- activations [B, L, E] are constrained to ('batch', 'length', 'embed');
- attention masks are boolean, broadcastable to [B, heads, q_len, kv_len], True = attend.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.models.dense import dense

Array = jax.Array
Dtype = Any
ACTIVATION_AXES = ('batch', 'length', 'embed')
# The collection MultiHeadAttention sows its probabilities into when it is mutable (probes).
ATTENTION_WEIGHTS = 'attention_weights'


def normal_init(stddev: float):
  return nn.initializers.normal(stddev=stddev)


def constrain(x: Array) -> Array:
  """Constrains a [B, L, E] activation to the ('batch', 'length', 'embed') logical axes."""
  return nn.with_logical_constraint(x, ACTIVATION_AXES)


# ---------------------------------------------------------------------------------- projection
class Projection(nn.Module):
  """Dense map from the last `in_ndim` axes of x to `out_shape`, e.g. [B,L,E] -> [B,L,N,H]; the
  models' one dense layer (attention, MLP, BERT's and the fine-tuning heads, T5's untied LM
  head), computed by `dense`.

  The kernel is created in its full [*in, *out] shape under `kernel_axes` (flax's DenseGeneral
  creates a flat 2-D kernel and reshapes it, which breaks a 3-D logical sharding constraint
  under a mesh). Param names ('kernel', 'bias') are DenseGeneral's.
  """
  out_shape: tuple[int, ...]
  in_ndim: int
  kernel_axes: tuple[Optional[str], ...]
  use_bias: bool = True
  kernel_init: Callable = normal_init(0.02)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_shape = x.shape[x.ndim - self.in_ndim:]
    kernel = self.param('kernel', nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
                        (*in_shape, *self.out_shape), self.param_dtype)
    bias = None
    if self.use_bias:
      bias = self.param('bias', nn.with_logical_partitioning(
          nn.initializers.zeros, self.kernel_axes[self.in_ndim:]), self.out_shape,
                        self.param_dtype).astype(self.dtype)
    return dense(x.astype(self.dtype), kernel.astype(self.dtype), bias, self.in_ndim)


# ---------------------------------------------------------------------------------- embeddings
class Embed(nn.Module):
  """A lookup table [num_embeddings, features]; `attend` is the tied output projection."""
  num_embeddings: int
  features: int
  embedding_init: Callable = normal_init(0.02)
  axes: tuple = ('vocab', 'embed')
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    if self.num_embeddings < 1:
      raise ValueError(f'num_embeddings={self.num_embeddings}: set the model vocab_size '
                       '(-1 must be resolved from the data vocabulary before building a model)')
    self.embedding = self.param(
        'embedding', nn.with_logical_partitioning(self.embedding_init, self.axes),
        (self.num_embeddings, self.features), self.param_dtype)

  def __call__(self, ids: Array) -> Array:
    """[...] int ids -> [..., features] embeddings."""
    # The lookup reads whole rows: gather the table's 'embed' shards first (as FSDP gathers every
    # kernel). Sharded on 'embed' (fsdp), the rows could not stay split over the batch's fsdp
    # shards, and XLA replicated the whole [B, L, E] output and its gradient on every device.
    table = nn.with_logical_constraint(jnp.asarray(self.embedding, self.dtype), (self.axes[0], None))
    return jnp.take(table, ids, axis=0)

  def attend(self, x: Array, bias: Optional[Array] = None) -> Array:
    """[..., features] -> [..., num_embeddings] logits against the table (weight tying), plus
    `bias` [num_embeddings] if given."""
    return dense(x.astype(self.dtype), jnp.asarray(self.embedding, self.dtype).T,
                 None if bias is None else jnp.asarray(bias, self.dtype))


def check_length(length: int, max_length: int) -> None:
  """Raises (at trace time) for rows longer than the learned position table: the lookup past it
  gives NaN, which attention spreads to every position of the row."""
  if length > max_length:
    raise ValueError(f'inputs of {length} tokens exceed config.model.max_length={max_length} '
                     'learned positions; use rows of at most max_length tokens.')


def position_embed(num_positions: int, features: int, init_std: float, dtype, param_dtype,
                   name: str = 'position_embed') -> Embed:
  """Learned absolute position embeddings (positions are not sharded on 'vocab')."""
  return Embed(num_positions, features, normal_init(init_std), axes=(None, 'embed'),
               dtype=dtype, param_dtype=param_dtype, name=name)


# ---------------------------------------------------------------------------------- norms
class LayerNorm(nn.LayerNorm):
  """nn.LayerNorm with scale/bias partitioned on 'embed'."""
  scale_init: Callable = nn.with_logical_partitioning(nn.initializers.ones, ('embed',))
  bias_init: Callable = nn.with_logical_partitioning(nn.initializers.zeros, ('embed',))


class RMSNorm(nn.RMSNorm):
  """T5 layer norm: x / sqrt(mean(x^2) + eps) * scale (no mean subtraction, no bias)."""
  scale_init: Callable = nn.with_logical_partitioning(nn.initializers.ones, ('embed',))


def make_norm(kind: str, eps: float, dtype, param_dtype, name: str) -> nn.Module:
  """'layer' -> LayerNorm, 'rms' -> RMSNorm, with statistics in float32."""
  if kind == 'layer':
    return LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name)
  if kind == 'rms':
    return RMSNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name)
  raise ValueError(f"norm kind={kind!r}: use 'layer' or 'rms'")


# ---------------------------------------------------------------------------------- MLP
ACTIVATIONS = {
    'gelu': functools.partial(jax.nn.gelu, approximate=False),      # erf (BERT, BART)
    'gelu_new': functools.partial(jax.nn.gelu, approximate=True),   # tanh (GPT-2, T5 v1.1)
    'relu': jax.nn.relu,
}


class MLP(nn.Module):
  """Position-wise feed-forward: wi -> activation -> [dropout] -> wo.

  activation 'gated-gelu' is T5 v1.1's gelu_new(wi_0 x) * wi_1 x.
  intermediate_dropout_rate applies after the activation (T5, BART); the residual dropout
  after `wo` belongs to the caller.
  """
  mlp_dim: int
  activation: str = 'gelu'
  use_bias: bool = True
  intermediate_dropout_rate: float = 0.0
  kernel_init: Callable = normal_init(0.02)
  out_kernel_init: Optional[Callable] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _dense(self, features, axes, init, name):
    return Projection((features,), 1, axes, use_bias=self.use_bias, kernel_init=init,
                      dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    embed = x.shape[-1]
    if self.activation == 'gated-gelu':
      gate = self._dense(self.mlp_dim, ('embed', 'mlp'), self.kernel_init, 'wi_0')(x)
      h = ACTIVATIONS['gelu_new'](gate) * self._dense(
          self.mlp_dim, ('embed', 'mlp'), self.kernel_init, 'wi_1')(x)
    elif self.activation in ACTIVATIONS:
      h = ACTIVATIONS[self.activation](
          self._dense(self.mlp_dim, ('embed', 'mlp'), self.kernel_init, 'wi')(x))
    else:
      raise ValueError(f'activation={self.activation!r}: use one of '
                       f"{sorted(ACTIVATIONS) + ['gated-gelu']}")
    h = nn.with_logical_constraint(h, ('batch', 'length', 'mlp'))
    h = nn.Dropout(self.intermediate_dropout_rate)(h, deterministic=deterministic)
    return self._dense(embed, ('mlp', 'embed'), self.out_kernel_init or self.kernel_init, 'wo')(h)


# ---------------------------------------------------------------------------------- masks
def make_attention_mask(q_segment_ids: Array, kv_segment_ids: Array) -> Array:
  """[B, Lq], [B, Lk] segment ids -> [B, 1, Lq, Lk] bool: attend only within the same segment.

  Padding (segment 0) never mixes with real tokens: real tokens ignore padding, and padding
  attends to padding only, so self-attention rows are never fully masked.
  """
  return (q_segment_ids[:, None, :, None] == kv_segment_ids[:, None, None, :])


def make_causal_mask(length: int) -> Array:
  """[1, 1, L, L] bool, True where key index <= query index."""
  idx = jnp.arange(length)
  return (idx[None, :] <= idx[:, None])[None, None]


def combine_masks(*masks: Optional[Array]) -> Optional[Array]:
  """Logical AND of the masks that are not None (None if all are)."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  return functools.reduce(jnp.logical_and, masks)


# ---------------------------------------------------------------------------------- attention
class MultiHeadAttention(nn.Module):
  """Multi-head attention with q/k/v/o projections, masks, additive bias and a KV cache.

  Self-attention when `inputs_kv` is None. With decode=True self-attention writes keys and
  values to the 'cache' collection at `cache_index`; the first call (under `init`) sizes the
  cache from the input length, later calls append their chunk (one token, or a whole prompt)
  and attend causally to everything cached so far. Cross-attention with decode=True projects
  `inputs_kv` (the encoder output, the same at every step) once: the first call after `init`
  adds its keys and values to the cache ('cross_key', 'cross_value'), later calls read them.
  scale=False skips the 1/sqrt(head_dim) factor (T5 folds it into the initialisation).
  query_kernel_init (default kernel_init) initialises the query projection alone, which is
  where T5 puts that folded 1/sqrt(head_dim).
  When the ATTENTION_WEIGHTS collection is mutable (probes only: `apply(...,
  mutable=[ATTENTION_WEIGHTS])`), the softmax probabilities are sown as 'probs' [B, N, Lq, Lk]
  (float32).
  """
  num_heads: int
  head_dim: int
  use_bias: bool = True
  scale: bool = True
  dropout_rate: float = 0.0
  kernel_init: Callable = normal_init(0.02)
  out_kernel_init: Optional[Callable] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  query_kernel_init: Optional[Callable] = None

  def _qkv(self, x, name):
    init = (self.query_kernel_init or self.kernel_init) if name == 'query' else self.kernel_init
    return Projection((self.num_heads, self.head_dim), 1, ('embed', 'heads', 'kv'),
                      use_bias=self.use_bias, kernel_init=init, dtype=self.dtype,
                      param_dtype=self.param_dtype, name=name)(x)

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Optional[Array] = None,
               mask: Optional[Array] = None, bias: Optional[Array] = None, *,
               deterministic: bool = True, decode: bool = False) -> Array:
    """[B, Lq, E] (and [B, Lk, E]) -> [B, Lq, E]; mask/bias broadcast to [B, N, Lq, Lk]."""
    self_attention = inputs_kv is None
    inputs_kv = inputs_q if self_attention else inputs_kv
    q = self._qkv(inputs_q, 'query')   # (B, Lq, N, H)
    if decode and not self_attention:
      k, v = self._cached_cross_kv(inputs_kv)
    else:
      k = self._qkv(inputs_kv, 'key')    # (B, Lk, N, H)
      v = self._qkv(inputs_kv, 'value')
    if decode and self_attention:
      k, v, cache_mask = self._update_cache(k, v)
      mask = combine_masks(mask, cache_mask)
    scale = 1.0 / math.sqrt(self.head_dim) if self.scale else 1.0
    if bias is not None:
      bias = bias.astype(self.dtype)
    # Written out rather than jax.nn.dot_product_attention, whose XLA form adds a query-group axis
    # (for grouped-query attention) that costs XLA:CPU transposes: 3-4% of BERT `small`'s step.
    # Heads lead ([B, N, L, H]): in [B, L, N, H] the keys' gradient contracted its left operand's
    # rows, a dot XLA:CPU gives to Eigen (slower at BERT `small`'s head size 64).
    # Scores in float32 whatever the compute dtype.
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
    logits = jnp.einsum('bnqh,bnkh->bnqk', q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
      logits = logits + bias
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if self.is_mutable_collection(ATTENTION_WEIGHTS):   # probes only
      self.sow(ATTENTION_WEIGHTS, 'probs', probs)   # [B, N, Lq, Lk] float32
    probs = nn.Dropout(self.dropout_rate)(probs.astype(self.dtype), deterministic=deterministic)
    out = jnp.swapaxes(jnp.einsum('bnqk,bnkh->bnqh', probs, v), 1, 2)
    out = Projection((inputs_q.shape[-1],), 2, ('heads', 'kv', 'embed'), use_bias=self.use_bias,
                     kernel_init=self.out_kernel_init or self.kernel_init, dtype=self.dtype,
                     param_dtype=self.param_dtype, name='out')(out)
    return constrain(out)

  def _cached_cross_kv(self, inputs_kv):
    """k, v [B, Lk, N, H] of inputs_kv (the encoder output, the same at every decode step):
    projected by the first call after `init`, which adds them to the cache; read by later
    calls."""
    if self.has_variable('cache', 'cross_key'):
      return self.get_variable('cache', 'cross_key'), self.get_variable('cache', 'cross_value')
    k, v = self._qkv(inputs_kv, 'key'), self._qkv(inputs_kv, 'value')
    if not self.is_initializing():
      self.put_variable('cache', 'cross_key', k)
      self.put_variable('cache', 'cross_value', v)
    return k, v

  def _update_cache(self, k, v):
    """Appends k, v [B, T, N, H] to the cache; returns full k, v and the [1,1,T,S] mask."""
    initialized = self.has_variable('cache', 'cached_key')
    cached_k = self.variable('cache', 'cached_key', jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable('cache', 'cached_value', jnp.zeros, v.shape, v.dtype)
    index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
    if not initialized:   # init call: the input length is the cache length
      return k, v, make_causal_mask(k.shape[1])
    chunk, max_length = k.shape[1], cached_k.value.shape[1]
    i = index.value
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, (0, i, 0, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, (0, i, 0, 0))
    index.value = i + chunk
    q_pos = i + jnp.arange(chunk)
    mask = (jnp.arange(max_length)[None, :] <= q_pos[:, None])[None, None]
    return cached_k.value, cached_v.value, mask


# ---------------------------------------------------------------------------------- ALiBi
def alibi_bias(num_heads: int, length: int, bias_max: float = 8.0) -> Array:
  """ALiBi's attention bias (Press et al., 2022), symmetric as in MosaicBERT's encoder:
  -slope_h * |i - j| -> [1, N, L, L] float32. For N a power of two the slopes are
  2^(-bias_max * h / N), h = 1..N (the paper's with bias_max=8); otherwise, as the paper's code
  and llm-foundry's `gen_slopes`, those of the next power of two M, odd h first then even:
  2^(-bias_max * h / M) for h = 2, 4, ..., M, then h = 1, 3, ..., cut to N."""
  padded = 1 << (num_heads - 1).bit_length()  # the next power of two
  slopes = 2.0 ** (-bias_max * jnp.arange(1, padded + 1, dtype=jnp.float32) / padded)
  if padded != num_heads:
    slopes = jnp.concatenate([slopes[1::2], slopes[::2]])[:num_heads]
  position = jnp.arange(length)
  distance = jnp.abs(position[None, :] - position[:, None]).astype(jnp.float32)
  return (-slopes[:, None, None] * distance)[None]


# ---------------------------------------------------------------------------------- T5 bias
def relative_position_bucket(relative_position: Array, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128) -> Array:
  """T5's bucketing of (key - query) offsets; identical to HF `T5Attention._relative_position_bucket`.

  Half the buckets are exact offsets, the rest grow logarithmically up to max_distance;
  bidirectional uses separate buckets for keys after the query.
  """
  buckets = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(relative_position.dtype) * num_buckets
    n = jnp.abs(relative_position)
  else:
    n = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # Same float32 op order as the reference so bucket boundaries agree exactly.
  large = max_exact + (
      jnp.log(n.astype(jnp.float32) / max_exact) / math.log(max_distance / max_exact)
      * (num_buckets - max_exact)).astype(relative_position.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(is_small, n, large)


class RelativePositionBias(nn.Module):
  """Learned per-head bias from T5 relative position buckets -> [1, N, Lq, Lk]
  ([B, N, Lq, Lk] when given per-row positions)."""
  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool = True
  embedding_init: Callable = normal_init(1.0)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, q_length: int, k_length: int, q_offset: Array | int = 0,
               q_positions: Optional[Array] = None, k_positions: Optional[Array] = None
               ) -> Array:
    """q_offset shifts query positions (the cache index while decoding).

    q_positions [B, Lq] / k_positions [B, Lk], when given, replace the aranges, so packed
    examples (positions restarting at 0) each see their own offsets.
    """
    table = self.param('rel_embedding',
                       nn.with_logical_partitioning(self.embedding_init, (None, 'heads')),
                       (self.num_buckets, self.num_heads), self.param_dtype)
    if q_positions is None:
      q_positions = (q_offset + jnp.arange(q_length))[None]
    if k_positions is None:
      k_positions = jnp.arange(k_length)[None]
    relative = k_positions[:, None, :] - q_positions[:, :, None]   # (B or 1, Lq, Lk)
    buckets = relative_position_bucket(relative, self.bidirectional, self.num_buckets,
                                       self.max_distance)
    bias = jnp.take(jnp.asarray(table, self.dtype), buckets, axis=0)   # (B, Lq, Lk, N)
    return jnp.transpose(bias, (0, 3, 1, 2))


# ---------------------------------------------------------------------------------- layers
class TransformerLayer(nn.Module):
  """One transformer block: self-attention, optional cross-attention, MLP.

  pre_norm=True: x + f(norm(x)) (GPT-2, T5); False: norm(x + f(x)) (BERT, BART).
  Call signature (the LayerStack convention): (x, deterministic, decode, mask, bias,
  encoded, cross_mask) -> x, where `bias` is an additive self-attention bias (T5) and
  `encoded` the encoder output for cross-attention (decoders; None otherwise).
  """
  num_heads: int
  head_dim: int
  mlp_dim: int
  activation: str = 'gelu'
  pre_norm: bool = False
  norm: str = 'layer'
  layer_norm_eps: float = 1e-12
  use_bias: bool = True
  scale_attention: bool = True
  cross_attention: bool = False
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  intermediate_dropout_rate: float = 0.0
  kernel_init: Callable = normal_init(0.02)
  out_kernel_init: Optional[Callable] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  query_kernel_init: Optional[Callable] = None

  def _sublayer(self, x, name, fn, deterministic):
    norm = make_norm(self.norm, self.layer_norm_eps, self.dtype, self.param_dtype,
                     f'{name}_norm')
    drop = nn.Dropout(self.dropout_rate)
    if self.pre_norm:
      return constrain(x + drop(fn(norm(x)), deterministic=deterministic))
    return constrain(norm(x + drop(fn(x), deterministic=deterministic)))

  def _attention(self, name):
    return MultiHeadAttention(
        self.num_heads, self.head_dim, use_bias=self.use_bias, scale=self.scale_attention,
        dropout_rate=self.attention_dropout_rate, kernel_init=self.kernel_init,
        out_kernel_init=self.out_kernel_init, dtype=self.dtype,
        param_dtype=self.param_dtype, query_kernel_init=self.query_kernel_init, name=name)

  @nn.compact
  def __call__(self, x, deterministic: bool = True, decode: bool = False, mask=None,
               bias=None, encoded=None, cross_mask=None):
    x = self._sublayer(x, 'attention', lambda h: self._attention('attention')(
        h, mask=mask, bias=bias, deterministic=deterministic, decode=decode), deterministic)
    if self.cross_attention:
      x = self._sublayer(x, 'cross_attention', lambda h: self._attention('cross_attention')(
          h, encoded, mask=cross_mask, deterministic=deterministic, decode=decode), deterministic)
    mlp = MLP(self.mlp_dim, self.activation, self.use_bias, self.intermediate_dropout_rate,
              self.kernel_init, self.out_kernel_init, self.dtype, self.param_dtype, name='mlp')
    return self._sublayer(x, 'mlp', lambda h: mlp(h, deterministic), deterministic)


REMAT_POLICIES = {
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.checkpoint_dots,
    'dots_with_no_batch_dims': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class LayerStack(nn.Module):
  """`num_layers` copies of `layer_cls(**layer_kwargs)` applied in sequence — the one place
  where layers are stacked, scanned and rematerialised.

  Layers are called `layer(x, deterministic, decode, *args) -> x` (all positional;
  `args` are arrays or None shared by every layer). Unscanned params live under 'layers_{i}'; scanned
  (`scan_layers=True`) under 'layers' with a leading 'layers' axis (also for the 'cache'
  collection). When 'intermediates' is mutable the stack sows 'hidden_states': one array
  [num_layers, B, L, E] holding every layer's output, in both modes.
  """
  layer_cls: Any
  layer_kwargs: Any   # dict of the layer's attributes (treated as static)
  num_layers: int
  scan_layers: bool = False
  remat_policy: str = 'none'

  @nn.compact
  def __call__(self, x, *args, deterministic: bool = True, decode: bool = False):
    collect = self.is_mutable_collection('intermediates')
    layer_cls = self.layer_cls
    if self.remat_policy != 'none':
      if self.remat_policy not in REMAT_POLICIES:
        raise ValueError(f'remat_policy={self.remat_policy!r}: use one of '
                         f"{['none'] + list(REMAT_POLICIES)}")
      layer_cls = nn.remat(layer_cls, policy=REMAT_POLICIES[self.remat_policy],
                           prevent_cse=not self.scan_layers,
                           static_argnums=(2, 3))   # self, x, deterministic, decode
    kwargs = dict(self.layer_kwargs)
    if not self.scan_layers:
      outputs = []
      for i in range(self.num_layers):
        x = layer_cls(**kwargs, name=f'layers_{i}')(x, deterministic, decode, *args)
        outputs.append(x)
      if collect:
        self.sow('intermediates', 'hidden_states', jnp.stack(outputs))
      return x

    def body(layer, carry, *call_args):
      out = layer(carry, *call_args)   # call_args = (deterministic, decode, *args)
      return out, (out if collect else None)

    scanned = nn.scan(
        body, variable_axes={'params': 0, 'cache': 0, 'intermediates': 0, ATTENTION_WEIGHTS: 0},
        split_rngs={'params': True, 'dropout': True},
        in_axes=(nn.broadcast,) * (2 + len(args)), length=self.num_layers,
        metadata_params={nn.PARTITION_NAME: 'layers'})
    x, outputs = scanned(layer_cls(**kwargs, name='layers'), x, deterministic, decode, *args)
    if collect:
      self.sow('intermediates', 'hidden_states', outputs)
    return x


def hidden_states(intermediates: dict, stack: str) -> Array:
  """The [num_layers, B, L, E] layer outputs a LayerStack named `stack` sowed."""
  return intermediates[stack]['hidden_states'][0]


def attention_probs(weights: dict, stack: str) -> Array:
  """The [num_layers, B, N, Lq, Lk] self-attention probabilities the layers of a LayerStack
  named `stack` sowed into the ATTENTION_WEIGHTS collection (scanned or not)."""
  tree = weights[stack]
  if 'layers' in tree:   # scanned: one array with a leading layers axis
    return tree['layers']['attention']['probs'][0]
  num_layers = sum(1 for k in tree if k.startswith('layers_') and k[7:].isdigit())
  return jnp.stack([tree[f'layers_{i}']['attention']['probs'][0] for i in range(num_layers)])


def stack_layer_params(tree: dict) -> dict:
  """Unscanned -> scanned layout: every {'layers_0': t0, 'layers_1': t1, ...} in the tree
  becomes {'layers': t} with each leaf stacked on a new leading axis (for any collection)."""
  if not isinstance(tree, dict):
    return tree
  names = [k for k in tree if k.startswith('layers_') and k[7:].isdigit()]
  out = {k: stack_layer_params(v) for k, v in tree.items() if k not in names}
  if names:
    layer_trees = [stack_layer_params(tree[f'layers_{i}']) for i in range(len(names))]
    out['layers'] = jax.tree.map(lambda *xs: jnp.stack(xs), *layer_trees)
  return out


def with_layer_layout(tree: dict, scan_layers: bool) -> dict:
  """`tree` in the scanned (`scan_layers`) or unscanned layout, whichever it is in now."""
  return stack_layer_params(tree) if scan_layers else unstack_layer_params(tree)


def unstack_layer_params(tree: dict) -> dict:
  """Scanned -> unscanned layout; inverse of `stack_layer_params`."""
  if not isinstance(tree, dict):
    return tree
  out = {k: unstack_layer_params(v) for k, v in tree.items() if k != 'layers'}
  if 'layers' in tree:
    stacked = unstack_layer_params(tree['layers'])
    num_layers = jax.tree.leaves(stacked)[0].shape[0]
    for i in range(num_layers):
      out[f'layers_{i}'] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return out
