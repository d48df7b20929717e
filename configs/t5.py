"""T5 v1.1 span-corruption pretraining.

  ssl-jax train --config configs/t5.py:tiny --workdir /tmp/t5_tiny          # 2 CPU cores, minutes
  ssl-jax train --config configs/t5.py:base --workdir $WORKDIR              # T5 v1.1 base, 248M

Variants: tiny (default corpus), small, base, large (C4 through TFDS and a SentencePiece vocabulary
with 100 extra ids: `--config.data.vocab.path=.../spiece.model`).
"""
from ssl_jax import config as config_lib


def get_config(arg: str = "tiny"):
  config = config_lib.base_config(objective="span_corruption", family="t5", preset=arg)
  if arg == "tiny":
    config_lib.use_tiny_run(config, learning_rate=3e-3)
    config.data.targets_length = 32
  else:
    config_lib.use_pod_run(config, vocab_kind="sentencepiece", sequence_length=512,
                           global_batch_size=256, num_steps=524_288, learning_rate=1e-2,
                           warmup_steps=10_000)
    config.data.targets_length = 114
    # T5's optimizer: Adafactor without momentum at 1e-2 for 10k steps, then inverse square root
    # decay (no warmup ramp); Adafactor clips its updates, so no global gradient clipping (t5x).
    config.optim.update(name="adafactor", schedule="rsqrt", weight_decay=0.0, grad_clip_norm=0.0)
    config.train.z_loss = 1e-4  # t5x's T5.1.1: keeps the softmax's log-normaliser near 0
    # T5 v1.1 pretrained without dropout ("a quality win"; fine-tuning turns it back on, as
    # configs/finetune/text_to_text.py does). The presets' 0.1 is the fine-tuning rate.
    config.model.dropout_rate = 0.0
  return config
