"""GPT causal language modelling: predict every next token.

Batches follow `seqio.LMFeatureConverter`: `decoder_input_tokens` (targets shifted right),
`decoder_target_tokens`, `decoder_loss_weights`, `decoder_segment_ids`, `decoder_positions`.
"""
from ssl_jax import objectives
from ssl_jax.models import gpt


def model_inputs(batch):
  tokens = batch["decoder_input_tokens"]
  return dict(
      tokens=tokens,
      # Unpacked: the first input token is BOS (id 0), so real positions come from the targets.
      segment_ids=objectives.segment_ids(batch, "decoder_segment_ids", "decoder_target_tokens"),
      positions=objectives.positions(batch, "decoder_positions", tokens))


OBJECTIVE = objectives.Objective(
    name="causal_lm", family=("gpt",), make_model=gpt.GPT, model_inputs=model_inputs,
    denominators=objectives.decoder_denominators,
    loss=objectives.decoder_token_loss)
