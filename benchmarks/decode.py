"""Decoding speed of T5 and BART: ssl_jax's greedy and beam search against `transformers`'
`generate`, the same model (converted with `ssl_jax.interop.hf.from_pretrained`), the same inputs,
timed in turn in one process; one JSON line per (family, decoding, scan_layers).

  python benchmarks/decode.py                     # T5 and BART, 4+4 layers, d 256, input 256
  python benchmarks/decode.py --family=t5 --beam_size=4 --steps=64 --batch=8

Every row decodes exactly `--steps` new tokens (no EOS: ssl_jax with eos_id=None, transformers
with min_new_tokens=max_new_tokens), so both sides do the same work whatever the random model
predicts. Times are medians of `--repeats` runs after one warm-up (ssl_jax's compiles there);
`speedup` = transformers_s / ssl_jax_s (`load_avg_1m`: under load PyTorch slows more than XLA,
so a busy machine overstates it). The cross-attention keys and values of the encoder output
are projected once per generation on both sides.
"""
import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from ssl_jax.interop import hf as hf_interop  # pylint: disable=g-import-not-at-top,wrong-import-position
from ssl_jax.models import decoding  # pylint: disable=g-import-not-at-top,wrong-import-position


def hf_model(family: str, args):
  """A random `transformers` T5 (v1.1 layout) or BART of the benchmark's size."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  if family == "t5":
    config = transformers.T5Config(
        vocab_size=args.vocab_size, d_model=args.hidden, d_kv=args.hidden // args.heads,
        d_ff=4 * args.hidden, num_layers=args.layers, num_decoder_layers=args.layers,
        num_heads=args.heads, dropout_rate=0.0, feed_forward_proj="gated-gelu",
        tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return transformers.T5ForConditionalGeneration(config).eval()
  config = transformers.BartConfig(
      vocab_size=args.vocab_size, d_model=args.hidden, encoder_layers=args.layers,
      decoder_layers=args.layers, encoder_attention_heads=args.heads,
      decoder_attention_heads=args.heads, encoder_ffn_dim=4 * args.hidden,
      decoder_ffn_dim=4 * args.hidden, max_position_embeddings=max(args.input_length, args.steps) + 2,
      dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=1, eos_token_id=2,
      bos_token_id=0, decoder_start_token_id=2, forced_bos_token_id=None, forced_eos_token_id=None)
  return transformers.BartForConditionalGeneration(config).eval()


def median_time(fn, repeats: int) -> float:
  fn()   # warm-up (ssl_jax compiles here)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def rows(family: str, args):
  import torch  # pylint: disable=g-import-not-at-top
  reference = hf_model(family, args)
  inputs = np.random.RandomState(0).randint(3, args.vocab_size, (args.batch, args.input_length))
  torch_inputs = torch.tensor(inputs, dtype=torch.long)
  for decoding_kind in ("greedy", "beam"):
    beams = 1 if decoding_kind == "greedy" else args.beam_size

    def transformers_run():
      with torch.no_grad():
        reference.generate(torch_inputs, num_beams=beams, do_sample=False,
                           max_new_tokens=args.steps, min_new_tokens=args.steps)

    transformers_s = median_time(transformers_run, args.repeats)
    for scan_layers in (False, True):
      model, params = hf_interop.from_pretrained(reference, scan_layers=scan_layers)
      encoder_inputs = inputs.astype(np.int32)
      if decoding_kind == "greedy":
        run = lambda: jax.block_until_ready(decoding.seq2seq_generate(  # noqa: E731
            model, params, encoder_inputs, args.steps))
      else:
        run = lambda: jax.block_until_ready(decoding.beam_search(  # noqa: E731
            model, params, encoder_inputs, args.steps, beam_size=beams, eos_id=None))
      ssl_jax_s = median_time(run, args.repeats)
      yield {"family": family, "decoding": decoding_kind, "beam_size": beams,
             "scan_layers": scan_layers, "batch": args.batch, "input_length": args.input_length,
             "steps": args.steps, "layers": args.layers, "hidden": args.hidden,
             "ssl_jax_s": round(ssl_jax_s, 4), "transformers_s": round(transformers_s, 4),
             "speedup": round(transformers_s / ssl_jax_s, 3),
             "ssl_jax_tokens_per_s": round(args.batch * args.steps / ssl_jax_s, 1),
             "backend": jax.default_backend(), "load_avg_1m": round(os.getloadavg()[0], 2)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--family", default="t5,bart", help="comma-separated: t5, bart")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--input_length", type=int, default=256)
  parser.add_argument("--steps", type=int, default=32, help="new tokens per row")
  parser.add_argument("--beam_size", type=int, default=4)
  parser.add_argument("--layers", type=int, default=4, help="encoder and decoder layers each")
  parser.add_argument("--hidden", type=int, default=256)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--vocab_size", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  families = args.family.split(",")
  for family in families:
    if family not in ("t5", "bart"):
      parser.error(f"--family={args.family}: each entry must be t5 or bart, not {family!r}")
  for name in ("batch", "input_length", "steps", "beam_size", "layers", "hidden", "heads",
               "vocab_size", "repeats"):
    if getattr(args, name) < 1:
      parser.error(f"--{name}={getattr(args, name)} must be at least 1")
  if args.hidden % args.heads:
    parser.error(f"--hidden={args.hidden} must be a multiple of --heads={args.heads}")
  for family in families:
    for row in rows(family, args):
      print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
