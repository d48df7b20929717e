"""Fine-tuning heads on a BERT encoder: sequence classification/regression, tagging, span QA.

Each model holds the encoder as the submodule `bert` (a `bert.BertModel`), so a pretrained
encoder -- `params['bert']` of `BertForPreTraining`, or the params of an HF `BertModel` -- is
exactly the subtree `params['bert']` here; the head's params are new. Heads match
`transformers.BertFor{SequenceClassification,TokenClassification,QuestionAnswering}`:
dropout then one dense layer (on the pooled [CLS] vector, or on every token). One difference:
the QA head's padding logits are -1e9, so its loss is a softmax over the real tokens (HF's
includes the padding; logits on real tokens and the decoded spans are the same).
All outputs are float32.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.models import bert
from ssl_jax.models import layers
from ssl_jax.models.config import BertConfig


class Head(nn.Module):
  """Dropout then a dense layer to `num_outputs` (on [..., E] features)."""
  config: BertConfig
  num_outputs: int

  @nn.compact
  def __call__(self, x, *, deterministic: bool = True):
    cfg = self.config
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    dense = layers.Projection(
        (self.num_outputs,), 1, ('embed', None),
        kernel_init=layers.normal_init(cfg.initializer_range), dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype), name='dense')
    return dense(x).astype(jnp.float32)


class BertForSequenceClassification(nn.Module):
  """Pooled [CLS] -> `num_labels` logits; `num_labels=1` is a regression head (STS-B)."""
  config: BertConfig
  num_labels: int

  @nn.compact
  def __call__(self, input_tokens, token_type_ids=None, segment_ids=None, *,
               deterministic: bool = True) -> dict:
    """input_tokens [B, L] -> {'logits': [B, num_labels]}."""
    out = bert.BertModel(self.config, name='bert')(
        input_tokens, token_type_ids, segment_ids, deterministic=deterministic)
    return {'logits': Head(self.config, self.num_labels, name='head')(
        out['pooled'], deterministic=deterministic)}


class BertForTokenClassification(nn.Module):
  """Every token's final hidden state -> `num_labels` logits (tagging)."""
  config: BertConfig
  num_labels: int

  @nn.compact
  def __call__(self, input_tokens, token_type_ids=None, segment_ids=None, *,
               deterministic: bool = True) -> dict:
    """input_tokens [B, L] -> {'logits': [B, L, num_labels]}."""
    encoder = bert.BertModel(self.config, name='bert')
    hidden = encoder.encode(input_tokens, token_type_ids, segment_ids,
                            deterministic=deterministic)
    return {'logits': Head(self.config, self.num_labels, name='head')(
        hidden, deterministic=deterministic)}


class BertForQuestionAnswering(nn.Module):
  """Every token -> (start, end) scores of the answer span (SQuAD); [CLS] scores 'no answer'.

  Padding positions (segment id 0) get -1e9 so softmaxes over the row ignore them.
  """
  config: BertConfig

  @nn.compact
  def __call__(self, input_tokens, token_type_ids=None, segment_ids=None, *,
               deterministic: bool = True) -> dict:
    """input_tokens [B, L] -> {'start_logits': [B, L], 'end_logits': [B, L]}."""
    encoder = bert.BertModel(self.config, name='bert')
    hidden = encoder.encode(input_tokens, token_type_ids, segment_ids,
                            deterministic=deterministic)
    # HF applies no dropout before the QA projection.
    no_dropout = dataclasses.replace(self.config, dropout_rate=0.0)
    logits = Head(no_dropout, 2, name='head')(hidden, deterministic=True)
    if segment_ids is not None:
      logits = jnp.where((segment_ids > 0)[..., None], logits, -1e9)
    return {'start_logits': logits[..., 0], 'end_logits': logits[..., 1]}

