"""Input pipeline throughput per objective: real (non-padding) tokens per second of one process.

  python benchmarks/data_pipeline.py                          # the tiny configs' data settings
  python benchmarks/data_pipeline.py --objectives=mlm --batches=100 --global_batch_size=256
  python benchmarks/data_pipeline.py --compare_train_step     # beside the tiny train step

Prints one JSON line per objective. Each batch is timed alone after `--warmup` batches;
`tokens_per_sec` = all timed batches' tokens / their total time (tokens = positions with a non-zero
segment id in the model's input). The reads are uneven (tiny BERT's alternate ~10 ms and ~150 ms),
so the median batch (`median_batch_s`, `median_tokens_per_sec`) says little about throughput.
`cpu_ms_per_batch` is the process's CPU time (user + system, all of tf.data's threads) over the timed
batches, per batch: on a CPU-only host that much of the cores' time goes to the pipeline instead of
the step, however well the pipeline overlaps the step.
With `--compare_train_step` the same config's compiled train step (benchmarks/train_step.py's
`SslJaxStep`, all local devices) is timed in the same process right after, on batches of the same
shape: `pipeline_vs_step` = median step time / mean batch time, i.e. how many times faster the
pipeline makes batches than the step consumes them.
"""
import argparse
import importlib
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/

from ssl_jax.data import pipeline  # pylint: disable=g-import-not-at-top

import train_step  # pylint: disable=g-import-not-at-top  (benchmarks/train_step.py)

_SEGMENTS = {"mlm": "segment_ids", "causal_lm": "decoder_segment_ids",
             "span_corruption": "encoder_segment_ids", "denoising": "encoder_segment_ids"}


def _cpu_s() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def measure(objective, *, global_batch_size, sequence_length, batches, warmup,
            compare_train_step=False):
  config = importlib.import_module(f"configs.{train_step.FAMILY[objective]}").get_config("tiny")
  config.train.global_batch_size = global_batch_size
  config.data.sequence_length = sequence_length
  start = time.perf_counter()
  it = pipeline.DataIterator(pipeline.make_dataset(config, "train"), None)
  for _ in range(warmup):
    next(it)
  startup_s = time.perf_counter() - start
  times, tokens = [], []
  cpu_start = _cpu_s()
  for _ in range(batches):
    t = time.perf_counter()
    batch = next(it)
    times.append(time.perf_counter() - t)
    tokens.append(int((batch[_SEGMENTS[objective]] > 0).sum()))
  cpu_ms_per_batch = 1e3 * (_cpu_s() - cpu_start) / batches
  median_s, mean_s = statistics.median(times), statistics.mean(times)
  row = {
      "benchmark": "data_pipeline", "objective": objective, "global_batch_size": global_batch_size,
      "sequence_length": sequence_length, "pack": bool(config.data.pack), "batches": batches,
      "mean_batch_s": round(mean_s, 5), "tokens_per_sec": round(sum(tokens) / sum(times)),
      "median_batch_s": round(median_s, 5),
      "median_tokens_per_sec": round(statistics.median(tokens) / median_s),
      "cpu_ms_per_batch": round(cpu_ms_per_batch, 1),
      "fill": round(statistics.mean(tokens) / (global_batch_size * sequence_length), 3),
      "startup_s": round(startup_s, 2)}
  if compare_train_step:
    step = train_step.SslJaxStep(config, warmup + batches)
    step_times = [step()[1] for _ in range(warmup + batches)][warmup:]
    step_s = statistics.median(step_times)
    row.update({"train_step_s": round(step_s, 5),
                "train_step_tokens_per_sec": round(statistics.median(tokens) / step_s),
                "pipeline_vs_step": round(step_s / mean_s, 1)})
  return row


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--objectives", type=train_step.objectives_flag,
                      default=",".join(train_step.FAMILY))
  parser.add_argument("--global_batch_size", type=int, default=32)
  parser.add_argument("--sequence_length", type=int, default=128)
  parser.add_argument("--batches", type=int, default=50)
  parser.add_argument("--warmup", type=int, default=10)
  parser.add_argument("--compare_train_step", action="store_true",
                      help="also time the same config's train step (see the module docstring)")
  args = parser.parse_args(argv)
  if args.batches < 1 or args.warmup < 0:
    parser.error(f"--batches={args.batches} --warmup={args.warmup}: time at least 1 batch, after "
                 "0 or more warm-up batches.")
  for objective in args.objectives:
    print(json.dumps(measure(objective, global_batch_size=args.global_batch_size,
                             sequence_length=args.sequence_length, batches=args.batches,
                             warmup=args.warmup, compare_train_step=args.compare_train_step)),
          flush=True)


if __name__ == "__main__":
  main()
