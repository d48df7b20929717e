#!/usr/bin/env python3
"""Creates a Cloud TPU VM pod slice, runs one `ssl-jax` command on every host, streams its logs,
deletes it -- all through `gcloud compute tpus tpu-vm ...`.

    python launch/tpu_pod.py create --name=bert --zone=us-central2-b --accelerator_type=v4-32
    python launch/tpu_pod.py setup  --name=bert --zone=us-central2-b     # copy repo, pip install
    python launch/tpu_pod.py run    --name=bert --zone=us-central2-b -- \\
        ssl-jax train --config configs/bert.py:base --workdir gs://BUCKET/bert_base \\
        --config.data.vocab.path=gs://BUCKET/vocab.txt
    python launch/tpu_pod.py logs   --name=bert --zone=us-central2-b     # worker 0, follows
    python launch/tpu_pod.py stop   --name=bert --zone=us-central2-b     # SIGTERM: save and stop
    python launch/tpu_pod.py delete --name=bert --zone=us-central2-b

Every host runs the same command (`--worker=all`); `ssl-jax` finds the other hosts itself
(jax.distributed on a TPU VM needs no flags). The workdir must be one every host can write
(a gs:// bucket). `run` starts the job detached (nohup), writing each host's output to
~/ssl_jax_logs/<name>.log, so a dropped SSH connection does not stop training; `--attach` runs
it in the foreground instead. Re-running `run` after a preemption resumes from the last
checkpoint; while the job still runs on a host, `run` refuses to start a second one there (`stop`
it first). `setup` needs Python 3.11+ on the hosts: an image's python3, or a virtualenv's
(--python). Every command accepts --dry_run, which prints the exact gcloud commands instead.
"""
import argparse
import os
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOG_DIR = "~/ssl_jax_logs"


def _base(args, verb: str, *operands: str) -> list:
  """`gcloud compute tpus tpu-vm VERB OPERANDS --zone ... [--project ...]`; operands default to
  the TPU name."""
  command = ["gcloud", "compute", "tpus", "tpu-vm", verb, *(operands or (args.name,)),
             f"--zone={args.zone}"]
  if args.project:
    command.append(f"--project={args.project}")
  return command


def _ssh(args, remote: str, worker: str = "all") -> list:
  return _base(args, "ssh") + [f"--worker={worker}", f"--command={remote}"]


def _log_file(args) -> str:
  return f"{LOG_DIR}/{args.name}.log"


# The TPU VM software version for JAX, by accelerator generation
# (cloud.google.com/tpu/docs/runtimes): gcloud refuses a v5e or v6e slice with the v4 image.
RUNTIMES = {"v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base", "v4": "tpu-ubuntu2204-base",
            "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}


def runtime_version(accelerator_type: str) -> str:
  """The software version for `accelerator_type` ('v5litepod-16' -> 'v2-alpha-tpuv5-lite')."""
  generation = accelerator_type.rpartition("-")[0]
  if generation not in RUNTIMES:
    raise ValueError(f"--accelerator_type={accelerator_type!r}: no default --version for "
                     f"{generation or accelerator_type!r} (known: {', '.join(RUNTIMES)}); pass "
                     "--version=<TPU software version> (cloud.google.com/tpu/docs/runtimes).")
  return RUNTIMES[generation]


def create_commands(args) -> list:
  version = args.version or runtime_version(args.accelerator_type)
  command = _base(args, "create") + [f"--accelerator-type={args.accelerator_type}",
                                     f"--version={version}"]
  if args.spot:
    command.append("--spot")
  return [command]


MIN_PYTHON = (3, 11)   # setup.py's python_requires (JAX >= 0.7 needs it)


def setup_commands(args) -> list:
  # remote_dir and python stay unquoted so that the remote shell expands their `~`.
  python = args.python
  need = ".".join(map(str, MIN_PYTHON))
  # An image's python3 may be older (Ubuntu 22.04's is 3.10); pip would refuse the package only
  # after the copy and JAX's install, in a message that names no fix.
  check_python = (
      f"{python} -c 'import sys; sys.exit(sys.version_info < {MIN_PYTHON})' || {{ echo "
      f"\"tpu_pod.py setup: $(hostname): --python={python} is $({python} -V 2>&1); ssl_jax needs "
      f"Python >= {need}. Create the slice with a --version whose python3 is {need}+, or make a "
      f"Python {need}+ virtualenv on every host (e.g. ~/venv) and pass its python: setup "
      f"--python=~/venv/bin/python, then run -- $HOME/venv/bin/ssl-jax train ...\" >&2; exit 1; }}")
  install = (f"{python} -m pip install -U {shlex.quote(args.jax_spec)} -f "
             "https://storage.googleapis.com/jax-releases/libtpu_releases.html && "
             f"{python} -m pip install -e {args.remote_dir}")
  return [
      _ssh(args, f"{check_python} && mkdir -p {args.remote_dir}"),
      _base(args, "scp", os.path.join(args.repo_dir, "."), f"{args.name}:{args.remote_dir}")
      + ["--worker=all", "--recurse"],
      _ssh(args, install),
  ]


def _pid_file(args) -> str:
  return f"{LOG_DIR}/{args.name}.pid"


def run_commands(args) -> list:
  # `env`: a leading VAR=value (how XLA_FLAGS and the like reach the hosts, as ssh passes no
  # environment) stays an assignment after nohup and when quoted for its spaces; env execs the
  # command, so nohup's pid stays the job's.
  # pip installs `ssl-jax` into ~/.local/bin for a user without root, which a non-login ssh
  # command's PATH lacks.
  user_command = ('env "PATH=$HOME/.local/bin:$PATH" '
                  + " ".join(shlex.quote(c) for c in args.command))
  # A second job in the same workdir would train alongside the first, and its pid would replace
  # the first's in the pid file, out of `stop`'s reach.
  pid_file = _pid_file(args)
  stop = f"launch/tpu_pod.py stop --name={args.name} --zone={args.zone}" + (
      f" --project={args.project}" if args.project else "")
  refuse_twice = (
      f"if [ -f {pid_file} ] && kill -0 \"$(cat {pid_file})\" 2>/dev/null; then echo "
      f"\"tpu_pod.py run: $(hostname): job {args.name} is still running (pid $(cat {pid_file}), "
      f"from {pid_file}); stop it first: {stop}\" >&2; exit 1; fi")
  if args.attach:
    return [_ssh(args, f"{refuse_twice}; cd {args.remote_dir} && {user_command}")]
  # nohup + a pid file: the job outlives the SSH session, and `stop` can signal exactly it. The
  # braces put only nohup in the background (`a && b & c` would background all of `a && b`), so
  # `$!` is nohup's pid, which becomes the job's when nohup execs it.
  remote = (f"{refuse_twice}; mkdir -p {LOG_DIR} && cd {args.remote_dir} && "
            f"{{ nohup {user_command} >> {_log_file(args)} 2>&1 < /dev/null & "
            f"echo $! > {pid_file}; }}")
  return [_ssh(args, remote)]


def logs_commands(args) -> list:
  follow = " -F" if args.follow else ""
  return [_ssh(args, f"tail -n {args.lines}{follow} {_log_file(args)}", worker=args.worker)]


def stop_commands(args) -> list:
  # SIGTERM reaches JAX's preemption handler: every host saves at the same step and exits.
  return [_ssh(args, f"kill -TERM $(cat {_pid_file(args)})")]


def delete_commands(args) -> list:
  return [_base(args, "delete") + ["--quiet"]]


ACTIONS = {
    "create": (create_commands, "create the TPU VM slice"),
    "setup": (setup_commands, "copy this repository to every host and pip install it"),
    "run": (run_commands, "run the command after -- on every host (--worker=all)"),
    "logs": (logs_commands, "stream a host's log of the running job"),
    "stop": (stop_commands, "SIGTERM the job on every host: checkpoint and stop"),
    "delete": (delete_commands, "delete the TPU VM slice"),
}


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog="launch/tpu_pod.py", description=__doc__.split("\n\n")[0],
      epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
  for action, (_, help_text) in ACTIONS.items():
    p = sub.add_parser(action, help=help_text, description=help_text)
    p.add_argument("--name", required=True, help="TPU VM name")
    p.add_argument("--zone", required=True, help="e.g. us-central2-b")
    p.add_argument("--project", default=None, help="GCP project (default: gcloud's)")
    p.add_argument("--dry_run", action="store_true",
                   help="print the gcloud commands instead of running them")
    if action == "create":
      p.add_argument("--accelerator_type", default="v4-32", help="e.g. v4-32, v5litepod-64")
      p.add_argument("--version", default=None,
                     help="TPU software version (default: the one for the accelerator, e.g. "
                     "tpu-ubuntu2204-base for v4, v2-alpha-tpuv5-lite for v5litepod)")
      p.add_argument("--spot", action="store_true", help="a Spot (preemptible) slice")
    if action in ("setup", "run"):
      p.add_argument("--remote_dir", default="~/ssl_jax", help="the repository on each host")
    if action == "setup":
      p.add_argument("--repo_dir", default=REPO, help="local repository to copy")
      p.add_argument("--python", default="python3",
                     help="the Python on each host to install into (default python3; ssl_jax "
                     "needs 3.11+), e.g. ~/venv/bin/python of a virtualenv")
      p.add_argument("--jax_spec", default="jax[tpu]", help="the JAX requirement to install")
    if action == "run":
      p.add_argument("--attach", action="store_true",
                     help="run in the foreground, streaming every host's output")
      p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    if action == "logs":
      p.add_argument("--worker", default="0", help="host index, or 'all'")
      p.add_argument("--lines", type=int, default=100, help="lines of history to show")
      p.add_argument("--no_follow", dest="follow", action="store_false",
                     help="print and exit instead of following the log")
  args = parser.parse_args(argv)
  if args.action == "create" and not args.version:
    try:
      runtime_version(args.accelerator_type)
    except ValueError as e:
      parser.error(str(e))
  if args.action == "run":
    args.command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not args.command:
      parser.error("run: give the command after --, e.g. -- ssl-jax train --config ...")
  return args


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  commands = ACTIONS[args.action][0](args)
  for command in commands:
    if args.dry_run:
      print(shlex.join(command))
      continue
    returncode = subprocess.call(command)
    if returncode:
      print(f"tpu_pod.py: `{shlex.join(command)}` exited with status {returncode}",
            file=sys.stderr)
      return returncode
  return 0


if __name__ == "__main__":
  sys.exit(main())
