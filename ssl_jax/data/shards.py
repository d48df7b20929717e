"""The global batch stream as a fixed number of logical shards, read by any number of processes.

    it = shards.ShardedIterator(config, "train", batch_sharding)   # via pipeline.make_iterator
    batch = next(it)               # dict of global jax.Arrays, rows laid out by batch_sharding
    it.save(directory); it.restore(directory)

The stream of global batches is a function of the config and of the number of logical shards S,
never of the process count: shard s is the tf.data pipeline over seqio `ShardInfo(s, S)` batched
to `global_batch_size / S` rows, and global batch t is the concatenation of every shard's batch t
in shard order. A process reads the shards overlapping the rows its devices hold (from the batch
sharding) and keeps those rows. S is `config.data.num_shards`, or with 0 (the default) the
process count of the run that starts the stream -- one shard per process, no extra work.

Checkpoints hold one tf.data position per shard (`process_<s>/`, written by the lowest process
reading shard s) and `shards.json`. A run restoring them keeps the checkpoint's S whatever its own
process count, so a job moved from 2 hosts to 1 (or 1 to 2, 4 to 8, ...) continues the exact
stream it would have seen. When a process's rows cover only part of a shard (more processes than
shards), it reads that shard whole and keeps its rows: correct, but the shard's preprocessing
runs on several processes, which is logged; set `config.data.num_shards` to a multiple of the
largest process count a run will use to avoid it.
"""
import json
import os

import jax
import numpy as np
import seqio
import tensorflow as tf
from absl import logging

from ssl_jax.data import pipeline
from ssl_jax.data import tasks

_META_FILE = "shards.json"


def num_shards(config) -> int:
  """S for a fresh stream: `config.data.num_shards`, or the process count when it is 0."""
  configured = int(config.data.get("num_shards", 0))
  return configured if configured > 0 else jax.process_count()


def process_rows(batch_sharding, global_batch: int) -> dict[int, tuple[int, int]]:
  """{process index: (first row, end row)} of the global batch each process's devices hold.

  Raises:
    ValueError: a process's devices do not hold one contiguous block of rows.
  """
  if batch_sharding is None:  # no devices: the even split make_array_from_process_local_data uses
    per = global_batch // jax.process_count()
    return {p: (p * per, (p + 1) * per) for p in range(jax.process_count())}
  blocks: dict[int, set] = {}
  for device, index in batch_sharding.devices_indices_map((global_batch,)).items():
    blocks.setdefault(device.process_index, set()).add(index[0].indices(global_batch)[:2])
  rows = {}
  for process, spans in blocks.items():
    spans = sorted(spans)
    end = spans[0][1]
    for start, stop in spans[1:]:
      if start > end:
        raise ValueError(
            f"process {process}'s devices hold rows {spans} of the batch, not one block; order "
            "the mesh so that each process's devices are adjacent on the batch axes (config.mesh "
            "with 'data' outermost, as partitioning.make_mesh builds it).")
      end = max(end, stop)
    rows[process] = (spans[0][0], end)
  return rows


def shards_for_rows(start: int, stop: int, shard_count: int,
                    global_batch: int) -> list[tuple[int, int, int]]:
  """(shard, first row, end row within that shard's batch) for every shard holding global rows
  [start, stop): e.g. rows 8..16 of 16 in 1 shard -> [(0, 8, 16)]; in 4 -> [(2, 0, 4), (3, 0, 4)]."""
  per = global_batch // shard_count
  return [(s, max(start, s * per) - s * per, min(stop, (s + 1) * per) - s * per)
          for s in range(shard_count) if max(start, s * per) < min(stop, (s + 1) * per)]


def global_arrays(local: dict, batch_sharding, global_batch: int) -> dict:
  """This process's rows (`ShardedIterator.next_local`) as global `jax.Array`s laid out by
  `batch_sharding`; with `batch_sharding=None`, the numpy rows themselves."""
  if batch_sharding is None:
    return local
  # One call for the whole batch: in one process that is one batched transfer (half the time of
  # one call per feature for the tiny configs' 11 arrays).
  return jax.make_array_from_process_local_data(
      batch_sharding, local, {k: (global_batch,) + v.shape[1:] for k, v in local.items()})


def _read_meta(directory) -> dict | None:
  """The shards.json of a saved position, or None if it has none."""
  path = os.path.join(os.fspath(directory), _META_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


class ShardedIterator:
  """This process's rows of the global batch stream (see the module docstring)."""

  def __init__(self, config, split: str, batch_sharding, shard_count: int | None = None):
    """shard_count: S of the stream (default `num_shards(config)`), e.g. a resumed train
    stream's, so that the eval split is read the same way whatever the process count."""
    self._config = config
    self._split = split
    self._sharding = batch_sharding
    self._global_batch = int(config.train.global_batch_size)
    self._rows = process_rows(batch_sharding, self._global_batch)
    self.num_shards = shard_count or num_shards(config)
    self._check_divides(self.num_shards)
    self._readers = None  # built on first use, after a restore has had its say on num_shards

  def _check_divides(self, count: int) -> None:
    if count < 1 or self._global_batch % count:
      raise ValueError(
          f"config.train.global_batch_size={self._global_batch} cannot be split into "
          f"{count} data shards (config.data.num_shards={self._config.data.get('num_shards', 0)}, "
          "0 = one per process); use a global batch that is a multiple of the shard count.")

  def _shard_readers(self, process: int) -> list[tuple[int, int, int]]:
    return shards_for_rows(*self._rows[process], self.num_shards, self._global_batch)

  def _build(self) -> None:
    per = self._global_batch // self.num_shards
    me = jax.process_index()
    self._readers = []
    for shard, lo, hi in self._shard_readers(me):
      dataset = pipeline.make_dataset(
          self._config, self._split, shard_info=seqio.ShardInfo(shard, self.num_shards),
          batch_size=per)
      reader = pipeline.DataIterator(dataset, None, process_index=shard,
                                     process_count=self.num_shards)
      saver = min(p for p in self._rows if any(s == shard for s, _, _ in self._shard_readers(p)))
      self._readers.append((shard, reader, lo, hi, saver == me))
    partial = [s for s, _, lo, hi, _ in self._readers if hi - lo < per]
    if partial:
      logging.warning(
          "data: %d shards, %d processes: process %d reads shard(s) %s whole but keeps only part "
          "of their rows (other processes read the same shards). The stream is the right one; "
          "the preprocessing is repeated. config.data.num_shards a multiple of the process count "
          "avoids this in new runs.", self.num_shards, len(self._rows), me, partial)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    return global_arrays(self.next_local(), self._sharding, self._global_batch)

  def next_local(self) -> dict:
    """This process's rows of the next global batch, as numpy (what `next` lays out on devices)."""
    if self._readers is None:
      self._build()
    parts = []
    for shard, reader, lo, hi, _ in self._readers:
      try:
        parts.append((next(reader), lo, hi))
      except StopIteration:   # the streams are endless passes: this shard's part is empty
        raise ValueError(
            f"data shard {shard} of {self.num_shards} has no {self._split} examples: the split "
            f"holds fewer documents than there are shards (each reads every {self.num_shards}th; "
            "text files hold out every 20th document for validation). Use fewer shards "
            "(config.data.num_shards; 0 = one per process), more text, or, for a validation "
            "split this small, config.train.eval_steps=0.") from None
    return {k: np.concatenate([batch[k][lo:hi] for batch, lo, hi in parts]) for k in parts[0][0]}

  def save(self, directory) -> None:
    """Writes the position of the shards this process saves (every process calls this)."""
    if self._readers is None:
      self._build()
    for shard, reader, _, _, saves in self._readers:
      if saves:
        reader.save(directory)
        if shard == 0:
          with tf.io.gfile.GFile(os.path.join(os.fspath(directory), _META_FILE), "w") as f:
            json.dump({"num_shards": self.num_shards, "global_batch_size": self._global_batch,
                       "text_file_sizes": self._text_file_sizes()}, f)

  def _text_file_sizes(self) -> dict[str, int]:
    """{path: bytes} of the text files the stream reads: a resume must find them unchanged (the
    config names them, not their contents)."""
    return {p: tf.io.gfile.stat(p).length for p in tasks.text_files_read(self._config)}

  @staticmethod
  def saved_num_shards(directory) -> int | None:
    """The shard count of the position saved in `directory` (a checkpoint's data_iter), or None
    for a position of another iterator (text-to-text fine-tuning saves its own)."""
    meta = _read_meta(directory)
    return None if meta is None else meta["num_shards"]

  def restore(self, directory) -> None:
    """Moves to the saved position, keeping the checkpoint's shard count (any process count).

    Raises:
      FileNotFoundError: `directory` holds no shard position.
      ValueError: the global batch size differs from the checkpoint's, or config.data.num_shards
        names a shard count other than the checkpoint's.
    """
    saved = _read_meta(directory)
    if saved is None:
      raise FileNotFoundError(
          f"{_META_FILE} is missing, so the data position in {os.fspath(directory)!r} cannot be "
          "read; the checkpoint is incomplete or was not written by ssl_jax. Use a fresh "
          "--workdir.")
    if saved["global_batch_size"] != self._global_batch:
      raise ValueError(
          f"config.train.global_batch_size={self._global_batch}, but the data position in "
          f"{os.fspath(directory)!r} is for batches of {saved['global_batch_size']}; resume with "
          "that batch size, or use a fresh --workdir.")
    sizes, saved_sizes = self._text_file_sizes(), saved.get("text_file_sizes")
    if saved_sizes is not None and sizes != saved_sizes:   # recorded since 2026-11-30
      changed = sorted(p for p in sizes.keys() | saved_sizes.keys()
                       if sizes.get(p) != saved_sizes.get(p))
      raise ValueError(
          f"config.data.text_files {changed} changed since the data position in "
          f"{os.fspath(directory)!r} was saved (bytes then: "
          f"{[saved_sizes.get(p) for p in changed]}, now: {[sizes.get(p) for p in changed]}); the "
          "saved position belongs to the old documents. Restore the files, or use a fresh "
          "--workdir to train on the new ones.")
    configured = int(self._config.data.get("num_shards", 0))
    if configured and configured != saved["num_shards"]:
      raise ValueError(
          f"config.data.num_shards={configured}, but the checkpoint's data stream has "
          f"{saved['num_shards']} shards; set config.data.num_shards={saved['num_shards']} (or 0 "
          "to follow the checkpoint) to continue it, or use a fresh --workdir.")
    if saved["num_shards"] != self.num_shards:
      logging.warning(
          "data: the checkpoint's stream has %d shards and this run has %d processes; continuing "
          "that stream (each process reads the shards holding its rows).", saved["num_shards"],
          jax.process_count())
      self.num_shards = saved["num_shards"]
      self._check_divides(self.num_shards)
      self._readers = None
    if self._readers is None:
      self._build()
    for _, reader, _, _, _ in self._readers:
      reader.restore(directory)
