"""A training run's workdir: checked before anything compiles, and locked while a run trains.

    workdir.check(path)              # creatable, writable, no other command's config.json, and
                                     # one directory for every process of a multi-process job
    with workdir.lock(path):         # a second `ssl-jax train` on the workdir is refused
      ...
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid

import jax
import tensorflow as tf
from absl import logging

from ssl_jax import checkpointing
from ssl_jax import distributed


def check(workdir: str) -> None:
  """Raises before any compile if `workdir` cannot be created or written, or holds a config.json
  that is not a training run's (a Hugging Face model directory's, an in-context evaluation's):
  training would replace it."""
  existing = checkpointing.workdir_config(workdir)
  if existing is not None and ("objective" not in existing or "in_context" in existing):
    raise ValueError(
        f"--workdir={workdir!r} holds a config.json that is not an ssl_jax training run's (a "
        "Hugging Face model's, or another command's output); training writes its own "
        "config.json, checkpoints and metrics.jsonl there and would replace it. Pass a new "
        "--workdir (to start from that model, name it in --init).")
  try:   # tf.io.gfile, as for the workdir's other files: local paths and gs:// alike
    tf.io.gfile.makedirs(workdir)
    probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
    with tf.io.gfile.GFile(probe, "w") as f:
      f.write("ok")
    tf.io.gfile.remove(probe)
  except (OSError, tf.errors.OpError) as e:
    reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
    raise ValueError(
        f"--workdir={workdir!r} is not writable ({reason}); pass a directory you can write "
        "to (checkpoints, metrics.jsonl and config.json go there).") from e
  _check_shared(workdir)


def _check_shared(workdir: str) -> None:
  """Raises in every process of a multi-process job whose processes do not all see one `workdir`
  (a host-local path on each host): each writes its checkpoint shards and data position there,
  so process 0 would commit checkpoints that hold its own parts alone, found only on resume."""
  if jax.process_count() == 1:
    return
  path = os.path.join(workdir, ".shared_check")
  token = ""
  if jax.process_index() == 0:
    token = uuid.uuid4().hex
    with tf.io.gfile.GFile(path, "w") as f:
      f.write(token)
  token = distributed.all_gather_text("workdir_token", token)[0]
  try:
    with tf.io.gfile.GFile(path) as f:
      seen = f.read() == token
  except (OSError, tf.errors.OpError):
    seen = False
  blind = [i for i, ok in enumerate(distributed.all_gather_text("workdir_seen", str(int(seen))))
           if ok != "1"]
  if jax.process_index() == 0:
    tf.io.gfile.remove(path)
  if blind:
    raise ValueError(
        f"--workdir={workdir!r} is not one directory shared by the job's processes: process(es) "
        f"{blind} do not see the file process 0 wrote there (a path on each host's local disk?). "
        "Every process writes its part of each checkpoint into the workdir, so process 0 would "
        "commit checkpoints that hold its part alone; pass a directory on storage every host "
        "mounts (gs://bucket/run, NFS).")


LOCK_FILE = "train.lock"
LOCK_REFRESH_S = 30   # how often the holder rewrites its lock
LOCK_STALE_S = 120    # a lock not rewritten for this long has lost its holder
LOCK_SETTLE_S = 1.0   # off a local disk, how long a new lock is left before it is read back


@contextlib.contextmanager
def lock(workdir: str, stale_s: float = LOCK_STALE_S):
  """Holds `<workdir>/train.lock` while a run trains there. A second `ssl-jax train` on the workdir
  (a job submitted twice, a requeue while the old job still runs) deleted the first's checkpoint in
  progress (Orbax clears unfinished saves as it opens a workdir) and cut its metrics.jsonl; it is
  refused, in every process, before anything is opened. Process 0 creates the lock (host, pid;
  of two runs started at once, one gets it: `_create_lock`) and rewrites it every
  LOCK_REFRESH_S; a lock whose process has ended (on this host) is taken over at once, one of
  another host once it has not been rewritten for `stale_s` (waiting that long)."""
  path = os.path.join(workdir, LOCK_FILE)
  content = _lock_content()
  problem = _take_lock(workdir, stale_s, content) if jax.process_index() == 0 else ""
  problem = distributed.all_gather_text("workdir_lock", problem)[0]
  if problem:
    raise ValueError(problem)
  stop = threading.Event()
  refresher = None
  if jax.process_index() == 0:
    refresher = threading.Thread(target=_refresh_lock, args=(path, content, stop), daemon=True,
                                 name="ssl_jax-workdir-lock")
    refresher.start()
  try:
    yield
  finally:
    if refresher is not None:
      stop.set()
      refresher.join()
      try:
        tf.io.gfile.remove(path)
      except tf.errors.NotFoundError:
        pass


def _lock_holder(path: str) -> tuple[dict, float] | None:
  """(the lock's JSON, seconds since it was last written), or None when there is no lock."""
  try:
    age = time.time() - tf.io.gfile.stat(path).mtime_nsec / 1e9   # (whole seconds, locally)
    with tf.io.gfile.GFile(path) as f:
      holder = json.loads(f.read() or "{}")
  except tf.errors.NotFoundError:
    return None
  except ValueError:   # caught mid-rewrite
    holder = {}
  return holder, age


def _take_lock(workdir: str, stale_s: float, content: str) -> str:
  """Creates the lock (`content`); returns '' or, when another live run holds it, the error to
  raise."""
  path = os.path.join(workdir, LOCK_FILE)
  host = socket.gethostname()
  deadline = time.monotonic() + stale_s + LOCK_REFRESH_S
  waited = False
  while True:
    found = _lock_holder(path)
    if found is None:
      if _create_lock(path, content):
        return ""
      continue   # another run created it between the look and the create: look again
    holder, age = found
    ours = holder.get("host") == host
    if age > stale_s or (ours and not _process_alive(holder.get("pid"))):
      logging.warning("%s: taking over the lock of a run that is gone (host %s, process %s, last "
                      "written %.0f s ago).", path, holder.get("host"), holder.get("pid"), age)
      try:
        tf.io.gfile.remove(path)   # then created as above: of two runs taking it over, one wins
      except tf.errors.NotFoundError:
        pass
      continue
    if ours or time.monotonic() > deadline:
      return (f"--workdir={workdir!r} is in use by another `ssl-jax train` (host "
              f"{holder.get('host')}, process {holder.get('pid')}; its lock {path} was written "
              f"{age:.0f} s ago): two runs in one workdir delete each other's checkpoints. Stop "
              "that run, or pass another --workdir (a run that is gone leaves a lock that is "
              f"taken over {stale_s:.0f} s after it was last written).")
    if not waited:
      logging.warning("%s is held by host %s, process %s (written %.0f s ago): waiting up to %.0f "
                      "s for it to go stale (a run requeued on another host while the old one "
                      "ends).", path, holder.get("host"), holder.get("pid"), age, stale_s)
    waited = True
    time.sleep(min(5.0, stale_s / 4))


def _lock_content() -> str:
  """This run's lock: host, pid and a token that tells it from another run's."""
  return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex})


def _create_lock(path: str, content: str) -> bool:
  """Creates the lock unless the file exists; False when another run's create came first.

  A local file is created with O_EXCL, atomically. Other filesystems (gs://...) have no exclusive
  create through tf.io.gfile: the lock is written, then read back LOCK_SETTLE_S later, and of two
  runs that both found no lock, the one whose write came last holds it."""
  if "://" not in path:
    try:
      fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(content)
    return True
  _write_lock(path, content)
  time.sleep(LOCK_SETTLE_S)
  try:
    with tf.io.gfile.GFile(path) as f:
      return f.read() == content
  except tf.errors.NotFoundError:
    return False


def _write_lock(path: str, content: str) -> None:
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(content)


def _refresh_lock(path: str, content: str, stop: threading.Event) -> None:
  while not stop.wait(LOCK_REFRESH_S):
    try:
      _write_lock(path, content)
    except (OSError, tf.errors.OpError) as e:   # a storage hiccup: the next rewrite may succeed
      logging.warning("could not rewrite %s: %s", path, e)


def _process_alive(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except (TypeError, ValueError, ProcessLookupError):
    return False
  except PermissionError:   # alive, another user's
    return True
  return True
