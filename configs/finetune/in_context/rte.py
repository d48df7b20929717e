"""RTE in context: '{premise}\nQuestion: {hypothesis} True or False?\nAnswer: True' (GPT-3's
format); label 0 (entailment) is 'True', 1 'False', picked by log-likelihood.

  ssl-jax finetune --config configs/finetune/in_context/rte.py --init /tmp/gpt_tiny --workdir W \
      --config.data.eval_file=RTE/dev.tsv --config.data.train_file=RTE/train.tsv

Variants: pretrained, tiny (the same; the model comes from --init).
"""
from ssl_jax.finetune import in_context


def get_config(arg: str = "pretrained"):
  return in_context.base_config("rte", text_template="{a}\nQuestion: {b} True or False?",
                                input_prefix="", output_prefix="\nAnswer:", options="True,False",
                                variant=arg)
