"""GLUE SST-2: fine-tune a BERT encoder on GLUE-format TSV files (or TFDS glue/sst2).

  ssl-jax finetune --config configs/finetune/sst2.py --init hf:DIR --workdir /tmp/ft_sst2 \
      --config.data.train_file=SST-2/train.tsv --config.data.eval_file=SST-2/dev.tsv
  ssl-jax finetune --config configs/finetune/sst2.py:tiny --init none --workdir /tmp/ft_sst2_scratch ...
  ssl-jax finetune --config configs/finetune/sst2.py --init hf:DIR --workdir W --config.data.format=tfds

Variants: pretrained (default; the model and vocabulary come from --init), tiny.
"""
from ssl_jax.finetune import config as finetune_config


def get_config(arg: str = "pretrained"):
  return finetune_config.glue_config("sst2", arg)
