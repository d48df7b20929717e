"""GLUE MRPC: fine-tune a BERT encoder on GLUE-format TSV files (or TFDS glue/mrpc).

  ssl-jax finetune --config configs/finetune/mrpc.py --init hf:DIR --workdir /tmp/ft_mrpc \
      --config.data.train_file=MRPC/train.tsv --config.data.eval_file=MRPC/dev.tsv
  ssl-jax finetune --config configs/finetune/mrpc.py:tiny --init none --workdir /tmp/ft_mrpc_scratch ...
  ssl-jax finetune --config configs/finetune/mrpc.py --init hf:DIR --workdir W --config.data.format=tfds

Variants: pretrained (default; the model and vocabulary come from --init), tiny.
"""
from ssl_jax.finetune import config as finetune_config


def get_config(arg: str = "pretrained"):
  return finetune_config.glue_config("mrpc", arg)
