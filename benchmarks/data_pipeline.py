"""Input pipeline throughput per objective: real (non-padding) tokens per second of one process.

  python benchmarks/data_pipeline.py                          # the tiny configs' data settings
  python benchmarks/data_pipeline.py --objectives=mlm --batches=100 --global_batch_size=256

Prints one JSON line per objective. Each batch is timed alone after `--warmup` batches; the median batch
time gives `tokens_per_sec` (tokens = positions with a non-zero segment id in the model's input).
"""
import argparse
import importlib
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/

from ssl_jax.data import pipeline  # pylint: disable=g-import-not-at-top

_FAMILY = {"mlm": "bert", "causal_lm": "gpt", "span_corruption": "t5", "denoising": "bart"}
_SEGMENTS = {"mlm": "segment_ids", "causal_lm": "decoder_segment_ids",
             "span_corruption": "encoder_segment_ids", "denoising": "encoder_segment_ids"}


def measure(objective, *, global_batch_size, sequence_length, batches, warmup):
  config = importlib.import_module(f"configs.{_FAMILY[objective]}").get_config("tiny")
  config.train.global_batch_size = global_batch_size
  config.data.sequence_length = sequence_length
  start = time.perf_counter()
  it = pipeline.DataIterator(pipeline.make_dataset(config, "train"), None)
  for _ in range(warmup):
    next(it)
  startup_s = time.perf_counter() - start
  times, tokens = [], []
  for _ in range(batches):
    t = time.perf_counter()
    batch = next(it)
    times.append(time.perf_counter() - t)
    tokens.append(int((batch[_SEGMENTS[objective]] > 0).sum()))
  median_s = statistics.median(times)
  return {
      "benchmark": "data_pipeline", "objective": objective, "global_batch_size": global_batch_size,
      "sequence_length": sequence_length, "pack": bool(config.data.pack), "batches": batches,
      "median_batch_s": round(median_s, 5), "tokens_per_sec": round(statistics.median(tokens) / median_s),
      "mean_tokens_per_sec": round(sum(tokens) / sum(times)),
      "fill": round(statistics.mean(tokens) / (global_batch_size * sequence_length), 3),
      "startup_s": round(startup_s, 2)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--objectives", default=",".join(_FAMILY))
  parser.add_argument("--global_batch_size", type=int, default=32)
  parser.add_argument("--sequence_length", type=int, default=128)
  parser.add_argument("--batches", type=int, default=50)
  parser.add_argument("--warmup", type=int, default=10)
  args = parser.parse_args(argv)
  for objective in args.objectives.split(","):
    print(json.dumps(measure(objective, global_batch_size=args.global_batch_size,
                             sequence_length=args.sequence_length, batches=args.batches,
                             warmup=args.warmup)), flush=True)


if __name__ == "__main__":
  main()
