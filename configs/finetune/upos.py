"""Universal Dependencies part-of-speech tagging (UPOS) from CoNLL-U files.

  ssl-jax finetune --config configs/finetune/upos.py --init hf:DIR --workdir /tmp/ft_upos \
      --config.data.train_file=en_ewt-ud-train.conllu --config.data.eval_file=en_ewt-ud-dev.conllu

Scored by word accuracy over every word of the eval file. Variants: pretrained (default), tiny.
"""
from ssl_jax.finetune import config as finetune_config


def get_config(arg: str = "pretrained"):
  config = finetune_config.base_config("tagging", "upos", "conllu")
  finetune_config.set_variant(config, arg)
  return config
