"""The train step exported with `jax.export`, timed on a host that has JAX and nothing of ssl_jax's.

  # here, with ssl_jax installed: GPT-2 124M's train step for a CUDA GPU, on real batches
  python benchmarks/exported_step.py export --config=configs/gpt.py:small --out=/tmp/steps/gpt2 \\
      --set data.sequence_length=1024 train.global_batch_size=16 model.dtype=bfloat16 \\
      --compare-transformers
  # there: JAX with its CUDA plugin (torch and transformers for the transformers rows)
  python benchmarks/exported_step.py run /tmp/steps/gpt2 --peak_tflops=989

`benchmarks/train_step.py` times the step where ssl_jax runs. An accelerator host often has JAX
but not TensorFlow, seqio or the corpora that ssl_jax's input pipeline and checkpoints need (a
benchmark machine may allow no installs at all). `export` builds the experiment here as
`ssl-jax train` would (config validated, the state laid out on one device) and writes to `--out`:
- `init.jax`, `step.jax`: the initialisation and the train step, serialized by `jax.export` for
  `--platform`. The step is the trainer's (`trainer.make_train_step`: loss, gradients, clipping, the
  optimizer's update, the non-finite check), traced with autodiff's backward pass for the dense
  layers, which `dense.dense` takes on every backend but the CPU. The state is passed as the list
  of its leaves.
- `batches.npz`: `--batches` global batches of the config's input pipeline, used in turn.
- `meta.json`: the model and optimizer settings, batch shapes, tokens per step, and
  `flops_per_step` (`trainer.flops_per_step`: XLA's cost analysis of the step as exported, its
  layers unrolled, without the remat policy's recomputation).
- with `--compare-transformers`: `transformers/config.json` (the same model's transformers config,
  `interop.hf.hf_config_from`) and `transformers_batches.npz` (the same batches as its inputs).
  The transformers step trains with AdamW alone, so a config of another optimizer (T5's presets:
  Adafactor) is refused before anything is exported; `--set optim.name=adamw` compares AdamW.
The data are the offline corpus and vocabulary (`data.source=default_corpus`,
`data.vocab.kind=default`), as token ids do not change a step's time; the model keeps the preset's
vocabulary size (GPT-2's 50257, where nanoGPT pads to 50304: `--set model.vocab_size=50304`).
`--set KEY=VALUE ...` then overrides any config value.

`run DIR...` imports JAX, numpy and `benchmarks/timing.py` only. Per directory it initialises the
state on the default device, compiles the step with the state donated (`compile_s`; the persistent
compilation cache is turned off, even where `JAX_COMPILATION_CACHE_DIR` is set), and runs
`--warmup` + `--steps` rounds; each round times one step (to `block_until_ready`), the transformers
step when the directory has one, and a square matmul in the step's compute dtype (`--matmul_size`,
50 chained on an accelerator), in turn. One JSON line per directory, medians over the timed rounds:
`mfu` = flops_per_step / step time / the measured matmul rate; with `--peak_tflops` (the datasheet's
dense rate for that dtype, e.g. 989 for bfloat16 on an H100 or H200 SXM) also `mfu_vs_peak`, the
way nanoGPT and most papers count. The transformers step is `benchmarks/train_step.py`'s (AdamW,
clipping; `transformers_optimizer` in the row, ssl_jax's in `optimizer`), under `torch.autocast`
in the step's compute dtype; float32 matmuls run in TF32 on both sides (XLA's default on a GPU).
`speedup` = its median / ssl_jax's. `loss_first`, `loss_last`: the first and last round's loss, to
show the exported step trains. JAX takes at most `XLA_PYTHON_CLIENT_MEM_FRACTION` (0.45 unless
set) of the device memory, so torch fits beside it.
"""
import argparse
import ast
import dataclasses
import json
import os
import statistics
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from jax import export  # pylint: disable=g-import-not-at-top

# benchmarks/timing.py
from timing import MatmulRate, TransformersStep, check_adamw, hf_inputs, timed

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _override(config, setting: str) -> None:
  """config.a.b = value, for `setting` 'a.b=value' (a Python literal, else the text)."""
  key, sep, text = setting.partition("=")
  *parents, name = key.split(".")
  node = config
  for part in parents:
    node = node.get(part) if hasattr(node, "get") else None
  if not sep or node is None or not hasattr(node, "get") or name not in node:
    raise ValueError(f"--set {setting!r}: give KEY=VALUE with KEY a setting of the config, "
                     "e.g. --set train.global_batch_size=16 model.dtype=bfloat16.")
  try:
    node[name] = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    node[name] = text


def _save_batches(path: str, batches) -> None:
  np.savez(path, **{f"{i}.{k}": v for i, batch in enumerate(batches) for k, v in batch.items()})


def _load_batches(path: str) -> list:
  with np.load(path) as arrays:
    batches = {}
    for name in arrays.files:
      index, key = name.split(".", 1)
      batches.setdefault(int(index), {})[key] = arrays[name]
  return [batches[i] for i in sorted(batches)]


def export_step(args) -> dict:
  """Writes the exported init and step, batches and meta.json to args.out; returns the meta."""
  sys.path.insert(0, _REPO)
  # pylint: disable=g-import-not-at-top
  from ssl_jax import config as config_lib
  from ssl_jax import partitioning
  from ssl_jax import train_state
  from ssl_jax import trainer
  from ssl_jax.data import pipeline
  from ssl_jax.models import dense
  # pylint: enable=g-import-not-at-top
  path, _, variant = args.config.partition(":")
  config = config_lib.load_config_file(path, variant)
  config.data.update(source="default_corpus", mixture="")
  config.data.vocab.update(kind="default", path="",
                           extra_ids=100 if config.objective == "span_corruption" else 0)
  config.mesh.update(data=1, fsdp=1, tensor=1)
  for setting in args.set:
    _override(config, setting)
  if args.compare_transformers:
    check_adamw(config.optim.to_dict())
  devices = jax.devices()[:1]
  exp = trainer.Experiment.build(config, devices)
  if args.compare_transformers:  # raises before anything is written where HF has no such model
    from ssl_jax.interop import hf  # pylint: disable=g-import-not-at-top
    hf_config = hf.hf_config_from(exp.model_config)

  treedef = jax.tree.structure(exp.layout.abstract)
  state_abstract = [jax.ShapeDtypeStruct(a.shape, a.dtype)
                    for a in jax.tree.leaves(exp.layout.abstract)]
  batch_abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in exp.batch_spec.items()}

  def init():
    return jax.tree.leaves(train_state.create_train_state(
        jax.random.key(config.train.seed), exp.model_init_fn, exp.tx))

  with dense.autodiff_dense():  # traced here, on the CPU, for another backend
    train_step = trainer.make_train_step(exp)

    def step(leaves, batch):
      state, sums = train_step(jax.tree.unflatten(treedef, leaves), batch)
      return jax.tree.leaves(state), sums

    with partitioning.with_logical_rules(exp.layout.rules, exp.mesh):
      step_exported = export.export(jax.jit(step), platforms=[args.platform])(
          state_abstract, batch_abstract)
    flops = trainer.flops_per_step(config, devices)
  with partitioning.with_logical_rules(exp.layout.rules):
    init_exported = export.export(jax.jit(init), platforms=[args.platform])()
  assert [(a.shape, a.dtype) for a in init_exported.out_avals] == [
      (a.shape, a.dtype) for a in state_abstract], "init and step disagree on the state's leaves"

  os.makedirs(args.out, exist_ok=True)
  for name, exported in (("init.jax", init_exported), ("step.jax", step_exported)):
    with open(os.path.join(args.out, name), "wb") as f:
      f.write(exported.serialize())
  iterator = pipeline.make_iterator(config, "train", exp.batch_sharding)
  batches = [jax.tree.map(np.asarray, next(iterator)) for _ in range(args.batches)]
  _save_batches(os.path.join(args.out, "batches.npz"), batches)
  meta = {
      "objective": config.objective, "config": args.config, "set": args.set,
      "platform": args.platform, "exported_with_jax": jax.__version__,
      "model": dataclasses.asdict(exp.model_config),
      "param_count": train_state.param_count(exp.layout.abstract.params),
      "optim": config.optim.to_dict(), "global_batch_size": config.train.global_batch_size,
      "batch_shapes": {k: list(v.shape) for k, v in exp.batch_spec.items()},
      "tokens_per_step": trainer._tokens_per_step(exp.batch_spec),  # pylint: disable=protected-access
      "flops_per_step": flops,
  }
  if args.compare_transformers:
    os.makedirs(os.path.join(args.out, "transformers"), exist_ok=True)
    hf_config.to_json_file(os.path.join(args.out, "transformers", "config.json"))
    _save_batches(os.path.join(args.out, "transformers_batches.npz"),
                  [{k: v.numpy() for k, v in hf_inputs(config.objective, b, "cpu").items()}
                   for b in batches])
  with open(os.path.join(args.out, "meta.json"), "w") as f:
    json.dump(meta, f, indent=1)
  return meta


def _transformers_step(directory: str, meta: dict, device: str):
  """(the transformers step of the model in directory/transformers, its batches as torch tensors),
  or (None, None) if none was exported."""
  config_path = os.path.join(directory, "transformers", "config.json")
  if not os.path.exists(config_path):
    return None, None
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  with open(config_path) as f:
    settings = json.load(f)
  hf_config = transformers.AutoConfig.for_model(**settings)
  # transformers 5's T5Config ties the embeddings whatever it is given (interop.hf_config_from).
  hf_config.tie_word_embeddings = settings.get("tie_word_embeddings", True)
  torch.set_float32_matmul_precision("high")  # TF32, as XLA's default float32 dot on a GPU
  autocast = torch.bfloat16 if meta["model"]["dtype"] == "bfloat16" else None
  step = TransformersStep(meta["objective"], hf_config, meta["optim"], device, autocast)
  batches = [{k: torch.as_tensor(v, device=device) for k, v in b.items()}
             for b in _load_batches(os.path.join(directory, "transformers_batches.npz"))]
  return step, batches


def _progress(directory: str, start: float, what: str) -> None:
  print(f"[{time.perf_counter() - start:7.1f} s] {directory}: {what}", file=sys.stderr, flush=True)


def run_step(directory: str, args) -> dict:
  """Times the exported step of `directory` (and its transformers counterpart) on this host."""
  start = time.perf_counter()
  with open(os.path.join(directory, "meta.json")) as f:
    meta = json.load(f)
  expected = "gpu" if meta["platform"] in ("cuda", "rocm") else meta["platform"]
  if jax.default_backend() != expected:
    raise SystemExit(f"{directory} was exported for {meta['platform']!r}, but JAX runs on "
                     f"{jax.default_backend()!r} here: export it with --platform for this host.")
  loaded = {}
  for name in ("init", "step"):
    with open(os.path.join(directory, f"{name}.jax"), "rb") as f:
      loaded[name] = export.deserialize(bytearray(f.read()))
  _progress(directory, start, "deserialized")
  state = jax.block_until_ready(jax.jit(loaded["init"].call)())
  _progress(directory, start, "state initialised")
  batches = [jax.device_put(b) for b in _load_batches(os.path.join(directory, "batches.npz"))]
  compiled, compile_s = timed(
      lambda: jax.jit(loaded["step"].call, donate_argnums=0).lower(state, batches[0]).compile())
  _progress(directory, start, f"step compiled in {compile_s:.1f} s")
  device = "cpu" if expected == "cpu" else "cuda"
  theirs, their_batches = (None, None) if args.no_transformers else _transformers_step(
      directory, meta, device)
  matmul = MatmulRate(args.matmul_size, 1 if expected == "cpu" else 50,
                      _DTYPES[meta["model"]["dtype"]])
  _progress(directory, start, "transformers model built" if theirs else "matmul compiled")
  ours_s, theirs_s, rates, losses = [], [], [], []
  for round_ in range(args.warmup + args.steps):
    batch = batches[round_ % len(batches)]

    def step():
      nonlocal state
      state, sums = compiled(state, batch)  # pylint: disable=cell-var-from-loop
      return jax.block_until_ready(sums)
    sums, step_s = timed(step)
    losses.append(float(sums["loss"][0] / sums["loss"][1]))
    if theirs is not None:
      theirs.inputs = their_batches[round_ % len(their_batches)]
      hf_s = theirs()
    rate = matmul()
    _progress(directory, start, f"round {round_}: step {step_s:.4f} s, loss {losses[-1]:.3f}")
    if round_ >= args.warmup:
      ours_s.append(step_s)
      rates.append(rate)
      if theirs is not None:
        theirs_s.append(hf_s)
  step_s, rate = statistics.median(ours_s), statistics.median(rates)
  flops = meta["flops_per_step"]
  row = {
      "benchmark": "exported_step", "name": os.path.basename(os.path.normpath(directory)),
      "objective": meta["objective"], "config": meta["config"], "set": meta["set"],
      "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__,
      "model": {k: meta["model"][k] for k in ("vocab_size", "hidden_size", "num_layers",
                                               "num_heads", "mlp_dim", "dtype", "scan_layers",
                                               "remat_policy")},
      "param_count": meta["param_count"], "optimizer": meta["optim"].get("name", "adamw"),
      "global_batch_size": meta["global_batch_size"],
      "batch_shapes": meta["batch_shapes"], "tokens_per_step": meta["tokens_per_step"],
      "steps": args.steps, "ssl_jax_step_s": round(step_s, 5),
      "ssl_jax_tokens_per_sec": round(meta["tokens_per_step"] / step_s, 1),
      "compile_s": round(compile_s, 2), "flops_per_step": flops,
      "achieved_tflops": float(f"{flops / step_s / 1e12:.4g}"),
      "matmul_tflops": float(f"{rate / 1e3:.4g}"), "matmul_dtype": meta["model"]["dtype"],
      "mfu": round(flops / step_s / 1e9 / rate, 3),
  }
  if args.peak_tflops:
    row.update(peak_tflops=args.peak_tflops,
               mfu_vs_peak=round(flops / step_s / 1e12 / args.peak_tflops, 3))
  if theirs is not None:
    hf_s = statistics.median(theirs_s)
    row.update({"transformers_model": type(theirs.model).__name__,
                "transformers_optimizer": type(theirs.optimizer).__name__,
                "transformers_step_s": round(hf_s, 5),
                "transformers_tokens_per_sec": round(meta["tokens_per_step"] / hf_s, 1),
                "speedup": round(hf_s / step_s, 2),
                "transformers_step_s_all": [round(s, 5) for s in theirs_s]})
  row.update(loss_first=round(losses[0], 4), loss_last=round(losses[-1], 4),
             ssl_jax_step_s_all=[round(s, 5) for s in ours_s])
  return row


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  exporter = commands.add_parser("export", help="export a config's init and train step")
  exporter.add_argument("--config", required=True, help="PATH[:VARIANT], e.g. configs/gpt.py:small")
  exporter.add_argument("--out", required=True, help="directory to write the exported step to")
  exporter.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. train.global_batch_size=16")
  exporter.add_argument("--platform", default="cuda", choices=("cuda", "rocm", "tpu", "cpu"))
  exporter.add_argument("--batches", type=int, default=4)
  exporter.add_argument("--compare-transformers", "--compare_transformers", action="store_true",
                        dest="compare_transformers")
  runner = commands.add_parser("run", help="time exported steps on this host's default device")
  runner.add_argument("directories", nargs="+")
  runner.add_argument("--steps", type=int, default=10)
  runner.add_argument("--warmup", type=int, default=3)
  runner.add_argument("--matmul_size", type=int, default=8192)
  runner.add_argument("--peak_tflops", type=float, default=0.0,
                      help="the device's datasheet dense rate in the step's dtype, for mfu_vs_peak")
  runner.add_argument("--no-transformers", "--no_transformers", action="store_true",
                      dest="no_transformers", help="skip the transformers step even if exported")
  args = parser.parse_args(argv)
  if args.command == "export":
    if args.batches < 1:
      parser.error(f"--batches={args.batches}: export at least one batch.")
    meta = export_step(args)
    print(json.dumps({"exported": args.out, **{k: meta[k] for k in (
        "objective", "param_count", "tokens_per_step", "flops_per_step")}}), flush=True)
    return
  if args.steps < 1 or args.warmup < 0:
    parser.error(f"--steps={args.steps} --warmup={args.warmup}: time at least one step after "
                 "zero or more warm-up rounds.")
  jax.config.update("jax_enable_compilation_cache", False)  # compile_s is a real compile
  for directory in args.directories:
    print(json.dumps(run_step(directory, args)), flush=True)


if __name__ == "__main__":
  main()
