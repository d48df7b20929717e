#!/usr/bin/env python3
"""Runs one `ssl-jax` command as N local processes with M simulated CPU devices each.

    python launch/local.py --num_processes=2 --devices_per_process=4 -- \\
        ssl-jax train --config configs/bert.py:tiny --workdir /tmp/bert_2x4

It is a real multi-process JAX job on one machine, for tests and laptops: every process gets
`XLA_FLAGS=--xla_force_host_platform_device_count=M`, CPU collectives over gloo, and the flags
`--coordinator_address=127.0.0.1:<free port> --num_processes=N --process_id=<i>` appended to the
command. A shell wrapper must pass them on: `-- bash -c 'source venv/bin/activate; exec ssl-jax
train ... "$@"' ssl-jax` (without `"$@"` they are bash's own arguments, and every process runs
alone as process 0 of 1). Each process's output is streamed with a `[p<i>]` prefix (and, with
--log_dir, appended to `<log_dir>/process_<i>.log`, which go on when the console goes away, as
after `local.py ... | head`). If any process exits non-zero the others are stopped (SIGTERM, then
SIGKILL after --kill_after_s) and the launcher exits non-zero, naming the process that failed.
Ctrl-C (SIGINT/SIGTERM/SIGHUP to the launcher) is passed on as SIGTERM (and a launcher killed
outright has the kernel send it: Linux's parent-death signal), which the JAX runtime treats as a
preemption: the trainer saves a checkpoint at a step all processes agree on and stops (the
launcher then exits with 128 + the signal number; a second Ctrl-C kills the processes).
"""
import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

_PREFIX = "[local]"
_PR_SET_PDEATHSIG = 1


def _end_with_us() -> None:
  """In a worker before it runs: SIGTERM it (a preemption: checkpoint and stop) when the launcher
  dies, even by SIGKILL; in their own sessions, the workers would otherwise train on unseen.
  Linux only (prctl); elsewhere a no-op."""
  if sys.platform.startswith("linux"):
    import ctypes  # pylint: disable=g-import-not-at-top
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(devices_per_process: int, base=None) -> dict:
  """The environment of every process: M CPU devices, CPU backend, gloo collectives."""
  env = dict(os.environ if base is None else base)
  xla_flags = [f for f in env.get("XLA_FLAGS", "").split()
               if not f.startswith("--xla_force_host_platform_device_count=")]
  env["XLA_FLAGS"] = " ".join(
      xla_flags + [f"--xla_force_host_platform_device_count={devices_per_process}"])
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
  env["PYTHONUNBUFFERED"] = "1"  # lines arrive as they are printed
  return env


def process_command(command, coordinator_address: str, num_processes: int,
                    process_id: int) -> list:
  """`command` with the multi-process flags of `ssl-jax` appended."""
  return list(command) + [f"--coordinator_address={coordinator_address}",
                          f"--num_processes={num_processes}", f"--process_id={process_id}"]


def describe_exit(returncode: int) -> str:
  if returncode < 0:
    try:
      return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:
      return f"was killed by signal {-returncode}"
  return f"exited with status {returncode}"


class Job:
  """N child processes started together; `wait()` returns the launcher's exit status."""

  def __init__(self, command, num_processes: int, devices_per_process: int, *,
               port: int = 0, log_dir: str | None = None, kill_after_s: float = 10.0,
               out=None):
    self.num_processes = num_processes
    self.kill_after_s = kill_after_s
    self._out = out or sys.stdout
    self._lock = threading.RLock()   # the signal handler's `say` may interrupt the main one's
    self._threads = []
    address = f"127.0.0.1:{port or free_port()}"
    env = process_env(devices_per_process)
    if log_dir:
      os.makedirs(log_dir, exist_ok=True)
    self.say(f"{num_processes} processes x {devices_per_process} CPU devices, coordinator "
              f"{address}: {' '.join(command)}")
    self.procs = []
    for i in range(num_processes):   # all started before any output thread (see _end_with_us)
      proc = subprocess.Popen(
          process_command(command, address, num_processes, i), env=env,
          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
          start_new_session=True,  # the launcher, not the terminal, decides when they stop
          preexec_fn=_end_with_us)
      self.procs.append(proc)
      self.say(f"started process {i} (pid {proc.pid})")
    for i, proc in enumerate(self.procs):
      log = None
      if log_dir:   # appended: a resumed run keeps the logs of the run it resumes
        path = os.path.join(log_dir, f"process_{i}.log")
        log = open(path, "a")  # pylint: disable=consider-using-with
        log.write(f"{_PREFIX} {time.strftime('%Y-%m-%d %H:%M:%S')} process {i} of "
                  f"{num_processes}: {' '.join(command)}\n")
      thread = threading.Thread(target=self._stream, args=(i, proc, log), daemon=True)
      thread.start()
      self._threads.append(thread)

  def say(self, message: str) -> None:
    self._print(f"{_PREFIX} {message}")

  def _print(self, line: str) -> None:
    """Writes `line` to the console until that fails (its reader went: `local.py ... | head`);
    from then on the output goes only to the log files, as the pipes must still be drained or
    the processes block on their next write."""
    with self._lock:
      if self._out is None:
        return
      try:
        print(line, file=self._out, flush=True)
      except OSError:
        self._out = None

  def _stream(self, i: int, proc, log) -> None:
    for raw in iter(proc.stdout.readline, b""):
      line = raw.decode("utf-8", "replace").rstrip("\n")
      self._print(f"[p{i}] {line}")
      if log:
        log.write(line + "\n")
        log.flush()
    if log:
      log.close()

  def signal_all(self, sig: int) -> None:
    """Signals each running process's group (it leads its own), so that a worker under a
    wrapper (`bash -c 'source venv/bin/activate; exec ssl-jax ... "$@"' ssl-jax`) gets it too."""
    for proc in self.procs:
      if proc.poll() is None:
        try:
          os.killpg(proc.pid, sig)
        except ProcessLookupError:
          pass

  def _stop_others(self) -> None:
    self.signal_all(signal.SIGTERM)
    deadline = time.monotonic() + self.kill_after_s
    while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
      time.sleep(0.1)
    if any(p.poll() is None for p in self.procs):
      self.say(f"processes still running after {self.kill_after_s:g} s; sending SIGKILL")
      self.signal_all(signal.SIGKILL)
    for proc in self.procs:
      proc.wait()

  def wait(self) -> int:
    """Waits for every process; on the first failure stops the rest. Returns 0 or non-zero."""
    while True:
      failed = [(i, p) for i, p in enumerate(self.procs) if p.poll() not in (None, 0)]
      if failed:
        i, proc = failed[0]
        self.say(f"process {i} (pid {proc.pid}) {describe_exit(proc.returncode)}; stopping "
                  "the other processes")
        self._stop_others()
        self._join_streams()
        self.say(f"job failed: process {i} {describe_exit(proc.returncode)}")
        return proc.returncode if proc.returncode > 0 else 1
      if all(p.poll() == 0 for p in self.procs):
        self._join_streams()
        self.say(f"all {self.num_processes} processes finished")
        return 0
      time.sleep(0.1)

  def _join_streams(self) -> None:
    for thread in self._threads:
      thread.join(timeout=5)


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog="launch/local.py", description=__doc__.split("\n\n")[0],
      epilog="Everything after -- is the command every process runs (e.g. `ssl-jax train ...` "
      "or `python -m ssl_jax.main train ...`).",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_processes", "-n", type=int, default=2,
                      help="processes to start (default 2)")
  parser.add_argument("--devices_per_process", "-m", type=int, default=4,
                      help="simulated CPU devices per process (default 4)")
  parser.add_argument("--port", type=int, default=0,
                      help="coordinator port on 127.0.0.1 (default: a free one)")
  parser.add_argument("--log_dir", default=None,
                      help="also write each process's output to LOG_DIR/process_<i>.log")
  parser.add_argument("--kill_after_s", type=float, default=10.0,
                      help="after a failure, seconds between SIGTERM and SIGKILL to the others")
  parser.add_argument("command", nargs=argparse.REMAINDER,
                      help="-- then the command each process runs")
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the command to run after --, e.g. -- ssl-jax train --config ...")
  if args.num_processes < 1 or args.devices_per_process < 1:
    parser.error("--num_processes and --devices_per_process must be at least 1")
  if shutil.which(command[0]) is None:
    parser.error(f"{command[0]!r} is not a command on PATH (or an executable file): is the "
                 "package installed in this environment (`pip install -e .` gives ssl-jax)?")
  args.command = command
  return args


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  job = Job(args.command, args.num_processes, args.devices_per_process, port=args.port,
            log_dir=args.log_dir, kill_after_s=args.kill_after_s)
  interrupted = []

  def forward(signum, _):
    if interrupted:  # a second Ctrl-C: no more waiting
      job.signal_all(signal.SIGKILL)
    else:   # the signal first: nothing the message's write does can keep it from them
      job.signal_all(signal.SIGTERM)
      job.say(f"got {signal.Signals(signum).name}; passed SIGTERM on (checkpoint and stop)")
    interrupted.append(signum)

  signal.signal(signal.SIGINT, forward)
  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGHUP, forward)   # the terminal closed
  returncode = job.wait()
  if interrupted and returncode == 0:  # stopped early on purpose: saved, but not finished
    job.say("stopped before the end; run the same command again to resume")
    return 128 + interrupted[0]
  return returncode


if __name__ == "__main__":
  sys.exit(main())
