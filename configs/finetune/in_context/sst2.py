"""SST-2 in context: a GPT (--init) picks 'negative' or 'positive' by log-likelihood.

  ssl-jax finetune --config configs/finetune/in_context/sst2.py --init /tmp/gpt_tiny --workdir W \
      --config.data.eval_file=SST-2/dev.tsv --config.data.train_file=SST-2/train.tsv \
      --config.in_context.shots=4
  A suite of in-context tasks: ssl-jax eval-suite --config configs/finetune/suite.py \
      --config.config_dir=configs/finetune/in_context --config.tasks=sst2,rte,squad --init ...

Prompts: 'Review: {sentence}\nSentiment: positive', shots drawn from train_file ('' = the
other eval examples). Variants: pretrained, tiny (the same; the model comes from --init).
"""
from ssl_jax.finetune import in_context


def get_config(arg: str = "pretrained"):
  return in_context.base_config("sst2", input_prefix="Review: ", output_prefix="\nSentiment:",
                                variant=arg)
