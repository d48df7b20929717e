"""GPT-2 causal language modelling.

  ssl-jax train --config configs/gpt.py:tiny --workdir /tmp/gpt_tiny        # 2 CPU cores, minutes
  ssl-jax train --config configs/gpt.py:small --workdir $WORKDIR            # GPT-2 124M

Variants: tiny (default corpus), small (124M), medium (355M), large (774M), xl (1.5B) (real text and a vocabulary:
`--config.data.vocab.kind=sentencepiece --config.data.vocab.path=...`).

The published sizes train with GPT-3's recipe (Brown et al. 2020, Table 2.1 and Appendix B;
nanoGPT's for 124M): AdamW with b2 0.95, eps 1e-8, weight decay 0.1, 2000 warmup steps, then a
cosine decay to 10% of the peak, the peak by size (GPT-3's 125M, 350M, 760M and 1.3B rows).
"""
from ssl_jax import config as config_lib

PEAK_LEARNING_RATES = {"small": 6e-4, "medium": 3e-4, "large": 2.5e-4, "xl": 2e-4}


def get_config(arg: str = "tiny"):
  config = config_lib.base_config(objective="causal_lm", family="gpt", preset=arg)
  if arg == "tiny":
    config_lib.use_tiny_run(config)
  else:
    config_lib.use_pod_run(config, vocab_kind="sentencepiece", sequence_length=1024,
                           global_batch_size=512, num_steps=600_000,
                           learning_rate=PEAK_LEARNING_RATES[arg], warmup_steps=2_000)
    config.optim.update(schedule="cosine", min_lr_ratio=0.1, weight_decay=0.1, b2=0.95, eps=1e-8)
  return config
