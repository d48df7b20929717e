"""GLUE STS-B (regression): fine-tune a BERT encoder on GLUE-format TSV files (or TFDS glue/stsb).

  ssl-jax finetune --config configs/finetune/stsb.py --init hf:DIR --workdir /tmp/ft_stsb \
      --config.data.train_file=STS-B/train.tsv --config.data.eval_file=STS-B/dev.tsv
  ssl-jax finetune --config configs/finetune/stsb.py:tiny --init none --workdir /tmp/ft_stsb_scratch ...
  ssl-jax finetune --config configs/finetune/stsb.py --init hf:DIR --workdir W --config.data.format=tfds

Variants: pretrained (default; the model and vocabulary come from --init), tiny.
"""
from ssl_jax.finetune import config as finetune_config


def get_config(arg: str = "pretrained"):
  return finetune_config.glue_config("stsb", arg)
