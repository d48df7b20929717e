"""T5 span corruption: the encoder reads text with spans replaced by sentinels; the decoder writes the spans.

Batches follow `seqio.EncDecFeatureConverter` (packed or not): `encoder_input_tokens`,
`decoder_input_tokens`, `decoder_target_tokens`, `decoder_loss_weights`, and the `*_segment_ids` /
`*_positions` of both sides. BART denoising (`denoising.py`) shares everything but the name.
"""
from ssl_jax import objectives
from ssl_jax.models import encoder_decoder

def model_inputs(batch):
  encoder, decoder = batch["encoder_input_tokens"], batch["decoder_input_tokens"]
  return dict(
      encoder_input_tokens=encoder, decoder_input_tokens=decoder,
      encoder_segment_ids=objectives.segment_ids(batch, "encoder_segment_ids",
                                                 "encoder_input_tokens"),
      # Unpacked: the first decoder input is BOS (id 0), so real positions come from the targets.
      decoder_segment_ids=objectives.segment_ids(batch, "decoder_segment_ids",
                                                 "decoder_target_tokens"),
      encoder_positions=objectives.positions(batch, "encoder_positions", encoder),
      decoder_positions=objectives.positions(batch, "decoder_positions", decoder))


OBJECTIVE = objectives.Objective(
    name="span_corruption", family=("t5", "bart"), make_model=encoder_decoder.EncoderDecoder,
    model_inputs=model_inputs, denominators=objectives.decoder_denominators,
    loss=objectives.decoder_token_loss)
