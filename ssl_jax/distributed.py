"""Joins this process to a multi-process JAX job: TPU pod hosts, GPU cluster nodes, local processes.

    distributed.initialize()                                    # TPU VM pod / SLURM / Open MPI: found
    distributed.initialize("10.0.0.1:8476", num_processes=4, process_id=i)   # anywhere else

Every process runs the same program; after `initialize`, `jax.devices()` lists every process's
devices and jitted steps over global arrays run as one SPMD program (XLA's collectives; gloo on
CPU). It must run before anything touches a device. With one process it does nothing, so the
same command runs on a laptop.

A dead peer ends the job instead of hanging it: every process sends heartbeats to the
coordinator (process 0), and when one stops for `heartbeat_timeout_s` the JAX runtime aborts all
the others with a message naming it ("The following tasks are unhealthy (stopped sending
heartbeats): 1"); if process 0 itself dies the others abort at once ("the leader task ...
died"). A process that fails with a Python exception exits at once without the graceful
shutdown barrier (see `fail_fast`), so its peers learn of it the same way.
"""
from __future__ import annotations

import contextlib
import glob
import importlib.util
import itertools
import json
import os
import socket
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from typing import Any

import jax
from absl import logging

HEARTBEAT_TIMEOUT_S = 60
INITIALIZATION_TIMEOUT_S = 300
SHUTDOWN_TIMEOUT_S = 120
BARRIER_TIMEOUT_S = 600
_barrier_ids = itertools.count()


def detect_cluster() -> str | None:
  """Names the multi-process launcher this process was started by, if JAX can configure itself
  from it: 'slurm' (an `srun` step of several tasks), 'ompi' (`mpirun` of several ranks),
  'tpu' (a Cloud TPU VM, where the TPU metadata says how many hosts the slice has); else None.
  """
  slurm_vars = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                "SLURM_LOCALID")  # what JAX's SLURM detection reads
  if all(v in os.environ for v in slurm_vars) and _slurm_step_tasks() > 1:
    return "slurm"
  if "OMPI_MCA_orte_hnp_uri" in os.environ and int(os.environ.get("OMPI_COMM_WORLD_SIZE",
                                                                  "1")) > 1:
    return "ompi"
  on_tpu_vm = importlib.util.find_spec("libtpu") is not None and bool(
      glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))
  if on_tpu_vm:
    return "tpu"
  return None


def _slurm_step_tasks() -> int:
  # SLURM_NTASKS counts the allocation's tasks; inside the batch script itself (no `srun`) only
  # one of them runs, and waiting for the rest would hang until the initialization timeout.
  return int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1")))


def slurm_local_device_ids() -> list[int] | None:
  """The GPUs this `srun` task uses: all of the node's when it is the step's only task there
  (`srun --ntasks-per-node=1`), else None, JAX's default: GPU $SLURM_LOCALID alone, one task per
  GPU. JAX's default for a single task would leave it training on one GPU of the node's eight.
  $JAX_LOCAL_DEVICE_IDS, when set, wins (None here: JAX reads it)."""
  gpus = os.environ.get("SLURM_GPUS_ON_NODE")
  if "JAX_LOCAL_DEVICE_IDS" in os.environ or not gpus:
    return None
  # srun's tasks per node, in node order: "2(x3),1" is 2 on each of the first 3 nodes, then 1.
  tasks = []
  spec = os.environ.get("SLURM_STEP_TASKS_PER_NODE", os.environ.get("SLURM_TASKS_PER_NODE", ""))
  for part in spec.split(","):
    count, _, repeat = part.partition("(x")
    if count.isdigit():
      tasks += [int(count)] * int(repeat.rstrip(")") or 1)
  node = int(os.environ.get("SLURM_NODEID", "0"))
  if node >= len(tasks) or tasks[node] != 1:
    return None
  return list(range(int(gpus)))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *,
               heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
               initialization_timeout_s: int = INITIALIZATION_TIMEOUT_S,
               shutdown_timeout_s: int = SHUTDOWN_TIMEOUT_S, preemption: bool = True) -> bool:
  """Starts JAX's distributed runtime when this job may have several processes; returns whether
  it has (`jax.process_count() > 1`).

  Args:
    coordinator_address: 'host:port' of process 0, which serves the coordination service there.
      Give it with `num_processes` and `process_id`, on machines JAX cannot configure itself.
    num_processes: processes in the job; 1 means "single process" and skips auto-detection.
    process_id: this process's index in [0, num_processes).
    heartbeat_timeout_s: a process silent for this long counts as dead and the job aborts.
    initialization_timeout_s: how long to wait for every process to connect.
    shutdown_timeout_s: how long a finishing process waits for the others at exit.
    preemption: whether JAX's runtime takes SIGTERM as a preemption, for a training loop to save
      at a step all processes agree on (`checkpointing.preemption_guard`). Commands without one
      pass False: the runtime would swallow the SIGTERM and they would never stop.

  With none of the three set, a TPU VM, an `srun` step or an `mpirun` job is detected
  (`detect_cluster`) and JAX reads the coordinator, process count and id from it (under `srun`,
  a task alone on its node uses all the node's GPUs: `slurm_local_device_ids`); anything else is
  a single process.

  Raises:
    ValueError: only some of the three were given, or their values are inconsistent.
  """
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  jax.config.update("jax_enable_preemption_service", preemption)
  explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes,
              "process_id": process_id}
  kwargs = dict(heartbeat_timeout_seconds=heartbeat_timeout_s,
                initialization_timeout=initialization_timeout_s,
                shutdown_timeout_seconds=shutdown_timeout_s)
  if num_processes == 1:
    return False
  if any(v is not None for v in explicit.values()):
    missing = [f"--{k}" for k, v in explicit.items() if v is None]
    if missing:
      raise ValueError(
          f"multi-process flags are incomplete: {', '.join(missing)} missing (given: "
          f"{', '.join(f'--{k}={v}' for k, v in explicit.items() if v is not None)}). Pass all of "
          "--coordinator_address=HOST:PORT --num_processes=N --process_id=I, or none of them on "
          "a TPU VM or under srun/mpirun, where they are detected.")
    _check_explicit(coordinator_address, num_processes, process_id)
    _use_gloo_on_cpu()
    logging.info("joining a %d-process job as process %d (coordinator %s); waiting up to %d s for "
                 "all processes to connect (a wrong --coordinator_address or a missing process "
                 "ends in a DEADLINE_EXCEEDED abort then)", num_processes, process_id,
                 coordinator_address, initialization_timeout_s)
    if process_id == 0:
      _check_port_free(coordinator_address)
    jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)
    if jax.process_count() != num_processes:   # the coordinator's count wins, silently
      raise ValueError(
          f"--num_processes={num_processes}, but process 0 started a job of "
          f"{jax.process_count()} processes; give every process the same --num_processes.")
    return True
  cluster = detect_cluster()
  ranks = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
  if cluster is None and ranks > 1:
    # Open MPI >= 5 (PRRTE) sets no OMPI_MCA_orte_hnp_uri, which JAX's detection reads: every
    # rank would train alone, all writing one workdir.
    raise ValueError(
        f"this process is rank {os.environ.get('OMPI_COMM_WORLD_RANK', '?')} of an mpirun job of "
        f"{ranks} (OMPI_COMM_WORLD_SIZE={ranks}) that JAX cannot configure itself from (Open MPI "
        ">= 5); pass --coordinator_address=HOST:PORT (process 0's host) "
        f"--num_processes={ranks} --process_id=$OMPI_COMM_WORLD_RANK.")
  if cluster is None:
    return False
  if cluster == "slurm":
    kwargs["num_processes"] = _slurm_step_tasks()
    kwargs["local_device_ids"] = slurm_local_device_ids()
  _use_gloo_on_cpu()
  logging.info("multi-process environment detected (%s); initializing jax.distributed", cluster)
  jax.distributed.initialize(**kwargs)
  logging.info("joined a %d-process job as process %d", jax.process_count(),
               jax.process_index())
  return jax.process_count() > 1


def barrier(name: str, timeout_s: int = BARRIER_TIMEOUT_S) -> None:
  """Waits until every process of the job has called `barrier` (as its n-th call); a no-op in a
  single-process run.

  It goes through the coordination service, not a collective: on CPU, gloo connects the
  processes of a device group at that group's first collective and fails when a peer is more
  than 30 s late ("Gloo context initialization failed: DEADLINE_EXCEEDED: GetKeyValue() timed
  out", a timeout JAX does not expose), which processes that compile and build their input
  pipelines at different speeds easily are. A dead peer still ends the wait via the heartbeat.
  """
  if not jax.distributed.is_initialized() or jax.process_count() == 1:
    return
  # JAX 0.10 has no public barrier; its own array serialization waits on this client the same way.
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  start = time.monotonic()
  jax_distributed.global_state.client.wait_at_barrier(
      f"ssl_jax/{next(_barrier_ids)}/{name}", timeout_in_ms=timeout_s * 1000)
  logging.info("%s: waited %.1f s for the other processes", name, time.monotonic() - start)


def check_same_everywhere(settings: Mapping[str, Any], timeout_s: int = BARRIER_TIMEOUT_S) -> None:
  """Raises in every process if `settings` (JSON-able: the command, its flags, the whole config)
  are not the same in all processes; a no-op in a single-process run. Each process compiles its
  own copy of the step from its own config, so a host with another learning rate (a config file
  edited on one host, a per-host flag) would silently train parameter replicas that disagree.
  The values go through the coordination service, as `barrier`'s wait."""
  if not jax.distributed.is_initialized() or jax.process_count() == 1:
    return
  values = [_flat(json.loads(v))
            for v in all_gather_text("settings", json.dumps(settings, sort_keys=True), timeout_s)]
  for i, other in enumerate(values[1:], 1):
    differ = sorted(k for k in values[0].keys() | other.keys() if values[0].get(k) != other.get(k))
    if differ:
      raise ValueError(
          f"process {i} runs with other settings than process 0: "
          + "; ".join(f"{k}={other.get(k)!r} (process 0: {values[0].get(k)!r})" for k in differ[:5])
          + ". Every process of a job runs the same command with the same config (a config file "
          "edited on one host? a flag given to some processes only?); make them equal and restart.")


def all_gather_text(name: str, text: str, timeout_s: int = BARRIER_TIMEOUT_S) -> list[str]:
  """Every process's `text`, in process order (each process calls it, as its n-th call); [text]
  in a single-process run. Through the coordination service, as `barrier`'s wait; every process
  has read every value when it returns, so one that raises on them next cannot leave another a
  lost connection (a coordinator exiting first) instead of the message."""
  if not jax.distributed.is_initialized() or jax.process_count() == 1:
    return [text]
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  client = jax_distributed.global_state.client
  key = f"ssl_jax/{next(_barrier_ids)}/{name}"
  client.key_value_set(f"{key}/{jax.process_index()}", text)
  values = [client.blocking_key_value_get(f"{key}/{i}", timeout_s * 1000)
            for i in range(jax.process_count())]
  client.wait_at_barrier(f"{key}/read", timeout_in_ms=timeout_s * 1000)
  return values


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  if not isinstance(tree, dict) or not tree:
    return {prefix: tree}
  out = {}
  for name, sub in tree.items():
    out.update(_flat(sub, f"{prefix}.{name}" if prefix else name))
  return out


def _check_explicit(coordinator_address: str, num_processes: int, process_id: int) -> None:
  host, _, port = coordinator_address.rpartition(":")
  if not host or not port.isdigit():
    raise ValueError(
        f"--coordinator_address={coordinator_address!r} is not HOST:PORT; give process 0's "
        "address and a free port, e.g. --coordinator_address=10.0.0.1:8476.")
  try:
    socket.getaddrinfo(host.strip("[]"), int(port))
  except socket.gaierror as e:
    if e.errno == socket.EAI_AGAIN:   # a DNS hiccup, not a wrong name: initialize retries
      logging.warning("--coordinator_address=%r: resolving %r failed for now (%s)",
                      coordinator_address, host, e.strerror)
    else:
      raise ValueError(
          f"--coordinator_address={coordinator_address!r}: host {host!r} does not resolve "
          f"({e.strerror}); give process 0's hostname or IP address.") from e
  if num_processes < 1:
    raise ValueError(f"--num_processes={num_processes} must be at least 1.")
  if not 0 <= process_id < num_processes:
    raise ValueError(
        f"--process_id={process_id} is not in [0, --num_processes={num_processes}); number the "
        f"processes 0..{num_processes - 1}, one id each.")


def _check_port_free(coordinator_address: str) -> None:
  """Raises if process 0 cannot listen on the coordinator's port: the runtime's server then
  failed with "Failed to start RPC server", or crashed the process (SIGSEGV), naming neither."""
  port = int(coordinator_address.rpartition(":")[2])
  family, host = (socket.AF_INET6, "::") if socket.has_ipv6 else (socket.AF_INET, "")
  try:
    probe = socket.socket(family, socket.SOCK_STREAM)
  except OSError:   # IPv6 compiled in but not available
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    host = ""
  with probe:
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the runtime's server
    try:
      probe.bind((host, port))
    except OSError as e:
      raise ValueError(
          f"--coordinator_address={coordinator_address!r}: process 0 cannot listen on port {port} "
          f"({e.strerror}); is another job using it? Pick a free port (launch/local.py: --port; "
          "launch/slurm_gpu.sbatch: SSL_JAX_COORDINATOR_PORT).") from e


def _use_gloo_on_cpu() -> None:
  # CPU devices of different processes talk through gloo (TCP); without a CPU collectives
  # implementation a cross-process computation on CPU fails. GPU/TPU backends ignore this.
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


@contextlib.contextmanager
def fail_fast() -> Iterator[None]:
  """In a multi-process job, a Python exception ends this process at once (exit status 1).

  A normal exit waits at a shutdown barrier for every other process -- which never arrives while
  they are blocked in a collective that needs this one -- so the job would stall for the whole
  shutdown timeout. Exiting without it lets the heartbeat (or, for process 0, the closed
  coordinator) end the others within `heartbeat_timeout_s`. Single-process runs are unchanged.
  """
  try:
    yield
  except BaseException as e:  # pylint: disable=broad-except
    if not jax.distributed.is_initialized() or (isinstance(e, SystemExit) and not e.code):
      raise
    print(f"ssl_jax: process {jax.process_index()} of {jax.process_count()} failed; exiting "
          "now so that the other processes stop too:", file=sys.stderr)
    traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access
