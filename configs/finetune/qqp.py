"""GLUE QQP: fine-tune a BERT encoder on GLUE-format TSV files (or TFDS glue/qqp).

  ssl-jax finetune --config configs/finetune/qqp.py --init hf:DIR --workdir /tmp/ft_qqp \
      --config.data.train_file=QQP/train.tsv --config.data.eval_file=QQP/dev.tsv
  ssl-jax finetune --config configs/finetune/qqp.py:tiny --init none --workdir /tmp/ft_qqp_scratch ...
  ssl-jax finetune --config configs/finetune/qqp.py --init hf:DIR --workdir W --config.data.format=tfds

Variants: pretrained (default; the model and vocabulary come from --init), tiny.
"""
from ssl_jax.finetune import config as finetune_config


def get_config(arg: str = "pretrained"):
  return finetune_config.glue_config("qqp", arg)
