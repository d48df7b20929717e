"""GLUE QNLI: fine-tune a BERT encoder on GLUE-format TSV files (or TFDS glue/qnli).

  ssl-jax finetune --config configs/finetune/qnli.py --init hf:DIR --workdir /tmp/ft_qnli \
      --config.data.train_file=QNLI/train.tsv --config.data.eval_file=QNLI/dev.tsv
  ssl-jax finetune --config configs/finetune/qnli.py:tiny --init none --workdir /tmp/ft_qnli_scratch ...
  ssl-jax finetune --config configs/finetune/qnli.py --init hf:DIR --workdir W --config.data.format=tfds

Variants: pretrained (default; the model and vocabulary come from --init), tiny.
"""
from ssl_jax.finetune import config as finetune_config


def get_config(arg: str = "pretrained"):
  return finetune_config.glue_config("qnli", arg)
