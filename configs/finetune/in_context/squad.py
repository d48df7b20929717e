"""SQuAD in context: 'Context: ...\nQuestion: ...\nAnswer: ...', answered by greedy decoding
and scored by the official exact match and F1 (an unanswerable question's answer is '').

  ssl-jax finetune --config configs/finetune/in_context/squad.py --init /tmp/gpt_tiny \
      --workdir W --config.data.eval_file=dev-v2.0.json --config.in_context.shots=1

Variants: pretrained, tiny (the same; the model comes from --init).
"""
from ssl_jax.finetune import in_context


def get_config(arg: str = "pretrained"):
  # 'Context: ' is the input prefix, so that a generated answer stops where a next example starts.
  config = in_context.base_config("squad", "squad_json", text_template="{a}\nQuestion: {b}",
                                  input_prefix="Context: ", output_prefix="\nAnswer:",
                                  variant=arg)
  config.in_context.max_new_tokens = 16
  return config
