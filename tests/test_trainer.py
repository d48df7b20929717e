"""The training spine end to end: CLI runs, sharding equivalence, one compile, microbatching, FSDP."""
import collections
import glob
import json
import math
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import optax
import pytest

from ssl_jax import objectives
from ssl_jax import partitioning
from ssl_jax import trainer
from ssl_jax.data import corpora
from ssl_jax.data import vocabularies

import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"bert": "mlm", "gpt": "causal_lm", "t5": "span_corruption", "bart": "denoising"}
# Steps for each CLI run, at batch 16 and a constant learning rate (the configs' linear decay lowers
# the rate before the models are done: BERT needs ~250 steps with it, BART ~170, GPT ~110). The
# tiny BART and BERT (ALiBi) leave the unigram plateau near step 70; BART ends a nat below it by
# step 140, BERT by step 190, GPT by step 80, T5 by step 20.
CLI_STEPS = {"bert": 240, "gpt": 90, "t5": 30, "bart": 150}
# BART's targets are the whole document: at sequence length 64 a step costs less than half as much
# and it learns as much per step (its copy task does not get easier). BERT learns less per step
# at 64 (fewer masked tokens), so the others keep the tiny config's 128.
CLI_FLAGS = {"bart": ("--config.data.sequence_length=64",)}


# A small corpus and batch for every run of this file, CLI and in-process.
SMALL = ("--config.train.global_batch_size=16", "--config.data.corpus.num_documents=2000",
         "--config.data.shuffle_buffer=64")


def tiny_config(name: str):
  """The tiny config of `configs/<name>.py` made smaller still for tests (SMALL)."""
  return helpers.cli_config(name, *SMALL)


def host_batches(config, num_steps=5):
  """The first global batches of the train stream, as numpy (one pipeline for every mesh)."""
  it = trainer.pipeline.DataIterator(trainer.pipeline.make_dataset(config, "train"), None)
  return [next(it) for _ in range(num_steps)]


def first_losses(config, devices, batches):
  exp = trainer.Experiment.build(config, devices=devices)
  state = exp.init_state()
  step = trainer.compile_train_step(exp)
  losses = []
  for batch in batches:
    state, sums = step(state, jax.device_put(batch, exp.batch_sharding))
    losses.append(float(sums["loss"][0]))
  return losses


def unigram_entropy(vocab, corpus_cfg, num_documents=500) -> float:
  """Entropy (nats) of the corpus's token frequencies: the loss of a model that ignores context."""
  sentences = [corpora.sentence_text(sentence)
               for document in corpora.generate_documents(num_documents, corpus_cfg.seed)
               for sentence in document]
  counts = collections.Counter(
      i for ids in vocabularies.encode_batch(vocab, sentences) for i in ids)
  total = sum(counts.values())
  return -sum(c / total * math.log(c / total) for c in counts.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cli_trains_tiny_config(name, tmp_path):
  workdir = str(tmp_path / name)
  # -X importtime lists every module the run imports, on stderr.
  cmd = [sys.executable, "-X", "importtime", "-m", "ssl_jax.main", "train",
         f"--config=configs/{name}.py:tiny", f"--workdir={workdir}",
         f"--config.train.num_steps={CLI_STEPS[name]}", "--config.train.log_every=10",
         "--config.train.eval_every=30", "--config.train.eval_steps=2",
         "--config.train.save_every=30", *SMALL,
         "--config.optim.warmup_steps=10", "--config.optim.schedule=constant",
         *CLI_FLAGS.get(name, ())]
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
  log = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
  assert result.returncode == 0, "\n".join(log[-60:])
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  train = [r for r in rows if r["split"] == "train"]
  evals = [r for r in rows if r["split"] == "eval"]
  assert [r["step"] for r in train] == list(range(10, CLI_STEPS[name] + 1, 10))
  assert [r["step"] for r in evals] == list(range(30, CLI_STEPS[name] + 1, 30))
  for key in ("loss", "learning_rate", "tokens_per_sec", "step_time_s"):
    assert all(math.isfinite(r[key]) for r in train), key
  # Per-token loss a nat below the unigram entropy of the corpus (the best loss that ignores
  # context): every tiny config has learned to use the context.
  config = tiny_config(name)
  vocab = vocabularies.get_vocabulary(config.data.vocab)
  per_token = "mlm_loss" if name == "bert" else "token_loss"
  bound = unigram_entropy(vocab, config.data.corpus) - 1.0
  assert train[-1][per_token] < bound, (train[-1][per_token], bound)
  assert evals[-1][per_token] < bound, (evals[-1][per_token], bound)
  assert train[-1]["loss"] < train[0]["loss"]
  assert os.path.exists(os.path.join(workdir, "config.json"))
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  # PyTorch and transformers are the `interop` extra: training never imports them.
  imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
              for line in result.stderr.splitlines() if line.startswith("import time:")}
  assert "ssl_jax" in imported and "jax" in imported
  assert not imported & {"torch", "transformers", "safetensors"}, imported
  if name == "gpt":  # the cheapest to compile: `ssl-jax eval` (the run's config.json, without
    again = trainer.evaluate_workdir(None, workdir)   # --config) scores the examples training did
    np.testing.assert_allclose([again[k] for k in evals[-1] if k not in ("step", "split")],
                               [v for k, v in evals[-1].items() if k not in ("step", "split")],
                               rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "t5", "gpt"])
def test_meshes_give_the_one_device_losses(name):
  config = tiny_config(name)
  batches = host_batches(config)
  reference = first_losses(config, jax.devices()[:1], batches)
  for mesh in ({"data": 8}, {"data": 2, "fsdp": 4}, {"fsdp": 2, "tensor": 4}):
    config.mesh.update({"data": 1, "fsdp": 1, "tensor": 1, **mesh})
    losses = first_losses(config, jax.devices(), batches)
    np.testing.assert_allclose(losses, reference, rtol=1e-5, err_msg=str(mesh))


def test_train_step_traces_once():
  config = tiny_config("bert")
  exp = trainer.Experiment.build(config)
  state = exp.init_state()
  step = jax.jit(chex.assert_max_traces(trainer.make_train_step(exp), n=1),
                 in_shardings=(exp.layout.shardings, exp.batch_sharding),
                 out_shardings=(exp.layout.shardings, partitioning.replicated(exp.mesh)),
                 donate_argnums=0)
  it = trainer.pipeline.make_iterator(config, "train", exp.batch_sharding)
  with partitioning.with_logical_rules(exp.layout.rules, exp.mesh):
    for _ in range(3):
      state, _ = step(state, next(it))
  assert int(state.step) == 3


def test_host_allocator_names_a_preloaded_tcmalloc():
  if not os.environ.get("LD_PRELOAD"):
    assert trainer.host_allocator() == "system"
  libraries = glob.glob("/usr/lib/*/libtcmalloc*.so.4") + glob.glob("/usr/lib/libtcmalloc*.so.4")
  if not libraries:
    pytest.skip("no tcmalloc installed (Debian/Ubuntu: libtcmalloc-minimal4)")
  code = "from ssl_jax import trainer; print(trainer.host_allocator())"
  run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "LD_PRELOAD": libraries[0]},
                       capture_output=True, text=True, check=True)
  assert run.stdout.split()[-1] == "tcmalloc"


def test_microbatches_give_the_full_batch_update():
  config = tiny_config("bert")
  devices = jax.devices()[:2]  # microbatches of 16/4 rows split over 2 data-parallel devices
  exp = trainer.Experiment.build(config, devices=devices)
  batch = next(trainer.pipeline.make_iterator(config, "train", exp.batch_sharding))
  results = []
  for k in (1, 4):
    config.train.microbatches = k
    exp = trainer.Experiment.build(config, devices=devices)
    state, sums = trainer.compile_train_step(exp)(exp.init_state(), batch)
    # Eval goes in microbatches too (the whole batch's logits at once took k times the train
    # step's memory, at the first eval of a run that needed microbatches to fit).
    eval_sums = jax.device_get(trainer.compile_eval_step(exp)(state.params, batch))
    results.append((jax.device_get(state.params), float(sums["loss"][0]),
                    float(sums["grad_norm"][0]), eval_sums))
  (params_1, loss_1, norm_1, eval_1), (params_4, loss_4, norm_4, eval_4) = results
  np.testing.assert_allclose(loss_4, loss_1, rtol=1e-5)
  chex.assert_trees_all_close(eval_4, eval_1, rtol=1e-4)
  # The logged grad_norm is the whole batch's gradient's, before clipping.
  rng = jax.random.fold_in(jax.random.key(config.train.seed), 0)
  grads = jax.grad(lambda p: objectives.loss_fn(exp.objective, exp.model, p, batch, rng,
                                                exp.objective.denominators(batch))[0])(
                                                    exp.init_state().params)
  np.testing.assert_allclose([norm_1, norm_4], float(optax.global_norm(grads)), rtol=1e-4)
  assert norm_1 > config.optim.grad_clip_norm   # clipped: the norm logged is the one before
  chex.assert_trees_all_close(params_4, params_1, atol=1e-5, rtol=1e-4)


def test_microbatches_on_a_three_axis_mesh_give_the_one_device_update():
  # BERT's MLM head and pooler labelled their hidden -> hidden outputs 'mlp' (split over tensor,
  # then read as 'embed', split over fsdp): on data = fsdp = tensor = 2 with 2 microbatches XLA
  # computed wrong gradients (type_embed's off by up to 28% of the largest), the loss right.
  config = tiny_config("bert")
  # Adam's first update is about lr * sign(gradient), whatever its size: with eps 1 the update is
  # nearly linear in the gradient, so a wrong gradient shows.
  config.optim.update(eps=1.0, warmup_steps=0, schedule="constant", weight_decay=0.0)

  def update(config, devices=None):
    exp = trainer.Experiment.build(config, devices=devices)
    batch = jax.device_put(host_batches(config, 1)[0], exp.batch_sharding)
    start = exp.init_state()
    before = jax.device_get(start.params)
    state, _ = trainer.compile_train_step(exp)(start, batch)
    return jax.tree.map(lambda new, old: new - old, jax.device_get(state.params), before)

  expected = update(config, jax.devices()[:1])
  config.mesh.update(data=2, fsdp=2, tensor=2)
  config.train.microbatches = 2
  got = update(config)
  scale = max(float(np.max(np.abs(u))) for u in jax.tree.leaves(expected))
  chex.assert_trees_all_close(got, expected, atol=1e-4 * scale, rtol=0)


@pytest.mark.parametrize("name, setting, value, message", [
    # BART's decoder has learned positions too, and denoising targets are the whole sequence:
    # beyond them every logit was NaN. (targets_length is span corruption's: tests/test_tasks.py)
    ("bart", "sequence_length", 256, "config.data.sequence_length=256 is invalid: the model has "
     "128"),
    ("gpt", "shuffle_buffer", -1, "config.data.shuffle_buffer=-1 is invalid: use a positive"),
    # Both were ignored: the run trained on the default corpus / vocabulary, config.json naming
    # the user's file.
    ("bert", "text_files", "my.txt", "config.data.text_files='my.txt' is invalid: it is read only "
     "with config.data.source='text_files'"),
    ("gpt", "vocab.path", "v.model", "config.data.vocab.path='v.model' is invalid: "
     "vocab.kind='default' reads no file"),
    # Another objective's settings, accepted and not read (config.json named them).
    ("gpt", "mlm.mask_rate", 0.5, "config.data.mlm.mask_rate=0.5 is invalid: it is read by "
     "config.objective='mlm' only, and this run's objective is 'causal_lm'"),
    ("t5", "denoising.rotate_ratio", 0.5, "config.data.denoising.rotate_ratio=0.5 is invalid: it "
     "is read by config.objective='denoising' only"),
    ("bart", "targets_length", 64, "config.data.targets_length=64 is invalid: it is read by "
     "config.objective='span_corruption' only"),
    ("bert", "mlm.predictions_per_row", -1, "config.data.mlm.predictions_per_row=-1 is invalid"),
    # Unpacked rows are max_predictions long: the setting would be ignored.
    ("bert_unpacked", "mlm.predictions_per_row", 24, "config.data.mlm.predictions_per_row=24 is "
     "invalid: it sizes packed rows"),
])
def test_data_settings_are_checked_against_the_model_before_building(name, setting, value,
                                                                    message):
  config = tiny_config(name.removesuffix("_unpacked"))
  config.data.pack = not name.endswith("_unpacked")
  section, _, field = setting.rpartition(".")
  (config.data[section] if section else config.data)[field] = value
  with pytest.raises(ValueError, match=message):
    trainer.resolve_model_config(config)


def test_adafactor_refuses_adamw_settings_it_does_not_read():
  config = tiny_config("t5")
  config.optim.update(name="adafactor", schedule="rsqrt", b2=0.98)
  with pytest.raises(ValueError, match=r"config.optim.b2=0.98 is invalid: it is AdamW's, and "
                                       r"config.optim.name='adafactor' does not read it"):
    trainer.resolve_model_config(config)
  config.optim.b2 = 0.999
  trainer.resolve_model_config(config)


def test_bart_random_ratio_needs_masks_to_make_random():
  # fairseq's --mask-random: [MASK]s of token masking or text infilling become random tokens.
  config = tiny_config("bart")
  config.data.denoising.update(random_ratio=0.1)   # with the tiny config's infilling: BART's
  trainer.resolve_model_config(config)
  config.data.denoising.update(infill_ratio=0.0)
  with pytest.raises(ValueError, match=r"config.data.denoising.random_ratio=0.1 is invalid: it "
                                       r"makes a share of the \[MASK\]s"):
    trainer.resolve_model_config(config)


def test_flops_per_step_counts_every_scanned_layer_and_microbatch():
  # XLA's cost analysis counts a loop body once; the scanned layers and microbatches must not be.
  config = tiny_config("gpt")
  flops = {}
  for num_layers in (2, 4):
    config.model.update(num_layers=num_layers, scan_layers=True)
    config.train.microbatches = 2
    flops[num_layers] = trainer.flops_per_step(config)
  model = trainer.resolve_model_config(config)
  batch, length = config.train.global_batch_size, config.data.sequence_length
  h, m = model.hidden_size, model.mlp_dim
  # One block, forward + backward (x3): the dense layers 2*T*(4h^2 + 2hm) and the attention
  # scores and values 2*2*B*S^2*h; softmax, GELU and LayerNorm add ~3%.
  per_layer = 3 * (2 * batch * length * (4 * h * h + 2 * h * m) + 4 * batch * length**2 * h)
  np.testing.assert_allclose(flops[4] - flops[2], 2 * per_layer, rtol=0.05)


def test_flops_per_step_leaves_out_remat_recomputation():
  # MFU counts the model's FLOPs: a remat policy recomputes activations in the backward pass, more
  # arithmetic for the same step, and must not raise flops_per_step (and so the MFU) with it.
  config = tiny_config("gpt")
  flops = {}
  for policy in ("none", "full"):
    config.model.remat_policy = policy
    flops[policy] = trainer.flops_per_step(config)
  assert flops["full"] == flops["none"] > 0


def test_flops_per_step_on_the_devices_the_experiment_uses():
  # exported_step.py builds on one device of a host with more, its mesh fixed at 1x1x1: the FLOPs
  # must be lowered on that device too (on all 8 the mesh does not fit) and count the same step.
  config = tiny_config("gpt")
  config.mesh.update(data=1, fsdp=1, tensor=1)
  one_device = trainer.flops_per_step(config, jax.devices()[:1])
  config.mesh.data = -1
  assert one_device == trainer.flops_per_step(config) > 0


def test_fsdp_shards_params_and_optimizer_state():
  config = tiny_config("bert")
  config.mesh.update(data=1, fsdp=8, tensor=1)
  state = trainer.Experiment.build(config).init_state()
  leaves = jax.tree.leaves(state)
  replicated = sum(x.nbytes for x in leaves)
  per_device = {}
  for x in leaves:
    for shard in x.addressable_shards:
      per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
  assert max(per_device.values()) <= replicated / 6, (max(per_device.values()), replicated)
