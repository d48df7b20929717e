"""GPT-2 causal language modelling.

  ssl-jax train --config configs/gpt.py:tiny --workdir /tmp/gpt_tiny        # 2 CPU cores, minutes
  ssl-jax train --config configs/gpt.py:small --workdir $WORKDIR            # GPT-2 124M

Variants: tiny (default corpus), small (124M), medium (355M), large (774M), xl (1.5B) (real text and a vocabulary:
`--config.data.vocab.kind=sentencepiece --config.data.vocab.path=...`).
"""
from ssl_jax import config as config_lib


def get_config(arg: str = "tiny"):
  config = config_lib.base_config(objective="causal_lm", family="gpt", preset=arg)
  if arg == "tiny":
    config_lib.use_tiny_run(config)
  else:
    config_lib.use_pod_run(config, vocab_kind="sentencepiece", sequence_length=1024,
                           global_batch_size=512, num_steps=600_000, learning_rate=6e-4,
                           warmup_steps=2_000)
    config.optim.update(schedule="cosine", weight_decay=0.1, b2=0.95)
  return config
