"""Model configurations: one frozen dataclass per family and named presets.

A config is plain data (ints, floats, strings, bools) so it round-trips through
`ml_collections.ConfigDict` and `config.json`: `config_to_dict` adds the `family` key and
`config_from_dict` turns such a dict back into the right dataclass, validating every value.

Example:
  cfg = get_preset('bert', 'base')
  cfg = dataclasses.replace(cfg, scan_layers=True)
  config_from_dict(config_to_dict(cfg)) == cfg
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Union

DTYPES = ('float32', 'bfloat16')   # float16 would need loss scaling, which ssl_jax does not do
REMAT_POLICIES = ('none', 'full', 'dots', 'dots_with_no_batch_dims')
BERT_POSITION_EMBEDDINGS = ('learned', 'alibi')
# Fields that set how a model runs or trains, not the function its parameters compute: a run
# resumed from a checkpoint may change them (every other field must match the checkpoint's).
RUN_FIELDS = ('dtype', 'param_dtype', 'remat_policy', 'dropout_rate', 'attention_dropout_rate',
              'initializer_range')
# Fields a fine-tuning run takes from its own config.model whatever the pretrained checkpoint's
# (scan_layers: the parameters' layout).
FINETUNING_FIELDS = ('dropout_rate', 'attention_dropout_rate', 'dtype', 'param_dtype',
                     'remat_policy', 'scan_layers')


@dataclasses.dataclass(frozen=True)
class _Common:
  """Fields shared by every family.

  vocab_size: -1 means "from the data vocabulary" (resolved before the model is built).
  head_dim: 0 means hidden_size // num_heads (which must then divide evenly).
  max_length: number of learned positions (ignored by T5, which uses relative positions).
  dtype: compute dtype of activations; param_dtype: dtype parameters are stored in.
  scan_layers: stack the layers with `nn.scan` (one compiled layer; params get a leading
    'layers' axis). remat_policy: what `nn.remat` saves for the backward pass.
  """
  vocab_size: int = 1024
  hidden_size: int = 128
  num_layers: int = 2
  num_heads: int = 4
  head_dim: int = 0
  mlp_dim: int = 512
  max_length: int = 128
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  layer_norm_eps: float = 1e-12
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  scan_layers: bool = False
  remat_policy: str = 'none'
  initializer_range: float = 0.02

  # Activations each family accepts; overridden per family.
  _ACTIVATIONS = ()

  def __post_init__(self):
    _validate(self)

  @property
  def resolved_head_dim(self) -> int:
    """The per-head width the model uses (head_dim, or hidden_size // num_heads when 0)."""
    return self.head_dim or self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class BertConfig(_Common):
  """BERT encoder (post-LN) with MLM and sentence (NSP/SOP) heads.

  position_embedding: 'learned' (BERT's table of max_length positions) or 'alibi' (MosaicBERT's:
    no table; head h of N adds -2^(-alibi_bias_max * h / N) * |i - j| to its attention logits,
    N a power of two, else the interleaved slopes of `layers.alibi_bias`; alibi_bias_max=8 gives
    the slopes of Press et al., 2022, and is llm-foundry's name for it).
    max_length bounds the input length of learned positions; ALiBi has no table and takes longer
    inputs (it extrapolates).
  """
  type_vocab_size: int = 2
  activation: str = 'gelu'
  pad_token_id: int = 0
  position_embedding: str = 'learned'
  alibi_bias_max: float = 8.0

  _ACTIVATIONS = ('gelu', 'gelu_new', 'relu')


@dataclasses.dataclass(frozen=True)
class GPTConfig(_Common):
  """GPT-2 style pre-LN causal decoder with tied input/output embeddings."""
  layer_norm_eps: float = 1e-5
  activation: str = 'gelu_new'

  _ACTIVATIONS = ('gelu', 'gelu_new', 'relu')


@dataclasses.dataclass(frozen=True)
class EncoderDecoderConfig(_Common):
  """T5 v1.1 (family='t5') or BART (family='bart') encoder-decoder.

  num_layers counts encoder layers, num_decoder_layers decoder layers.
  relative_attention_*: T5 relative position buckets (unused by BART).
  scale_embedding: multiply token embeddings by sqrt(hidden_size) (BART option).
  pre_norm: BART only: pre-LN layers plus a final LayerNorm per stack, mBART's layout
    (`transformers.MBartForConditionalGeneration`). Published BART is post-LN (False); the
    tiny preset is pre-LN because a post-LN tiny BART sits on the unigram plateau for
    hundreds of steps (HF's BART does too) while the pre-LN one leaves it at once.
  """
  family: str = 't5'
  num_decoder_layers: int = 2
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  activation: str = 'gated-gelu'
  tie_word_embeddings: bool = False
  scale_embedding: bool = False
  pre_norm: bool = False
  decoder_start_token_id: int = 0
  pad_token_id: int = 0
  layer_norm_eps: float = 1e-6

  _ACTIVATIONS = ('gated-gelu', 'gelu', 'gelu_new', 'relu')


ModelConfig = Union[BertConfig, GPTConfig, EncoderDecoderConfig]

_FAMILY_CLASSES = {'bert': BertConfig, 'gpt': GPTConfig, 't5': EncoderDecoderConfig,
                   'bart': EncoderDecoderConfig}


def _validate(cfg) -> None:
  """Raises ValueError naming the field, its value and the fix for any invalid value."""
  def bad(field, why):
    raise ValueError(f'config.model.{field}={getattr(cfg, field)!r}: {why}')

  def positive(name):   # NaN fails `> 0`; inf passed it, and then every norm or weight was 0 or NaN
    return getattr(cfg, name) > 0 and math.isfinite(getattr(cfg, name))

  if not (cfg.vocab_size > 0 or cfg.vocab_size == -1):
    bad('vocab_size', 'must be a positive int, or -1 to take it from the data vocabulary')
  for name in ('hidden_size', 'num_layers', 'num_heads', 'mlp_dim', 'max_length'):
    if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
      bad(name, 'must be a positive int')
  if cfg.head_dim < 0:
    bad('head_dim', 'must be >= 0 (0 means hidden_size // num_heads)')
  if cfg.head_dim == 0 and cfg.hidden_size % cfg.num_heads:
    bad('num_heads', f'does not divide hidden_size={cfg.hidden_size}; choose num_heads that '
        'divides it, or set head_dim explicitly')
  for name in ('dropout_rate', 'attention_dropout_rate'):
    if not 0.0 <= getattr(cfg, name) < 1.0:
      bad(name, 'must be in [0, 1)')
  if not positive('layer_norm_eps'):
    bad('layer_norm_eps', 'must be a finite number > 0')
  if not positive('initializer_range'):  # 0: every kernel starts at 0 and their units never differ
    bad('initializer_range', 'must be a finite number > 0 (the standard deviation of initial '
        'weights; BERT: 0.02)')
  for name in ('pad_token_id', 'decoder_start_token_id'):
    token = getattr(cfg, name, 0)
    if token < 0 or 0 < cfg.vocab_size <= token:
      bad(name, f'must be a token id: at least 0 and under vocab_size={cfg.vocab_size}')
  for name in ('dtype', 'param_dtype'):
    if getattr(cfg, name) == 'float16':
      bad(name, 'float16 training needs dynamic loss scaling, which ssl_jax does not implement '
          "(and XLA:CPU cannot run its attention); use dtype='bfloat16' (with float32 params)")
    elif getattr(cfg, name) not in DTYPES:
      bad(name, f'unknown dtype; use one of {DTYPES}')
  if cfg.remat_policy not in REMAT_POLICIES:
    bad('remat_policy', f'unknown policy; use one of {REMAT_POLICIES}')
  if cfg.activation not in cfg._ACTIVATIONS:
    bad('activation', f'unsupported for {type(cfg).__name__}; use one of {cfg._ACTIVATIONS}')
  if isinstance(cfg, BertConfig):
    if cfg.type_vocab_size < 1:
      bad('type_vocab_size', 'must be >= 1')
    if cfg.position_embedding not in BERT_POSITION_EMBEDDINGS:
      bad('position_embedding', f'use one of {BERT_POSITION_EMBEDDINGS}')
    if not positive('alibi_bias_max'):
      bad('alibi_bias_max', "must be a finite number > 0 (8 is the ALiBi paper's; smaller is "
          'more local)')
  if isinstance(cfg, EncoderDecoderConfig):
    if cfg.family not in ('t5', 'bart'):
      bad('family', "use 't5' or 'bart'")
    if cfg.scale_embedding and cfg.family != 'bart':
      bad('scale_embedding', 'is a BART option (embeddings times sqrt(hidden_size)); T5 does not '
          'scale them, and family t5 ignored it: leave it False')
    if cfg.pre_norm and cfg.family != 'bart':
      bad('pre_norm', "is a BART option (mBART's pre-LN layout); T5 layers are always "
          'pre-norm, so leave it False for family t5')
    if cfg.num_decoder_layers < 1:
      bad('num_decoder_layers', 'must be a positive int')
    # The log buckets start after max_exact = num_buckets // 4 (encoder) and // 2 (decoder)
    # exact offsets and divide by log(max_distance / max_exact): both must be > 0.
    for name in ('relative_attention_num_buckets', 'relative_attention_max_distance'):
      if cfg.family == 'bart' and getattr(cfg, name) != getattr(EncoderDecoderConfig, name):
        bad(name, "sets T5's relative position buckets; BART has learned positions and ignored "
            f'it: leave it at {getattr(EncoderDecoderConfig, name)}')
    if cfg.relative_attention_num_buckets < 4:
      bad('relative_attention_num_buckets', 'must be >= 4 (T5: 32)')
    if cfg.relative_attention_max_distance <= cfg.relative_attention_num_buckets // 2:
      bad('relative_attention_max_distance', 'must be more than relative_attention_num_buckets '
          f'// 2 = {cfg.relative_attention_num_buckets // 2}, the decoder\'s exact offsets '
          '(T5: 128); at or under it the buckets are NaN or collide')


def _tiny(cls, **kw):
  return cls(vocab_size=1024, hidden_size=128, num_layers=2, num_heads=4, mlp_dim=512,
             max_length=128, **kw)


PRESETS: dict[str, dict[str, Any]] = {
    'bert': {
        'tiny': _tiny(BertConfig),
        'small': BertConfig(vocab_size=30522, hidden_size=512, num_layers=4, num_heads=8,
                            mlp_dim=2048, max_length=512),
        'base': BertConfig(vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12,
                           mlp_dim=3072, max_length=512),
        'large': BertConfig(vocab_size=30522, hidden_size=1024, num_layers=24, num_heads=16,
                            mlp_dim=4096, max_length=512),
    },
    # GPT-2 sizes as published: small 124M, medium 355M, large 774M, xl 1.5B.
    'gpt': {
        'tiny': _tiny(GPTConfig),
        'small': GPTConfig(vocab_size=50257, hidden_size=768, num_layers=12, num_heads=12,
                           mlp_dim=3072, max_length=1024),
        'medium': GPTConfig(vocab_size=50257, hidden_size=1024, num_layers=24, num_heads=16,
                            mlp_dim=4096, max_length=1024),
        'large': GPTConfig(vocab_size=50257, hidden_size=1280, num_layers=36, num_heads=20,
                           mlp_dim=5120, max_length=1024),
        'xl': GPTConfig(vocab_size=50257, hidden_size=1600, num_layers=48, num_heads=25,
                        mlp_dim=6400, max_length=1024),
    },
    # T5 v1.1: gated-gelu, untied embeddings, head_dim 64, no dropout in the attention probs.
    't5': {
        'tiny': _tiny(EncoderDecoderConfig, family='t5', head_dim=32, num_decoder_layers=2,
                      attention_dropout_rate=0.0),
        'small': EncoderDecoderConfig(family='t5', vocab_size=32128, hidden_size=512,
                                      num_layers=8, num_decoder_layers=8, num_heads=6,
                                      head_dim=64, mlp_dim=1024, max_length=512,
                                      attention_dropout_rate=0.0),
        'base': EncoderDecoderConfig(family='t5', vocab_size=32128, hidden_size=768,
                                     num_layers=12, num_decoder_layers=12, num_heads=12,
                                     head_dim=64, mlp_dim=2048, max_length=512,
                                     attention_dropout_rate=0.0),
        'large': EncoderDecoderConfig(family='t5', vocab_size=32128, hidden_size=1024,
                                      num_layers=24, num_decoder_layers=24, num_heads=16,
                                      head_dim=64, mlp_dim=2816, max_length=512,
                                      attention_dropout_rate=0.0),
    },
    # Token ids are those of ssl_jax's seqio vocabularies and feature converters (pad 0, decoder
    # start 0), as pretraining feeds them; a Hugging Face BART checkpoint brings its own (pad 1,
    # decoder start 2) through ssl_jax.interop.hf.
    'bart': {
        'tiny': _tiny(EncoderDecoderConfig, family='bart', num_decoder_layers=2,
                      activation='gelu', tie_word_embeddings=True, layer_norm_eps=1e-5,
                      pre_norm=True),
        'base': EncoderDecoderConfig(family='bart', vocab_size=50265, hidden_size=768,
                                     num_layers=6, num_decoder_layers=6, num_heads=12,
                                     mlp_dim=3072, max_length=1024, activation='gelu',
                                     tie_word_embeddings=True, layer_norm_eps=1e-5),
        'large': EncoderDecoderConfig(family='bart', vocab_size=50265, hidden_size=1024,
                                      num_layers=12, num_decoder_layers=12, num_heads=16,
                                      mlp_dim=4096, max_length=1024, activation='gelu',
                                      tie_word_embeddings=True, layer_norm_eps=1e-5),
    },
}


def get_preset(family: str, name: str):
  """Returns the named preset config of `family` ('bert', 'gpt', 't5', 'bart')."""
  if family not in PRESETS:
    raise ValueError(f'model family={family!r} is unknown; use one of {sorted(PRESETS)}')
  if name not in PRESETS[family]:
    raise ValueError(f'preset name={name!r} is unknown for family {family!r}; use one of '
                     f'{sorted(PRESETS[family])}')
  return PRESETS[family][name]


def family_of(cfg) -> str:
  """The family name of a config: 'bert', 'gpt', or the EncoderDecoderConfig's family."""
  if isinstance(cfg, EncoderDecoderConfig):
    return cfg.family
  for family, cls in _FAMILY_CLASSES.items():
    if type(cfg) is cls:
      return family
  raise TypeError(f'not a model config: {type(cfg).__name__}')


def config_to_dict(cfg) -> dict:
  """A plain dict of every field plus 'family'; inverse of `config_from_dict`."""
  d = dataclasses.asdict(cfg)
  d['family'] = family_of(cfg)
  return d


def config_from_dict(d) -> ModelConfig:
  """Builds the config dataclass named by d['family'] from a dict (or ConfigDict).

  Raises ValueError if 'family' is missing or unknown, if a key is not a field of that
  family (naming it and listing the valid keys), or if a value is invalid.
  """
  d = dict(d.to_dict() if hasattr(d, 'to_dict') else d)
  family = d.get('family')
  if family not in _FAMILY_CLASSES:
    raise ValueError(f'model config family={family!r}: set model.family to one of '
                     f'{sorted(_FAMILY_CLASSES)}')
  cls = _FAMILY_CLASSES[family]
  fields = {f.name for f in dataclasses.fields(cls)}
  if cls is not EncoderDecoderConfig:
    d.pop('family')
  unknown = sorted(set(d) - fields)
  if unknown:
    raise ValueError(f'unknown model config key(s) {unknown} for family {family!r}; valid keys: '
                     f'{sorted(fields | {"family"})}')
  return cls(**d)
