"""Metric sums -> means, written to `metrics.jsonl`, TensorBoard and the console.

Steps return metrics as `{name: (sum, count)}` of scalar device arrays (flax lm1b style), so
means over many steps, microbatches and hosts are exact: add sums and counts, divide once.

The host never waits for the step it has just dispatched: `MetricsLogger.train_step` only keeps
references to the device arrays, and a log window's values are fetched when the *next* step
has been dispatched, so the device stays busy while the host formats and writes.

    logger = metrics.MetricsLogger(workdir, num_steps=..., log_every=..., start_step=step,
                                   tokens_per_step=batch * length, learning_rate_fn=schedule)
    for step in range(start_step + 1, num_steps + 1):
      state, sums = train_step(state, next(it))
      logger.train_step(step, sums)
    logger.close()
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import tensorflow as tf
from absl import logging
from clu import metric_writers

from ssl_jax import optim

MetricSums = Mapping[str, tuple[Any, Any]]  # name -> (sum, count), scalars (device or host)
RESULTS_FILE = "eval_results.json"   # a fine-tuning run's final scores (`write_results`)
# A train step's (schedule step, 0): the optimizer update it applied, for the logged learning rate.
SCHEDULE_STEP = "schedule_step"


def merge(sums_list: Sequence[MetricSums]) -> dict[str, tuple[float, float]]:
  """Adds (sum, count) pairs name by name; fetches device arrays in one transfer."""
  total: dict[str, tuple[float, float]] = {}
  for sums in jax.device_get(list(sums_list)):
    for name, (value, count) in sums.items():
      old_value, old_count = total.get(name, (0.0, 0.0))
      total[name] = (old_value + float(value), old_count + float(count))
  return total


def normalize(sums: MetricSums) -> dict[str, float]:
  """Means `sum / count` per metric; metrics with count 0 (nothing measured) are left out."""
  return {name: value / count for name, (value, count) in merge([sums]).items() if count}


def _format_duration(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


class MetricsLogger:
  """Writes train/eval rows to `workdir/metrics.jsonl` and `workdir/tensorboard`.

  Only process 0 writes files; other processes only log to the console. A row holds `step`,
  `split` ('train', 'eval', or the one `write_eval` is given; TensorBoard's tags are
  `<split>/<metric>`), the normalized metrics (objectives name their loss 'loss'), and for train
  rows `learning_rate` (the rate the row's step applied: step s is optax's update s - 1, which reads
  the schedule at s - 1; each non-finite step skipped before it holds the schedule back by one,
  which the step's `SCHEDULE_STEP` entry reports), `grad_norm` (the global norm of the gradient
  before clipping, if the step reports it), `tokens_per_sec`
  and `step_time_s` (wall time per step over the window, less the time spent in `paused`: evals
  and checkpoint saves), and `nonfinite_steps`, the share of the window's steps skipped for a
  non-finite loss or gradient (each such window also logs a warning with their count). A window
  closes every `log_every` steps, at `num_steps` and at `flush` (the trainer flushes before each
  checkpoint, so a run resumed from any checkpoint writes the rows of an uninterrupted one). Reopening a workdir at `start_step`
  drops rows past that step (`truncate=False`, for a reader such as `ssl-jax eval`, keeps them).
  """

  def __init__(self, workdir: str | os.PathLike, *, num_steps: int, log_every: int,
               start_step: int = 0, tokens_per_step: int | None = None,
               learning_rate_fn: Callable[[int], Any] | None = None, truncate: bool = True):
    if log_every <= 0:
      raise ValueError(f"config.train.log_every={log_every} must be positive.")
    self._num_steps = num_steps
    self._log_every = log_every
    self._tokens_per_step = tokens_per_step
    self._learning_rate_fn = learning_rate_fn
    self._is_writer = jax.process_index() == 0
    self._window: list[MetricSums] = []  # device sums since the last row
    self._window_end = start_step  # the last step in the window
    self._pending: tuple[int, list[MetricSums]] | None = None  # closed window, not yet fetched
    self._last_step = start_step
    self._last_time: float | None = None  # set when the first step is handed over
    self._file = None
    if self._is_writer:
      # tf.io.gfile: a gs:// workdir keeps its metrics beside its checkpoints.
      tf.io.gfile.makedirs(os.fspath(workdir))
      self._path = os.path.join(workdir, "metrics.jsonl")
      if truncate:   # rows a run that died after its last checkpoint left; a line cut by a crash
        _drop_rows(self._path, lambda line: _row_step(line) > start_step)
      if not tf.io.gfile.exists(self._path):   # GFile appends only to a file that exists
        with tf.io.gfile.GFile(self._path, "w") as f:
          f.write("")
      cut = not truncate and not _ends_a_line(self._path)
      self._file = tf.io.gfile.GFile(self._path, "a")
      if cut:   # appended rows start on a line of their own, not glued onto a line cut by a crash
        self._file.write("\n")   # (not rewritten: a running trainer may be appending to it)
    self._writer = metric_writers.create_default_writer(
        os.path.join(workdir, "tensorboard"), just_logging=not self._is_writer)

  def train_step(self, step: int, sums: MetricSums) -> None:
    """Hands over step `step`'s device metric sums without waiting for them.

    `step` is the host's count of updates after this step (1-based). Every `log_every` steps
    and at `num_steps` the window closes; it is written when the next step is handed over (or
    at `flush`/`close`).
    """
    if self._last_time is None:
      # The first call comes after the first step was dispatched, i.e. after compilation, so
      # the clock starts here and this step counts into the first window's time.
      self._last_time = time.perf_counter()
      self._last_step = step - 1
    if self._pending is not None:
      self._write_pending()
    self._window.append(sums)
    self._window_end = step
    if step % self._log_every == 0 or step == self._num_steps:
      self._close_window()

  def flush(self) -> None:
    """Closes the open window, writes its row (waiting for its last step) and flushes the files."""
    if self._window:
      if self._pending is not None:
        self._write_pending()
      self._close_window()
    if self._pending is not None:
      self._write_pending()
    self._writer.flush()
    if self._file:
      self._file.flush()

  @contextlib.contextmanager
  def paused(self, wait_for: Any = None):
    """Time spent inside (an eval, a checkpoint save) is not train-step time: it is left out of
    `step_time_s` and `tokens_per_sec`. `wait_for` (the last step's outputs) is waited for first,
    as that step's device time belongs to its window."""
    if wait_for is not None:
      jax.block_until_ready(wait_for)
    start = time.perf_counter()
    try:
      yield
    finally:
      if self._last_time is not None:
        self._last_time += time.perf_counter() - start

  def write_eval(self, step: int, sums: MetricSums | Sequence[MetricSums], *,
                 split: str = "eval", replace: bool = False) -> dict[str, float]:
    """Writes one eval row for `step` (blocks: eval results are wanted now) and returns it.
    `split`: 'eval' for a run's own evals, or a name of what the row scored, which keeps it out
    of the run's 'eval' rows (`ssl-jax eval`'s rows). `replace`: a row of `step` and `split` with
    the same metrics already there (a finished fine-tuning run, re-scored) is dropped first, so
    the step keeps one row."""
    sums_list = [sums] if isinstance(sums, Mapping) else list(sums)
    row = normalize(merge(sums_list))
    if replace and self._file:
      self._file.close()
      def same(line):
        old = parse_json_line(line) if _row_step(line) == step else {}
        return old.get("split") == split and old.keys() - {"step", "split"} == row.keys()
      _drop_rows(self._path, same)
      self._file = tf.io.gfile.GFile(self._path, "a")
    self._write_row(step, split, row)
    return row

  def close(self) -> None:
    self.flush()
    self._writer.close()
    if self._file:
      self._file.close()
      self._file = None

  def __enter__(self) -> MetricsLogger:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def _close_window(self) -> None:
    self._pending = (self._window_end, self._window)
    self._window = []

  def _write_pending(self) -> None:
    step, window = self._pending
    self._pending = None
    row = normalize(merge(window))  # waits for `step`, not for the step dispatched after it
    now = time.perf_counter()
    step_time_s = (now - self._last_time) / max(step - self._last_step, 1)
    self._last_step, self._last_time = step, now
    if self._learning_rate_fn is not None:
      # The last step's schedule step: step - 1, less the non-finite steps skipped so far.
      last = window[-1].get(SCHEDULE_STEP)
      at = step - 1 if last is None else int(jax.device_get(last[0]))
      row["learning_rate"] = optim.learning_rate_at(self._learning_rate_fn, at)
    row["step_time_s"] = step_time_s
    if self._tokens_per_step:
      row["tokens_per_sec"] = self._tokens_per_step / step_time_s
    self._write_row(step, "train", row)
    if row.get("nonfinite_steps"):   # train.on_nonfinite='skip': say so, every window
      logging.warning(
          "steps %d-%d: %d of %d had a non-finite loss or gradient and were skipped "
          "(config.train.on_nonfinite='skip'); a run that skips every step has diverged: stop "
          "it and lower config.optim.learning_rate.", step - len(window) + 1, step,
          round(row["nonfinite_steps"] * len(window)), len(window))
    eta_s = step_time_s * (self._num_steps - step)
    # The metric values themselves are logged by the clu writer.
    logging.info("step %d/%d: %.2f steps/s%s, ETA %s", step, self._num_steps, 1 / step_time_s,
                 f", {row['tokens_per_sec']:.0f} tokens/s" if "tokens_per_sec" in row else "",
                 _format_duration(eta_s))

  def _write_row(self, step: int, split: str, row: dict[str, float]) -> None:
    self._writer.write_scalars(step, {f"{split}/{name}": value for name, value in row.items()})
    if self._file:
      self._file.write(json_line({"step": step, "split": split, **row}))
      self._file.flush()   # whole lines, tail-able


def json_line(row: Mapping[str, Any]) -> str:
  """`row` as one line of strict JSON: JSON has no NaN or infinity (Python writes a bare NaN,
  which jq, Node and strict parsers refuse), so a non-finite value, e.g. a diverged eval's loss,
  is written as null (`parse_json_line` reads it back as NaN)."""
  return json.dumps(_finite_or_null(row), allow_nan=False) + "\n"


def write_results(workdir: str, results: Mapping[str, Any]) -> None:
  """A fine-tuning run's final scores as `workdir/eval_results.json` (`write_json`)."""
  write_json(os.path.join(workdir, RESULTS_FILE), results)


def write_json(path: str, value: Mapping[str, Any]) -> None:
  """`value` as strict JSON, as `json_line` writes (a non-finite number is null), atomically."""
  write_atomically(path, json.dumps(_finite_or_null(value), indent=2, allow_nan=False) + "\n")


def write_atomically(path: str, text: str) -> None:
  """Replaces `path` with `text` through a temporary file and a rename (atomic on local disks):
  a crash mid-write leaves the old file or the new one, never a cut one."""
  tmp = path + ".tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:   # also gs://
    f.write(text)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def _finite_or_null(value: Any) -> Any:
  """`value` with each non-finite float in it, in nested dicts and lists too, as None."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, Mapping):
    return {k: _finite_or_null(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite_or_null(v) for v in value]
  return value


def parse_json_line(line: str) -> dict[str, Any]:
  """A row written by `json_line`, its nulls as NaN."""
  return {k: float("nan") if v is None else v for k, v in json.loads(line).items()}


def _drop_rows(path: str, drop: Callable[[str], bool]) -> None:
  """Rewrites `path` without the lines for which `drop` is true (atomically on local disks)."""
  if not tf.io.gfile.exists(path):
    return
  with tf.io.gfile.GFile(path) as f:
    lines = f.readlines()
  kept = [line for line in lines if not drop(line)]
  if len(kept) != len(lines):
    write_atomically(path, "".join(kept))


def _ends_a_line(path: str) -> bool:
  """Whether `path` is empty or ends with a newline."""
  size = tf.io.gfile.stat(path).length
  if not size:
    return True
  with tf.io.gfile.GFile(path, "rb") as f:
    f.seek(size - 1)
    return f.read(1) == b"\n"


def _row_step(line: str) -> float:
  """The row's step; a blank or torn line (a crash mid-write) counts as past every step."""
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError, TypeError):
    return float("inf")


def read_metrics(workdir: str | os.PathLike, split: str | None = None) -> list[dict[str, Any]]:
  """Rows of `workdir/metrics.jsonl` (optionally only one split), in file order; a null (a
  non-finite value) is read as NaN. Split 'eval' is the run's own evals, of one eval set, without
  the rows `ssl-jax eval` appended (their split names what each scored). A line that does not
  parse (a row being written, or cut by a crash; the next resume drops it) is left out."""
  rows = []
  with tf.io.gfile.GFile(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      try:
        rows.append(parse_json_line(line))
      except ValueError:
        continue
  return [row for row in rows if split is None or row["split"] == split]
