"""T5 span corruption: the encoder reads text with spans replaced by sentinels; the decoder writes the spans.

Batches follow `seqio.EncDecFeatureConverter` (packed or not): `encoder_input_tokens`,
`decoder_input_tokens`, `decoder_target_tokens`, `decoder_loss_weights`, and the `*_segment_ids` /
`*_positions` of both sides. BART denoising (`denoising.py`) shares everything but the name.
"""
from ssl_jax import objectives
from ssl_jax.models import encoder_decoder

_INPUTS = ("encoder_input_tokens", "decoder_input_tokens", "encoder_segment_ids",
           "decoder_segment_ids", "encoder_positions", "decoder_positions")


def model_inputs(batch):
  return {name: batch[name] for name in _INPUTS}


OBJECTIVE = objectives.Objective(
    name="span_corruption", family=("t5", "bart"), make_model=encoder_decoder.EncoderDecoder,
    model_inputs=model_inputs, denominators=objectives.decoder_denominators,
    loss=objectives.decoder_token_loss)
