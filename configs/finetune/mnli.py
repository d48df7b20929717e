"""GLUE MNLI: fine-tune a BERT encoder on GLUE-format TSV files (or TFDS glue/mnli).

  ssl-jax finetune --config configs/finetune/mnli.py --init hf:DIR --workdir /tmp/ft_mnli \
      --config.data.train_file=MNLI/train.tsv --config.data.eval_file=MNLI/dev_matched.tsv
  ssl-jax finetune --config configs/finetune/mnli.py:tiny --init none --workdir /tmp/ft_mnli_scratch ...
  ssl-jax finetune --config configs/finetune/mnli.py --init hf:DIR --workdir W --config.data.format=tfds

Variants: pretrained (default; the model and vocabulary come from --init), tiny.
"""
from ssl_jax.finetune import config as finetune_config


def get_config(arg: str = "pretrained"):
  return finetune_config.glue_config("mnli", arg)
