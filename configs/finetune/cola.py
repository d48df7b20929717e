"""GLUE CoLA: fine-tune a BERT encoder on GLUE-format TSV files (or TFDS glue/cola).

  ssl-jax finetune --config configs/finetune/cola.py --init hf:DIR --workdir /tmp/ft_cola \
      --config.data.train_file=CoLA/train.tsv --config.data.eval_file=CoLA/dev.tsv
  ssl-jax finetune --config configs/finetune/cola.py:tiny --init none --workdir /tmp/ft_cola_scratch ...
  ssl-jax finetune --config configs/finetune/cola.py --init hf:DIR --workdir W --config.data.format=tfds

Variants: pretrained (default; the model and vocabulary come from --init), tiny.
"""
from ssl_jax.finetune import config as finetune_config


def get_config(arg: str = "pretrained"):
  return finetune_config.glue_config("cola", arg)
