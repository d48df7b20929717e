"""Training time lost to a checkpoint save: asynchronous vs synchronous Orbax saves, side by side.

  python benchmarks/checkpoint.py                         # BERT small (~29M params, ~330 MB state)
  python benchmarks/checkpoint.py --preset=tiny --saves=3 --window_steps=2

Trains the model with the real trainer pieces (compiled train step, data iterator, checkpoint
manager) and saves the whole train state plus the data position, as the trainer does. Each repeat
times three windows of `--window_steps` steps from the same point of training: one without a
save, one that starts with an asynchronous save, one that starts with a synchronous save. Per kind
of save it reports medians over `--saves` repeats of
  blocked_s            time the training loop waits inside `save(...)` before its next step;
  complete_s           time from `save(...)` until the checkpoint is final on disk;
  window_overhead_s    wall time of the window minus that of the window without a save: the
                       blocking plus any slowdown of the steps while a background write shares the
                       machine (noisy on a busy machine: see `window_overhead_s_all`).
One JSON line per kind of save, then a summary line with both `blocked_s` side by side.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/

import jax  # pylint: disable=g-import-not-at-top

from configs import bert  # pylint: disable=g-import-not-at-top
from ssl_jax import checkpointing  # pylint: disable=g-import-not-at-top
from ssl_jax import trainer  # pylint: disable=g-import-not-at-top
from ssl_jax.data import pipeline  # pylint: disable=g-import-not-at-top


def make_config(preset: str, global_batch_size: int, sequence_length: int):
  """BERT `preset` (model size as published) trained on the embedded corpus."""
  config = bert.get_config(preset)
  config.data.update(source="default_corpus", sequence_length=sequence_length)
  config.data.vocab.kind = "default"
  config.data.corpus.num_documents = 500
  config.data.shuffle_buffer = 64
  config.data.mlm.max_predictions = 20
  config.train.update(global_batch_size=global_batch_size, num_steps=1000, keep_checkpoints=1,
                      eval_steps=0)
  config.optim.warmup_steps = 10
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  return config


def _window(train_step, state, it, steps: int, before_steps=None):
  """Runs `steps` train steps (after `before_steps()`, inside the clock); returns the state, the
  window's wall time and the time `before_steps` took."""
  jax.block_until_ready(state)
  start = time.perf_counter()
  if before_steps is not None:
    before_steps(state)
  call_s = time.perf_counter() - start
  for _ in range(steps):
    state, _ = train_step(state, next(it))
  jax.block_until_ready(state)
  return state, time.perf_counter() - start, call_s


class _Finalized(threading.Thread):
  """Measures, from its creation, how long until `path` exists (a save's final rename)."""

  def __init__(self, path: str):
    super().__init__(daemon=True)
    self._path, self._start, self.seconds = path, time.perf_counter(), None
    self.start()

  def run(self):
    while not os.path.exists(self._path):
      time.sleep(0.005)
    self.seconds = time.perf_counter() - self._start


def run(args) -> list[dict]:
  config = make_config(args.preset, args.global_batch_size, args.sequence_length)
  exp = trainer.Experiment.build(config)
  state = exp.init_state()
  train_step = trainer.compile_train_step(exp)
  it = pipeline.make_iterator(config, "train", exp.batch_sharding)
  for _ in range(args.warmup_steps):
    state, _ = train_step(state, next(it))
  state_mib = sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20
  results = {kind: {"blocked_s": [], "complete_s": [], "window_overhead_s": []}
             for kind in ("async", "sync")}
  base_s = []
  with tempfile.TemporaryDirectory(prefix="ckpt_bench_", dir=args.dir) as root:
    managers = {kind: checkpointing.make_manager(os.path.join(root, kind), config.train,
                                                 enable_async=kind == "async")
                for kind in results}
    step = 0
    for _ in range(args.saves):
      state, window_s, _ = _window(train_step, state, it, args.window_steps)
      base_s.append(window_s)
      for kind, manager in managers.items():
        step += 1
        save = lambda s, m=manager, n=step: checkpointing.save(m, n, s, it, config, force=True)
        final = _Finalized(os.path.join(root, kind, "checkpoints", str(step)))
        state, window_s, call_s = _window(train_step, state, it, args.window_steps, save)
        manager.wait_until_finished()
        final.join()
        results[kind]["complete_s"].append(final.seconds)
        results[kind]["blocked_s"].append(call_s)
        results[kind]["window_overhead_s"].append(window_s - base_s[-1])
    for manager in managers.values():
      manager.close()
  rows = []
  common = {"benchmark": "checkpoint", "model": f"bert {args.preset}",
            "params": sum(x.size for x in jax.tree.leaves(state.params)),
            "state_mib": round(state_mib, 1), "devices": jax.device_count(),
            "saves": args.saves, "window_steps": args.window_steps,
            "step_time_s": round(statistics.median(base_s) / args.window_steps, 4)}
  for kind, values in results.items():
    rows.append({**common, "save": kind,
                 **{k: round(statistics.median(v), 4) for k, v in values.items()},
                 "blocked_s_all": [round(v, 3) for v in values["blocked_s"]],
                 "window_overhead_s_all": [round(v, 3) for v in values["window_overhead_s"]]})
  rows.append({**common, "summary": "median training time blocked by one save",
               "async_blocked_s": rows[0]["blocked_s"], "sync_blocked_s": rows[1]["blocked_s"],
               "async_complete_s": rows[0]["complete_s"],
               "sync_complete_s": rows[1]["complete_s"]})
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="small", help="BERT preset: tiny, small, base, ...")
  parser.add_argument("--global_batch_size", type=int, default=8)
  parser.add_argument("--sequence_length", type=int, default=128)
  parser.add_argument("--saves", type=int, default=5, help="repeats; medians are reported")
  parser.add_argument("--window_steps", type=int, default=3,
                      help="train steps timed after each save (long enough for an async write)")
  parser.add_argument("--warmup_steps", type=int, default=3)
  parser.add_argument("--dir", default=None, help="where to write checkpoints (default: tmp)")
  args = parser.parse_args(argv)
  if args.saves < 1 or args.window_steps < 1 or args.warmup_steps < 0:
    parser.error(f"--saves={args.saves} --window_steps={args.window_steps} --warmup_steps="
                 f"{args.warmup_steps}: time at least 1 save and 1 step after it.")
  for row in run(args):
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
