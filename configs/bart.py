"""BART denoising pretraining (text infilling + sentence permutation by default).

  ssl-jax train --config configs/bart.py:tiny --workdir /tmp/bart_tiny      # 2 CPU cores, minutes
  ssl-jax train --config configs/bart.py:base --workdir $WORKDIR            # BART base, 140M

The tiny model is pre-LayerNorm (`model.pre_norm=True`, mBART's layout): a tiny post-LN BART sits
on the unigram plateau for hundreds of steps. base and large are post-LN, as published.

Each noise has its rate under `config.data.denoising` (mask_ratio, random_ratio, delete_ratio,
infill_ratio, poisson_lambda, permute_sentence_ratio, rotate_ratio); they compose. `random_ratio`
makes that share of the [MASK]s random tokens (fairseq's --mask-random). base and large take the
fairseq command its authors gave for BART's pretraining (fairseq issue 1899): 30% of the words in
infilled spans of Poisson(3.5) lengths (the paper says 3) that never split a word
(`whole_word=True`, fairseq's whole-word spans), a tenth of the [MASK]s random, every sentence
permuted, no rotation; its learning rate, warmup and step count too. The optimizer's
other settings are ssl_jax's AdamW defaults (b2 0.999, eps 1e-6, clipping at norm 1.0), not that
command's; RoBERTa's recipe, whose batch size and step count the BART paper follows, has b2 0.98
(--config.optim.b2=0.98). tiny keeps the defaults: Poisson(3), spans of tokens, no random
[MASK]s.
"""
from ssl_jax import config as config_lib


def get_config(arg: str = "tiny"):
  config = config_lib.base_config(objective="denoising", family="bart", preset=arg)
  if arg == "tiny":
    config_lib.use_tiny_run(config)
  else:
    config_lib.use_pod_run(config, vocab_kind="sentencepiece", sequence_length=1024,
                           global_batch_size=256, num_steps=500_000, learning_rate=4e-4,
                           warmup_steps=10_000)
    config.data.denoising.update(infill_ratio=0.3, poisson_lambda=3.5, random_ratio=0.1,
                                 whole_word=True, permute_sentence_ratio=1.0, rotate_ratio=0.0)
  return config
