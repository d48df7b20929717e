"""Extractive question answering on SQuAD v2.0 (or v1.1) JSON files.

  ssl-jax finetune --config configs/finetune/squad.py --init hf:DIR --workdir /tmp/ft_squad \
      --config.data.train_file=train-v2.0.json --config.data.eval_file=dev-v2.0.json
  SQuAD v1.1 (every question answerable): add --config.data.qa.allow_no_answer=False

Passages longer than the row are read in windows doc_stride tokens apart; scored by the official
exact match and F1. Variants: pretrained (default; 384 tokens, stride 128), tiny (128, 64).
"""
from ssl_jax.finetune import config as finetune_config


def get_config(arg: str = "pretrained"):
  config = finetune_config.base_config("extractive_qa", "squad", "squad_json")
  config.data.sequence_length = 384
  config.finetune.num_epochs = 2.0
  config.optim.learning_rate = 3e-5
  finetune_config.set_variant(config, arg)
  if arg == "tiny":
    config.data.sequence_length = 128
    config.data.qa.update(max_query_length=32, doc_stride=64)
  return config
