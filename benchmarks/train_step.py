"""Train-step throughput per objective: ssl_jax beside `transformers` (PyTorch), MFU, compile time.

  python benchmarks/train_step.py --compare-transformers                # 4 objectives, size small
  python benchmarks/train_step.py --compare-transformers --size=tiny    # the configs' tiny models
  python benchmarks/train_step.py --objectives=mlm --steps=10           # ssl_jax alone
  python benchmarks/train_step.py --objectives=mlm --model='{"dtype": "bfloat16"}'
  python benchmarks/train_step.py --compile-scaling                     # scan_layers: 2 vs 24 layers
  python benchmarks/train_step.py --objectives=mlm --profile=/tmp/prof  # where the step's time goes
  python benchmarks/train_step.py --compare-compiler-options='[{}]'     # XLA options vs ssl_jax's
  python benchmarks/train_step.py --compare-autodiff-dense              # dense backward vs autodiff's

Prints one JSON line per objective (and per model with --compile-scaling). How it counts:
- A step is forward + backward + optimizer update (ssl_jax: the AOT-compiled, state-donating train
  step of `ssl_jax.trainer`; transformers: `loss.backward()`, `clip_grad_norm_`, `AdamW.step()`), on
  the same model shapes (the HF model is built from our config with `interop.hf.hf_config_from`), the
  same batch and sequence length. HF is run as users run it: full-sequence logits, its default
  attention (SDPA); GPT's loss is cross-entropy of its logits against our next-token targets
  (`GPT2LMHeadModel`'s `labels` would shift them once more). BERT's step also trains the NSP head
  (the tiny config's sentence task; `BertForMaskedLM` has none: ~0.1% of the FLOPs); T5's
  encoder and decoder share one input embedding on both sides. ssl_jax reads real batches from its
  input pipeline; HF gets the same batches. On a GPU both compute float32 matmuls in TF32 (XLA's
  default; PyTorch is set to it), `matmul_precision` in each row. With `model.dtype='bfloat16'`
  HF's forward pass runs under `torch.autocast(bfloat16)` (float32 weights, as ssl_jax's).
- The two frameworks and a square matmul in the step's compute dtype (`--matmul_size`, XLA;
  `matmul_dtype` in each row) are timed in turn, round after round, so that a busy machine slows
  all three alike; medians over `--steps` rounds after `--warmup` rounds. `speedup` = median HF
  step time / median ssl_jax step time (same tokens). `speedup_bound` = the speedup ssl_jax's step
  would have if it ran at the measured matmul rate (MFU 1): median HF step time / (flops_per_step
  per device / matmul rate). Where the square matmul runs near the CPU's FMA peak (2026-12-01:
  172-191 GFLOP/s on 2 Zen 4 cores, 32 FLOP per cycle each, the peak at ~3 GHz), no program
  computing the same FLOPs gets past it: a target above it needs fewer FLOPs or a slower baseline.
  `*_tokens_per_sec` count positions (batch × sequence length, padding included).
- `flops_per_step` is XLA's cost analysis of the step, all devices together, lowered with its layers
  unrolled and one microbatch (`trainer.flops_per_step`: a scanned layer stack or microbatch loop
  would be counted once) and no remat (a `remat_policy`'s recomputation is not the model's work);
  `mfu` = flops_per_step / devices / median step time / median matmul rate
  (the measured dense matmul rate of one device of this machine in the step's compute dtype, not
  a datasheet).
- `host_fraction` = mean time of one `next(iterator)` (read before the steps run, so the
  pipeline's threads never compete with a timed step) / median step time: the share of a step the
  input pipeline would cost if it did not overlap with it. (Before 2026-12-01 the median read: the
  reads are uneven, and the median understated tiny BERT's share ~3×.)
- In the trainer's own loop (`--steps` more steps after the timed rounds: `next(iterator)` while
  the previous step runs, the pipeline's threads beside XLA), `loop_wait_s` = median time the
  loop waits in `next`, `loop_wait_fraction` = that / the median step time (what would starve an
  accelerator), `loop_step_s` = wall time per loop step and `loop_vs_step` = that / the median
  isolated step (what the pipeline's CPU use costs the step on a host that shares its cores).
- `compile_s`: lowering + compilation of the train step (the persistent compilation cache is
  turned off, even where `JAX_COMPILATION_CACHE_DIR` is set); `temp_mib`: the
  compiled step's temporary buffers per device (XLA's memory analysis), what its activations and
  gradients need beyond the state and the batch. `page_faults_per_step`: the median minor page
  faults of the process during one ssl_jax step. `load_avg_1m`: the machine's load as the row
  ends (above the core count, other work shared the cores: PyTorch then slows far more than XLA
  and `speedup` overstates). Every row names the process's C allocator,
  `malloc` (`trainer.host_allocator`; both frameworks share it). Run as
  `LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python benchmarks/...` for tcmalloc.
- `--profile=DIR`: instead, `--steps` steps under `jax.profiler.trace` (a Perfetto/TensorBoard
  trace in DIR/<objective>), then one JSON line with the `--top` XLA ops by time per step, each
  with its output shape and the JAX operation it came from. Ops of one step run on several threads
  at once, so their times add up to more than the step.
- `--compare-compiler-options=JSON`: instead, a list of XLA option sets (`{}` = XLA's defaults);
  the step compiled with ssl_jax's options for the platform and once per set, the programs run in
  turn on the same batches round after round; one JSON line per set with its median step time
  and `vs_ssl_jax` = that / the median under ssl_jax's options (same run, so noise mostly cancels).
- `--compare-autodiff-dense`: the same, for the step traced under `dense.autodiff_dense()`
  (autodiff's backward pass for the dense layers instead of `dense.dense`'s own); combines with
  `--compare-compiler-options`.
Threads: torch gets `--threads` intra-op threads (default: the cores this process may run on);
XLA uses its own pool of one thread per core. On a GPU host, transformers runs on the GPU too
(`transformers_device`), synchronised before its clock stops.
"""
import argparse
import collections
import functools
import glob
import gzip
import importlib
import json
import os
import re
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

from ssl_jax import trainer
from ssl_jax.models import dense
from ssl_jax.data import pipeline

from timing import MatmulRate, TransformersStep, hf_inputs, timed  # benchmarks/timing.py

FAMILY = {"mlm": "bert", "causal_lm": "gpt", "span_corruption": "t5", "denoising": "bart"}
# 'small' is the BERT shape of the performance targets, used for every family; 'tiny' is the
# configs' tiny models (vocabulary from the default corpus; BERT with learned positions).
_SMALL = dict(vocab_size=30522, hidden_size=256, num_layers=4, num_heads=4, mlp_dim=1024)
SIZES = {"tiny": dict(model={}, global_batch_size=32),
         "small": dict(model=_SMALL, global_batch_size=16)}


def objectives_flag(value: str) -> list[str]:
  """--objectives: a comma-separated list of FAMILY's objective names."""
  names = value.split(",")
  unknown = [n for n in names if n not in FAMILY]
  if unknown:
    raise argparse.ArgumentTypeError(
        f"{','.join(unknown)}: the objectives are {', '.join(FAMILY)} (BERT is mlm, GPT causal_lm, "
        "T5 span_corruption, BART denoising).")
  return names


def make_config(objective: str, size: str, overrides=None):
  """The configs/<family>.py tiny config with the benchmark's model size and batch."""
  config = importlib.import_module(f"configs.{FAMILY[objective]}").get_config("tiny")
  model = dict(SIZES[size]["model"])
  if objective == "mlm":  # transformers' BERT has learned positions, not the tiny config's ALiBi
    model.update(position_embedding="learned")
  if objective in ("span_corruption", "denoising") and model:
    model.update(num_decoder_layers=model["num_layers"])
    if objective == "span_corruption":  # T5 sets head_dim explicitly
      model.update(head_dim=model["hidden_size"] // model["num_heads"])
  model.update(overrides or {})
  config.model.update(model)
  config.train.global_batch_size = SIZES[size]["global_batch_size"]
  return config


class SslJaxStep:
  """The trainer's compiled step on `num_batches` batches of the config's input pipeline.

  The batches are read before any step is timed (each read timed alone: `host_s`), so the
  pipeline's background threads are idle, with a full prefetch buffer, while steps are timed;
  on a 2-core host they would otherwise take cores from XLA at random moments.
  """

  def __init__(self, config, num_batches: int):
    self.exp = trainer.Experiment.build(config)
    self.state = self.exp.init_state()
    self.compiled, self.compile_s = timed(lambda: trainer.compile_train_step(self.exp))
    self.flops = trainer.flops_per_step(config)
    self.device_flops = self.flops / self.exp.mesh.size
    self.iterator = iterator = pipeline.make_iterator(config, "train", self.exp.batch_sharding)
    next(iterator)  # the pipeline's start-up is not a per-batch cost
    reads = [timed(lambda: next(iterator)) for _ in range(num_batches)]
    self.batches = [batch for batch, _ in reads]
    self.host_s = [seconds for _, seconds in reads]
    self.tokens = trainer._tokens_per_step(self.exp.batch_spec)  # pylint: disable=protected-access
    self.batch, self.round = None, 0
    self.page_faults = []  # the process's minor page faults in each step

  def __call__(self) -> tuple[float, float]:
    """Runs one step; returns (seconds the pipeline took for its batch, seconds in the step)."""
    self.batch, host_s = self.batches[self.round], self.host_s[self.round]
    self.round += 1
    def step():
      self.state, sums = self.compiled(self.state, self.batch)
      jax.block_until_ready(sums)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    _, step_s = timed(step)
    self.page_faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
    return host_s, step_s

  def loop(self, num_steps: int) -> tuple[list[float], float]:
    """`num_steps` steps as the trainer's loop runs them: `next(iterator)` while the previous
    step computes (dispatch is asynchronous), the pipeline's threads running beside XLA.
    Returns (seconds the loop waited in each `next`, wall seconds per step)."""
    waits = []
    def run():
      for _ in range(num_steps):
        batch, wait = timed(lambda: next(self.iterator))
        waits.append(wait)
        self.state, sums = self.compiled(self.state, batch)
      jax.block_until_ready(sums)
    _, total = timed(run)
    return waits, total / num_steps


def _temp_mib(compiled):
  memory = compiled.memory_analysis()
  return None if memory is None else round(memory.temp_size_in_bytes / 2**20, 1)


def measure(objective: str, args) -> dict:
  config = make_config(objective, args.size, args.model)
  ours = SslJaxStep(config, args.warmup + args.steps)
  bf16 = ours.exp.model_config.dtype == "bfloat16"
  theirs = None
  if args.compare_transformers:
    import torch  # pylint: disable=g-import-not-at-top
    from ssl_jax.interop import hf  # pylint: disable=g-import-not-at-top
    theirs = TransformersStep(objective, hf.hf_config_from(ours.exp.model_config),
                              config.optim.to_dict(), args.torch_device,
                              autocast=torch.bfloat16 if bf16 else None)
  matmul = MatmulRate(args.matmul_size, 1 if jax.default_backend() == "cpu" else 50,
                      jnp.bfloat16 if bf16 else jnp.float32)
  host, ours_s, theirs_s, rates, ratios, mfus = [], [], [], [], [], []
  for round_ in range(args.warmup + args.steps):
    host_s, step_s = ours()
    if theirs is not None:
      theirs.inputs = hf_inputs(objective, ours.batch, args.torch_device)
      hf_s = theirs()
    rate = matmul()
    if round_ < args.warmup:
      continue
    host.append(host_s)
    ours_s.append(step_s)
    rates.append(rate)
    mfus.append(ours.device_flops / step_s / 1e9 / rate)
    if theirs is not None:
      theirs_s.append(hf_s)
      ratios.append(hf_s / step_s)
  step_s, rate = statistics.median(ours_s), statistics.median(rates)
  achieved = ours.device_flops / step_s / 1e9  # GFLOP/s per device
  waits, loop_step_s = ours.loop(args.steps)
  row = {
      "benchmark": "train_step", "objective": objective, "size": args.size,
      "model": {k: getattr(ours.exp.model_config, k) for k in (
          "vocab_size", "hidden_size", "num_layers", "num_heads", "mlp_dim", "dtype",
          "scan_layers", "remat_policy")} | args.model,
      "global_batch_size": config.train.global_batch_size,
      "sequence_length": config.data.sequence_length, "tokens_per_step": ours.tokens,
      "steps": args.steps, "ssl_jax_step_s": round(step_s, 4),
      "ssl_jax_tokens_per_sec": round(ours.tokens / step_s, 1),
  }
  if theirs is not None:
    hf_s = statistics.median(theirs_s)
    row.update({"transformers_model": type(theirs.model).__name__,
                "transformers_optimizer": type(theirs.optimizer).__name__,
                "transformers_device": args.torch_device,
                "transformers_step_s": round(hf_s, 4),
                "transformers_tokens_per_sec": round(ours.tokens / hf_s, 1),
                "speedup": round(hf_s / step_s, 2),
                "speedup_per_round_median": round(statistics.median(ratios), 2),
                "speedup_bound": round(hf_s * rate * 1e9 / ours.device_flops, 2)})
  row.update({
      "flops_per_step": ours.flops, "achieved_gflops": round(achieved, 2),
      "matmul_gflops": round(rate, 2), "matmul_dtype": ours.exp.model_config.dtype,
      "mfu": round(achieved / rate, 3),
      "mfu_per_round_median": round(statistics.median(mfus), 3),
      "compile_s": round(ours.compile_s, 2), "temp_mib": _temp_mib(ours.compiled),
      "page_faults_per_step": int(statistics.median(ours.page_faults[args.warmup:])),
      "host_s": round(statistics.mean(host), 5),
      "host_fraction": round(statistics.mean(host) / step_s, 4),
      "loop_wait_s": round(statistics.median(waits), 5),
      "loop_wait_fraction": round(statistics.median(waits) / step_s, 4),
      "loop_step_s": round(loop_step_s, 4), "loop_vs_step": round(loop_step_s / step_s, 3),
      "ssl_jax_step_s_all": [round(s, 4) for s in ours_s],
  })
  if theirs is not None:
    row["transformers_step_s_all"] = [round(s, 4) for s in theirs_s]
  return row


def _hlo_origins(hlo_text: str) -> dict:
  """{instruction name: (output shape, JAX op_name)} from a compiled HLO module's text."""
  origins = {}
  for line in hlo_text.splitlines():
    match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+)", line)
    if match:
      op_name = re.search(r'op_name="([^"]*)"', line)
      origins.setdefault(match.group(1), (match.group(2), op_name.group(1) if op_name else ""))
  return origins


def profile(objective: str, args) -> dict:
  """`--steps` train steps under the profiler; the `--top` XLA ops by time per step."""
  config = make_config(objective, args.size, args.model)
  ours = SslJaxStep(config, args.warmup + args.steps)
  for _ in range(args.warmup):
    ours()
  trace_dir = os.path.join(args.profile, objective)
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    step_s = statistics.median(ours()[1] for _ in range(args.steps))
  trace = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))[-1]
  with gzip.open(trace) as f:
    events = json.load(f)["traceEvents"]
  origins = _hlo_origins(ours.compiled.as_text())
  micros = collections.Counter()
  for event in events:
    if event.get("ph") == "X" and event["name"] in origins:
      micros[event["name"]] += event["dur"]
  top = [{"op": name, "ms_per_step": round(us / args.steps / 1e3, 2),
          "shape": origins[name][0], "from": origins[name][1]}
         for name, us in micros.most_common(args.top)]
  return {"benchmark": "train_step_profile", "objective": objective, "size": args.size,
          "steps": args.steps, "ssl_jax_step_s": round(step_s, 4), "trace": trace,
          "ops_ms_per_step": round(sum(micros.values()) / args.steps / 1e3, 1), "top_ops": top}


def compare_steps(objective: str, args) -> list[dict]:
  """ssl_jax's train step against variants of it, timed in turn on the same batches: the step
  compiled under each of `--compare-compiler-options`, and with `--compare-autodiff-dense`
  traced with autodiff's backward pass for the dense layers. One row per program."""
  config = make_config(objective, args.size, args.model)
  ours = SslJaxStep(config, args.warmup + args.steps)
  ssl_jax_options = trainer.compiler_options(ours.exp.mesh)

  def compile_with_autodiff_dense():
    with dense.autodiff_dense():
      return trainer.compile_train_step(ours.exp)

  variants = [(dict(options=options, dense_backward="ssl_jax"),
               functools.partial(trainer.compile_train_step, ours.exp, options))
              for options in args.compare_compiler_options or []]
  if args.compare_autodiff_dense:
    variants.append((dict(options=ssl_jax_options, dense_backward="autodiff"),
                     compile_with_autodiff_dense))
  runs = [dict(variant=dict(options=ssl_jax_options, dense_backward="ssl_jax"),
               compiled=ours.compiled, compile_s=ours.compile_s, state=ours.state, times=[])]
  for variant, compile_fn in variants:
    compiled, compile_s = timed(compile_fn)
    runs.append(dict(variant=variant, compiled=compiled, compile_s=compile_s,
                     state=ours.exp.init_state(), times=[]))
  for round_, batch in enumerate(ours.batches):
    for run in runs:
      start = time.perf_counter()
      run["state"], sums = run["compiled"](run["state"], batch)
      jax.block_until_ready(sums)
      if round_ >= args.warmup:
        run["times"].append(time.perf_counter() - start)
  baseline = statistics.median(runs[0]["times"])
  return [{"benchmark": "step_variants", "objective": objective, "size": args.size,
           **run["variant"], "ssl_jax": index == 0, "steps": args.steps,
           "step_s": round(statistics.median(run["times"]), 4),
           "vs_ssl_jax": round(statistics.median(run["times"]) / baseline, 3),
           "vs_ssl_jax_per_round": [round(t / b, 3) for t, b in zip(run["times"],
                                                                   runs[0]["times"])],
           "compile_s": round(run["compile_s"], 2), "temp_mib": _temp_mib(run["compiled"])}
          for index, run in enumerate(runs)]


def compile_scaling(args) -> list[dict]:
  """Compile time of the BERT train step with scan_layers=True for each of `--scan_layers_counts`."""
  rows = []
  for num_layers in args.scan_layers_counts:
    config = make_config("mlm", args.size, dict(num_layers=num_layers, scan_layers=True))
    exp = trainer.Experiment.build(config)
    _, seconds = timed(lambda: trainer.compile_train_step(exp))  # pylint: disable=cell-var-from-loop
    rows.append({"benchmark": "compile_time", "objective": "mlm", "size": args.size,
                 "num_layers": num_layers, "scan_layers": True, "compile_s": round(seconds, 2)})
  fewest = min(rows, key=lambda row: row["num_layers"])
  for row in rows:
    row["vs_fewest_layers"] = round(row["compile_s"] / fewest["compile_s"], 2)
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--objectives", type=objectives_flag, default=",".join(FAMILY))
  parser.add_argument("--size", default="small", choices=sorted(SIZES))
  parser.add_argument("--compare-transformers", "--compare_transformers", action="store_true",
                      dest="compare_transformers")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--model", type=json.loads, default={},
                      help='model config overrides, e.g. \'{"dtype": "bfloat16"}\'')
  parser.add_argument("--matmul_size", type=int, default=1536)
  parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
  parser.add_argument("--compile-scaling", "--compile_scaling", action="store_true",
                      dest="compile_scaling")
  parser.add_argument("--scan_layers_counts", type=lambda s: [int(x) for x in s.split(",")],
                      default=[2, 24])
  parser.add_argument("--profile", default="",
                      help="a directory: trace --steps steps there and list the slowest XLA ops")
  parser.add_argument("--top", type=int, default=25, help="with --profile: how many ops to list")
  parser.add_argument("--compare-compiler-options", "--compare_compiler_options", type=json.loads,
                      default=None, dest="compare_compiler_options",
                      help="a JSON list of XLA option sets to time against ssl_jax's, e.g. '[{}]'")
  parser.add_argument("--compare-autodiff-dense", "--compare_autodiff_dense", action="store_true",
                      dest="compare_autodiff_dense",
                      help="time the step with autodiff's backward pass for dense layers "
                           "(dense.autodiff_dense) against ssl_jax's")
  args = parser.parse_args(argv)
  if args.steps < 1 or args.warmup < 0:
    parser.error(f"--steps={args.steps} --warmup={args.warmup}: time at least one step after 0 or "
                 "more warm-up rounds.")
  if not isinstance(args.model, dict):
    parser.error(f"--model={args.model!r}: give a JSON object of model config overrides, e.g. "
                 "'{\"dtype\": \"bfloat16\"}'.")
  if args.profile and (args.compare_transformers or args.compile_scaling):
    parser.error("--profile traces ssl_jax's step alone; drop --compare-transformers and "
                 "--compile-scaling.")
  if args.compare_compiler_options is not None and (
      not isinstance(args.compare_compiler_options, list)
      or not all(isinstance(o, dict) for o in args.compare_compiler_options)):
    parser.error(f"--compare-compiler-options={args.compare_compiler_options!r}: give a JSON list "
                 "of option dicts, e.g. '[{}]' or '[{\"xla_cpu_use_thunk_runtime\": false}]'.")
  comparing = args.compare_compiler_options is not None or args.compare_autodiff_dense
  if comparing and (args.profile or args.compare_transformers or args.compile_scaling):
    parser.error("--compare-compiler-options and --compare-autodiff-dense time ssl_jax's step "
                 "alone; drop --profile, --compare-transformers and --compile-scaling.")
  jax.config.update("jax_enable_compilation_cache", False)  # compile_s is a real compile
  args.torch_device = "cuda" if jax.default_backend() == "gpu" else "cpu"
  if args.compare_transformers:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.threads)
    # On a GPU, XLA computes float32 matmuls in TF32 by default and PyTorch in full float32:
    # both use TF32 (what `matmul_precision` in each row says). On the CPU both stay float32
    # (torch would set oneDNN's float32 math mode too).
    if args.torch_device == "cuda":
      torch.set_float32_matmul_precision("high")
    if args.torch_device == "cuda" and not torch.cuda.is_available():
      parser.error(f"JAX runs on the GPU but torch {torch.__version__} sees no CUDA device, so "
                   "transformers would be timed on the CPU; install a CUDA build of torch or drop "
                   "--compare-transformers.")
  meta = {"jax": jax.__version__, "backend": jax.default_backend(), "devices": jax.device_count(),
          "matmul_precision": "float32" if args.torch_device == "cpu" else "tf32",
          "cpu_count": os.cpu_count(), "threads": args.threads, "malloc": trainer.host_allocator()}
  def emit(row):   # the load average as the row ends: under contention PyTorch slows far more
    print(json.dumps({**row, **meta, "load_avg_1m": round(os.getloadavg()[0], 2)}), flush=True)

  if args.compile_scaling:
    for row in compile_scaling(args):
      emit(row)
    return
  if comparing:
    for objective in args.objectives:
      for row in compare_steps(objective, args):
        emit(row)
    return
  run = profile if args.profile else measure
  for objective in args.objectives:
    emit(run(objective, args))


if __name__ == "__main__":
  main()
