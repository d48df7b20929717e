"""GLUE RTE: fine-tune a BERT encoder on GLUE-format TSV files (or TFDS glue/rte).

  ssl-jax finetune --config configs/finetune/rte.py --init hf:DIR --workdir /tmp/ft_rte \
      --config.data.train_file=RTE/train.tsv --config.data.eval_file=RTE/dev.tsv
  ssl-jax finetune --config configs/finetune/rte.py:tiny --init none --workdir /tmp/ft_rte_scratch ...
  ssl-jax finetune --config configs/finetune/rte.py --init hf:DIR --workdir W --config.data.format=tfds

Variants: pretrained (default; the model and vocabulary come from --init), tiny.
"""
from ssl_jax.finetune import config as finetune_config


def get_config(arg: str = "pretrained"):
  return finetune_config.glue_config("rte", arg)
