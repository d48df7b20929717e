"""Text-to-text fine-tuning of T5 or BART (the model comes from --init), scored by decoding.

  ssl-jax finetune --config configs/finetune/text_to_text.py --init /tmp/t5_tiny --workdir W \
      --config.data.train_file=SST-2/train.tsv --config.data.eval_file=SST-2/dev.tsv
  RTE:   --config.data.task=rte (GLUE TSV files, or --config.data.format=tfds)
  SQuAD: --config.data.task=squad --config.data.format=squad_json --config.data.targets_length=32
  Any:   --config.data.format=tsv (input<TAB>target lines; scored by exact-match accuracy)
  Beam search: --config.eval.decoding=beam --config.eval.beam_size=4
  --init: none | an ssl_jax T5/BART run directory | hf:DIR (a Hugging Face T5 or BART)

Variants: pretrained (default; lr 1e-4 constant, as T5 fine-tuning uses 1e-3 with Adafactor),
tiny (a 2-layer T5 over the default vocabulary, lr 1e-3: --init none or a tiny ssl_jax run),
bart_tiny (the same with BART).
"""
from ssl_jax.finetune import text_to_text


def get_config(arg: str = "pretrained"):
  if arg == "pretrained":
    return text_to_text.base_config("t5", "base")
  if arg not in ("tiny", "bart_tiny"):
    raise ValueError(f"config variant {arg!r} is unknown; use 'pretrained', 'tiny' or 'bart_tiny'.")
  config = text_to_text.base_config("bart" if arg == "bart_tiny" else "t5", "tiny")
  config.model.vocab_size = -1  # the default vocabulary's size
  config.model.dropout_rate = config.model.attention_dropout_rate = 0.0
  config.optim.learning_rate = 1e-3
  return config
