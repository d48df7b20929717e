"""Checkpoints and fault tolerance: policies, resharding restore, exact resume after SIGKILL,
SIGTERM, kills during async saves, non-finite steps, and the messages for bad input.

Fast tests run in-process on the 8 fake CPU devices; slow ones run `ssl-jax train` as a
subprocess and kill it. Run as a script (`python tests/test_checkpointing.py kill_driver DIR N`)
this file is the driver of the kill-during-save test: it imports once and forks writers to kill;
with `second_sigterm_driver DIR`, the run of the second-SIGTERM test.
"""
import glob
import json
import logging
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf

from ssl_jax import checkpointing
from ssl_jax import config as config_lib
from ssl_jax import metrics
from ssl_jax import trainer
from ssl_jax import workdir as workdir_lib
from ssl_jax.data import pipeline

import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small enough for 2 cores: batch 8, a 300-document corpus, every step logged, no eval.
CLI_FLAGS = ("--config.train.global_batch_size=8", "--config.data.corpus.num_documents=300",
             "--config.data.shuffle_buffer=16", "--config.train.eval_steps=0",
             "--config.train.log_every=1", "--config.optim.warmup_steps=2")


def tiny_config(name: str) -> ml_collections.ConfigDict:
  """configs/<name>.py:tiny with CLI_FLAGS, as the CLI runs below parse them."""
  return helpers.cli_config(name, *CLI_FLAGS)


def bitwise_equal(a, b) -> bool:
  leaves_a, leaves_b = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
  return len(leaves_a) == len(leaves_b) and all(
      np.asarray(x).dtype == np.asarray(y).dtype and np.asarray(x).tobytes() ==
      np.asarray(y).tobytes() for x, y in zip(leaves_a, leaves_b))


def range_iterator() -> pipeline.DataIterator:
  """A real (tf.data-checkpointing) DataIterator over 0, 1, 2, ... as {'i': i}."""
  return pipeline.DataIterator(tf.data.Dataset.range(10**9).map(lambda i: {"i": i}), None)


# ---------------------------------------------------------------------------------------------
# Fast: the manager's policies, resharding restore, non-finite steps, bad input.


def test_log_spaced_checkpoints_are_kept_while_periodic_ones_rotate(tmp_path):
  train_cfg = ml_collections.ConfigDict(dict(
      save_every=3, keep_checkpoints=2, log_spaced_checkpoints=True, num_steps=20))
  manager = checkpointing.make_manager(str(tmp_path), train_cfg)
  it = range_iterator()
  saved = []
  for step in range(1, 21):
    next(it)
    if checkpointing.save(manager, step, {"w": np.full((4,), step, np.float32)}, it,
                          train_cfg, force=step == 20):
      saved.append(step)
  manager.wait_until_finished()
  assert saved == [1, 2, 3, 4, 6, 8, 9, 12, 15, 16, 18, 20]
  # The latest 2, and every power of two whatever its age.
  assert manager.all_steps() == [1, 2, 4, 8, 16, 18, 20]
  assert checkpointing.log_spaced_steps(20) == [1, 2, 4, 8, 16]
  it = range_iterator()
  state = checkpointing.restore(manager, 8, {"w": jax.ShapeDtypeStruct((4,), jnp.float32)},
                                {"w": jax.sharding.SingleDeviceSharding(jax.devices()[0])}, it)
  np.testing.assert_array_equal(state["w"], np.full((4,), 8))
  assert int(next(it)["i"]) == 8  # steps 1..8 read elements 0..7
  manager.close()
  # Readers (eval, probes) see the same steps and write nothing.
  reader = checkpointing.make_manager(str(tmp_path), train_cfg, read_only=True)
  assert reader.all_steps() == [1, 2, 4, 8, 16, 18, 20] and reader.latest_step() == 20
  assert checkpointing.make_manager(str(tmp_path / "new"), train_cfg,
                                    read_only=True).latest_step() is None
  assert not os.path.exists(tmp_path / "new")


@pytest.fixture(scope="module")
def bert_checkpoint(tmp_path_factory):
  """A BERT tiny checkpoint at step 1 written on mesh data=8, with what it holds."""
  config = tiny_config("bert")
  config.mesh.update(data=8, fsdp=1, tensor=1)
  exp = trainer.Experiment.build(config)
  state = exp.init_state()
  it = pipeline.make_iterator(config, "train", exp.batch_sharding)
  next(it)
  workdir = str(tmp_path_factory.mktemp("bert_ckpt"))
  manager = checkpointing.make_manager(workdir, config.train)
  checkpointing.save(manager, 1, state, it, config, force=True)
  manager.wait_until_finished()
  manager.close()
  return types.SimpleNamespace(config=config, workdir=workdir, state=jax.device_get(state),
                               next_batch=jax.device_get(next(it)))


@pytest.mark.parametrize("mesh, num_devices", [({"fsdp": 2, "tensor": 4}, 8), ({}, 1)],
                         ids=["fsdp2_tensor4", "one_device"])
def test_checkpoint_from_data8_restores_on_another_mesh(bert_checkpoint, mesh, num_devices):
  config = bert_checkpoint.config.copy_and_resolve_references()
  config.mesh.update({"data": 1, "fsdp": 1, "tensor": 1, **mesh})
  # A resumed run may change how the model trains, and turn gradient clipping off (or on).
  config.model.dropout_rate = 0.3
  config.optim.grad_clip_norm = 0.0
  exp = trainer.Experiment.build(config, devices=jax.devices()[:num_devices])
  manager = checkpointing.make_manager(bert_checkpoint.workdir, config.train, read_only=True)
  checkpointing.check_compatible(manager, 1, config, exp.layout, resume=True)
  it = pipeline.make_iterator(config, "train", exp.batch_sharding)
  state = checkpointing.restore(manager, 1, exp.layout.abstract, exp.layout.shardings, it)
  params = checkpointing.restore_params(manager, 1, exp.layout)
  manager.close()

  assert bitwise_equal(state, bert_checkpoint.state)
  assert bitwise_equal(params, bert_checkpoint.state.params)
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(exp.layout.shardings)):
    assert got.sharding == want
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(exp.layout.shardings.params)):
    assert got.sharding == want
  if num_devices > 1:  # the target layout really splits parameters
    assert any(s.spec != jax.sharding.PartitionSpec() and any(s.spec)
               for s in jax.tree.leaves(exp.layout.shardings.params))
  assert bitwise_equal(next(it), bert_checkpoint.next_batch)


def test_nonfinite_step_is_skipped_with_params_and_optimizer_state_unchanged(tmp_path, caplog):
  config = tiny_config("bert")
  # A learning rate that overflows: step 1 is finite but makes the weights ~1e30, so the
  # activations of step 2 overflow to inf and its loss and gradients are NaN.
  config.optim.update(learning_rate=1e30, grad_clip_norm=0.0, schedule="constant",
                      warmup_steps=0)
  config.train.on_nonfinite = "skip"
  exp = trainer.Experiment.build(config, devices=jax.devices()[:1])
  train_step = trainer.compile_train_step(exp)
  it = pipeline.make_iterator(config, "train", exp.batch_sharding)
  state = exp.init_state()
  steps = []
  for _ in range(3):
    before = jax.device_get(state)
    state, sums = train_step(state, next(it))
    steps.append((before, jax.device_get(state), float(sums["nonfinite_steps"][0]),
                  jax.device_get(sums)))
  (before_1, after_1, bad_1, sums_1), (before_2, after_2, bad_2, sums_2) = steps[:2]
  assert bad_1 == 0 and np.isfinite(sums_1["loss"][0]) and not bitwise_equal(after_1.params,
                                                                             before_1.params)
  # The skipped step's metrics stay out of the logged means: the row of steps 1-2 is step 1's.
  assert bad_2 == 1 and all(count == 0 for name, (_, count) in sums_2.items()
                            if name != "nonfinite_steps")
  window = metrics.normalize(metrics.merge([sums_1, sums_2]))
  assert window == {**metrics.normalize(sums_1), "nonfinite_steps": 0.5}
  # Said on the console too: a run that skipped every step finished with exit 0 and no warning.
  with metrics.MetricsLogger(tmp_path, num_steps=2, log_every=2) as logger:
    logger.train_step(1, sums_1)
    logger.train_step(2, sums_2)
  assert "steps 1-2: 1 of 2 had a non-finite loss or gradient and were skipped" in caplog.text
  assert bitwise_equal(after_2.params, before_2.params)
  assert bitwise_equal(after_2.opt_state, before_2.opt_state)
  assert int(after_2.step) == int(before_2.step) + 1 == 2  # next step draws new randomness
  assert steps[2][2] == 1 and bitwise_equal(steps[2][1].params, before_2.params)
  # The logged rate is the one each step's update read: the skipped step 2 held the schedule back,
  # so step 3 (skipped as well) still reads its step 1, not 2.
  assert [s[metrics.SCHEDULE_STEP][0] for *_, s in steps] == [0, 1, 1]
  with metrics.MetricsLogger(tmp_path / "lr", num_steps=3, log_every=1,
                             learning_rate_fn=lambda count: 1e-3 * count) as logger:
    for step, (*_, sums) in enumerate(steps, 1):
      logger.train_step(step, sums)
  rows = metrics.read_metrics(tmp_path / "lr", "train")
  assert [r["learning_rate"] for r in rows] == pytest.approx([0.0, 1e-3, 1e-3])
  assert np.isfinite(rows[0]["grad_norm"]) and "grad_norm" not in rows[1]


def test_a_second_run_in_a_workdir_is_refused_and_a_gone_runs_lock_taken_over(tmp_path, caplog):
  # Two trainers on one workdir (a job submitted twice): the second's Orbax manager deleted the
  # first's save in progress, and its logger cut the first's metrics.jsonl.
  workdir = tmp_path / "run"
  workdir.mkdir()
  lock = workdir / workdir_lib.LOCK_FILE
  other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
  try:
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid}))
    config = tiny_config("gpt")
    with pytest.raises(ValueError, match=rf"--workdir='{workdir}' is in use by another `ssl-jax "
                       rf"train` \(host .*, process {other.pid}; its lock .* was written "
                       rf"[0-9]+ s ago\)"):
      trainer.train_and_evaluate(config, str(workdir))
    assert sorted(os.listdir(workdir)) == [workdir_lib.LOCK_FILE]   # nothing opened
  finally:
    other.kill()
    other.wait()
  # Its process gone (a SIGKILL): taken over at once; held while the run trains, then removed.
  with caplog.at_level(logging.WARNING):
    with workdir_lib.lock(str(workdir)):
      assert json.loads(lock.read_text())["pid"] == os.getpid()
  assert "taking over the lock of a run that is gone" in caplog.text and not lock.exists()
  # Another host's: taken over once it has not been rewritten for stale_s (a requeue elsewhere).
  start = time.monotonic()
  lock.write_text(json.dumps({"host": "another-host", "pid": 1}))
  with workdir_lib.lock(str(workdir), stale_s=2):
    assert json.loads(lock.read_text())["host"] == socket.gethostname()
  assert 1 <= time.monotonic() - start < 60   # (the file's time is in whole seconds)


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_of_two_runs_locking_a_workdir_at_once_one_gets_it(tmp_path, scheme):
  # Both looked, found no lock and wrote one: both trained in the workdir. Here two threads (one
  # host, one live pid: whoever loses is refused) race to lock a fresh workdir, round after round.
  # A file:// URL takes the path of filesystems without exclusive create (gs://): written, then
  # read back.
  for round_ in range(10 if not scheme else 2):
    workdir = scheme + str(tmp_path / str(round_))
    tf.io.gfile.makedirs(workdir)
    barrier, results = threading.Barrier(2), []
    def take(workdir=workdir, barrier=barrier, results=results):
      barrier.wait()
      results.append(workdir_lib._take_lock(workdir, 60, workdir_lib._lock_content()))  # pylint: disable=protected-access
    threads = [threading.Thread(target=take) for _ in range(2)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    assert sorted(bool(r) for r in results) == [False, True], results
    assert "is in use by another `ssl-jax train`" in max(results)


def test_resume_between_log_rows_writes_the_uninterrupted_rows_and_eval_keeps_them(tmp_path,
                                                                                   caplog):
  # Checkpoints at 2, 4, 6, rows every 3 steps: the rows written at a checkpoint close the window,
  # so a run resumed from step 2 or 4 writes what an uninterrupted run writes. Evals (one batch)
  # at the checkpoints.
  flags = (*CLI_FLAGS, "--config.train.num_steps=6", "--config.train.save_every=2",
           "--config.train.log_every=3", "--config.optim.learning_rate=1e-3",
           "--config.train.eval_every=2", "--config.train.eval_steps=1")
  reference, resumed = tmp_path / "reference", tmp_path / "resumed"
  helpers.train_here("gpt", reference, *flags, num_devices=1)
  helpers.train_here("gpt", resumed, *flags, num_devices=1)
  for step in (4, 6):  # as if killed right after the step-2 checkpoint
    subprocess.run(["rm", "-r", str(resumed / "checkpoints" / str(step))], check=True)
  helpers.train_here("gpt", resumed, *flags, num_devices=1)
  want, got = train_rows(reference), train_rows(resumed)
  assert sorted(want) == [2, 3, 4, 6]
  for step in want:
    assert {k: v for k, v in got[step].items() if k not in ("step_time_s", "tokens_per_sec")} == {
        k: v for k, v in want[step].items() if k not in ("step_time_s", "tokens_per_sec")}, step
  # The logged rate is the one the row's step applied: warmup from 0 over 2 steps.
  assert [want[s]["learning_rate"] for s in (2, 3)] == pytest.approx([0.5e-3, 1e-3])

  # `ssl-jax eval` of an earlier checkpoint (a run still going) appends, and drops no row: with
  # the run's config.json, and with a --config that scores other examples.
  subprocess.run(["rm", "-r", str(reference / "checkpoints" / "6")], check=True)
  before = open(reference / "metrics.jsonl", encoding="utf-8").read()
  run_evals = metrics.read_metrics(reference, "eval")
  assert [r["step"] for r in run_evals] == [2, 4, 6]
  again = trainer.evaluate_workdir(None, str(reference))
  trainer.evaluate_workdir(helpers.cli_config("gpt", *flags, "--config.train.eval_steps=2"),
                           str(reference))
  # ... the second scoring another eval set than the run's: it says so
  assert ("config.train.eval_steps=2 (the checkpoint's: 1); this eval row scores other examples"
          in caplog.text)
  after = open(reference / "metrics.jsonl", encoding="utf-8").read()
  assert after.startswith(before)
  # Both rows are of step 4, as the run's own eval row there, and each names what it scored: the
  # task (the same data, from config.json and from --config) and the batches. A reader of the
  # 'eval' rows gets the run's.
  ours, theirs = [json.loads(line) for line in after[len(before):].splitlines()]
  assert ours["step"] == theirs["step"] == 4
  task = ours["split"].split()[2]
  assert task.startswith("ssl_jax_causal_lm_default_corpus_")
  assert ours["split"] == f"ssl-jax eval {task} 1x8"
  assert theirs["split"] == f"ssl-jax eval {task} 2x8"
  assert metrics.read_metrics(reference, "eval") == run_evals
  # The run's config.json scores the examples the run's eval did, with the step's params.
  assert {k: v for k, v in ours.items() if k != "split"} == pytest.approx(
      {k: v for k, v in run_evals[1].items() if k != "split"}, rel=1e-5)
  assert {k: v for k, v in ours.items() if k not in ("step", "split")} == pytest.approx(again)


def _mesh_not_device_count(config, tmp_path, checkpoint):
  config.mesh.update(data=3, fsdp=1, tensor=1)
  return config, str(tmp_path / "run")


def _batch_not_divisible(config, tmp_path, checkpoint):
  config.mesh.update(data=8, fsdp=1, tensor=1)
  config.train.global_batch_size = 12
  return config, str(tmp_path / "run")


def _sequence_beyond_positions(config, tmp_path, checkpoint):
  config.model.position_embedding = "learned"   # ALiBi (the tiny BERT's) has no table
  config.data.sequence_length = config.model.max_length + 1
  return config, str(tmp_path / "run")


def _workdir_not_writable(config, tmp_path, checkpoint):
  (tmp_path / "a_file").write_text("not a directory")
  return config, str(tmp_path / "a_file" / "run")


def _checkpoint_of_another_model(config, tmp_path, checkpoint):
  config = checkpoint.config.copy_and_resolve_references()
  config.model.mlp_dim = 2 * config.model.mlp_dim
  return config, checkpoint.workdir


def _checkpoint_of_another_function(config, tmp_path, checkpoint):
  config = checkpoint.config.copy_and_resolve_references()
  config.model.layer_norm_eps = 1e-6  # same parameter shapes, another function
  return config, checkpoint.workdir


def _checkpoint_of_another_optimizer(config, tmp_path, checkpoint):
  # Before clipping was always in the chain, a run with grad_clip_norm=0 saved AdamW's state alone.
  config = checkpoint.config.copy_and_resolve_references()
  workdir = str(tmp_path / "run")
  manager = checkpointing.make_manager(workdir, config.train)
  checkpointing.save(manager, 1, checkpoint.state.replace(opt_state=checkpoint.state.opt_state[1]),
                     range_iterator(), config, force=True)
  manager.wait_until_finished()
  manager.close()
  return config, workdir


def _checkpoint_of_another_vocabulary(config, tmp_path, checkpoint):
  config = checkpoint.config.copy_and_resolve_references()
  config.data.vocab.extra_ids = 50
  return config, checkpoint.workdir


def _checkpoint_of_other_batch_shapes(config, tmp_path, checkpoint):
  config = checkpoint.config.copy_and_resolve_references()
  config.data.sequence_length = 64  # the model fits; the saved data stream's batches do not
  return config, checkpoint.workdir


def _checkpoint_of_another_data_stream(config, tmp_path, checkpoint):
  config = checkpoint.config.copy_and_resolve_references()
  config.data.seed = 7
  config.data.corpus.num_documents = 65
  config.data.tfds_data_dir = "/elsewhere"   # where TFDS keeps files: the same stream
  return config, checkpoint.workdir


def _checkpoint_of_another_seed(config, tmp_path, checkpoint):
  # A seed sweep reusing a workdir resumed seed 0's params under seed 7's dropout, silently.
  config = checkpoint.config.copy_and_resolve_references()
  config.train.seed = 7
  return config, checkpoint.workdir


def _text_file_missing(config, tmp_path, checkpoint):
  config.data.update(source="text_files", text_files=str(tmp_path / "missing.txt"))
  return config, str(tmp_path / "run")


def _workdir_of_a_hf_model(config, tmp_path, checkpoint):
  # e.g. `finetune --init hf:D --workdir D`: D's config.json was replaced, breaking the model.
  (tmp_path / "config.json").write_text('{"model_type": "bert", "hidden_size": 384}')
  return config, str(tmp_path)


def _one_token_type_with_nsp(config, tmp_path, checkpoint):
  config.model.type_vocab_size = 1
  return config, str(tmp_path / "run")


BAD_INPUTS = {
    "mesh_not_device_count": (_mesh_not_device_count, [
        "config.mesh", "data=3", "8 are available", "product"]),
    "batch_not_divisible": (_batch_not_divisible, [
        "config.train.global_batch_size=12", "8 data-parallel devices", "multiple of 8"]),
    "sequence_beyond_positions": (_sequence_beyond_positions, [
        "config.data.sequence_length=129", "128 positions", "config.model.max_length"]),
    "workdir_not_writable": (_workdir_not_writable, [
        "--workdir=", "a_file/run", "not writable", "pass a directory you can write"]),
    "checkpoint_of_another_model": (_checkpoint_of_another_model, [
        "parameter bert/encoder/layers_0/mlp/wi/bias", "(512,)", "(1024,)",
        "config.model.mlp_dim=1024 (the checkpoint's: 512)", "match config.model"]),
    "checkpoint_of_another_function": (_checkpoint_of_another_function, [
        "config.model.layer_norm_eps=1e-06 (the checkpoint's: 1e-12)", "Match config.model",
        "may change only config.model.{dtype,"]),
    "checkpoint_of_another_optimizer": (_checkpoint_of_another_optimizer, [
        "optimizer state of the checkpoint at step 1", "opt_state/0/count is only in the "
        "checkpoint", "another version of ssl_jax", "or use a fresh --workdir"]),
    "checkpoint_of_another_vocabulary": (_checkpoint_of_another_vocabulary, [
        "config.data.vocab=", "'extra_ids': 100", "'extra_ids': 50", "checkpoint's vocabulary"]),
    "checkpoint_of_other_batch_shapes": (_checkpoint_of_other_batch_shapes, [
        "config.data.sequence_length=64 (the checkpoint's: 128)",
        "Resume with the checkpoint's data settings"]),
    # The restored tf.data position went on with the old stream (a seed change), or failed
    # inside tf.data many steps later (another corpus size or text file).
    "checkpoint_of_another_data_stream": (_checkpoint_of_another_data_stream, [
        "another data stream", "config.data.corpus.num_documents=65 (the checkpoint's: 300)",
        "config.data.seed=7 (the checkpoint's: 0)", "Resume with the checkpoint's data settings"]),
    "checkpoint_of_another_seed": (_checkpoint_of_another_seed, [
        "trained with other seeds", "config.train.seed=7 (the checkpoint's: 0)",
        "Resume with the checkpoint's seeds"]),
    # Read before compiling, though only reading the data finds it.
    "text_file_missing": (_text_file_missing, [
        "config.data.text_files", "missing.txt", "does not exist"]),
    "workdir_of_a_hf_model": (_workdir_of_a_hf_model, [
        "holds a config.json that is not an ssl_jax training run's", "Pass a new --workdir"]),
    "one_token_type_with_nsp": (_one_token_type_with_nsp, [
        "config.model.type_vocab_size=1", "token types 0 and 1", "sentence_task='none'"]),
}


def test_resume_with_another_objective_is_refused(tmp_path):
  # Span corruption and denoising train the same T5/BART models, so the model checks passed and
  # the restored tf.data position of the old stream failed inside tf.data, naming no setting.
  config = tiny_config("t5")
  helpers.save_untrained_run(str(tmp_path), config, jax.devices()[:1])
  config.objective = "denoising"
  exp = trainer.Experiment.build(config, jax.devices()[:1])
  manager = checkpointing.make_manager(str(tmp_path), config.train, read_only=True)
  with pytest.raises(ValueError, match=r"config.objective='denoising' \(the checkpoint's: "
                     r"'span_corruption'\).*Set config.objective='span_corruption'"):
    checkpointing.check_compatible(manager, 1, config, exp.layout, resume=True)
  manager.close()
  # `ssl-jax eval` too: its row would go into the run's metrics.jsonl as if of the run.
  config.train.eval_steps = 1
  with pytest.raises(ValueError, match=r"config.objective='denoising' .*eval row would go into "
                     r"the run's metrics.jsonl"):
    trainer.evaluate_workdir(config, str(tmp_path))


def test_a_vocabulary_file_replaced_after_training_is_refused_by_its_readers(tmp_path):
  # config.json names the vocabulary file only: a file retrained or edited in place (here two
  # pieces swapped, same size) was read as the run's, every token id meaning another piece.
  from ssl_jax.data import vocabularies   # pylint: disable=g-import-not-at-top
  from ssl_jax.probes import subject   # pylint: disable=g-import-not-at-top
  path = tmp_path / "vocab.txt"
  lines = open(vocabularies.default_vocabulary_path(), encoding="utf-8").read().splitlines()
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  config = tiny_config("gpt")
  config.data.vocab.update(kind="wordpiece", path=str(path))
  run = str(tmp_path / "run")
  helpers.save_untrained_run(run, config, jax.devices()[:1])
  recorded = json.load(open(os.path.join(run, "config.json")))["data"]["vocab"]["fingerprint"]
  exp = trainer.Experiment.build(config, jax.devices()[:1])
  manager = checkpointing.make_manager(run, config.train, read_only=True)
  checkpointing.check_compatible(manager, 1, config, exp.layout, resume=True)   # unchanged: fine
  i, j = lines.index("the"), lines.index("a")
  lines[i], lines[j] = lines[j], lines[i]
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  vocabularies._vocabulary.cache_clear()   # pylint: disable=protected-access  (a new process)
  message = rf"vocab.path='{path}' has other pieces .*fingerprint='{recorded}'.*Restore the file"
  with pytest.raises(ValueError, match=message):   # resume, eval, --init of a run
    checkpointing.check_compatible(manager, 1, config, exp.layout, resume=True)
  manager.close()
  with pytest.raises(ValueError, match=message):   # probe, convert
    _ = subject.Subject.from_workdir(run).experiment


def test_resume_without_log_spaced_checkpoints_would_delete_them_and_is_refused(tmp_path, caplog):
  # The probe workflow trains with log_spaced_checkpoints=True; extending the run without the
  # flag (default False) deleted checkpoints 1, 2, 4 at the next saves, silently.
  config = tiny_config("gpt")
  config.train.update(log_spaced_checkpoints=True, keep_checkpoints=1, num_steps=8)
  exp = trainer.Experiment.build(config, jax.devices()[:1])
  state = exp.init_state()
  manager = checkpointing.make_manager(str(tmp_path), config.train, enable_async=False)
  for step in (1, 2, 3):
    checkpointing.save(manager, step, state.replace(step=step),
                       pipeline.DataIterator(tf.data.Dataset.range(3), None), config, force=True)
  assert manager.all_steps() == [1, 2, 3]
  config.train.update(log_spaced_checkpoints=False, num_steps=12)
  with pytest.raises(ValueError, match=r"config.train.log_spaced_checkpoints=False.*delete those "
                     r"at steps \[1, 2\]"):
    checkpointing.check_compatible(manager, 3, config, exp.layout, resume=True)
  config.train.log_spaced_checkpoints = True
  with caplog.at_level(logging.WARNING):
    checkpointing.check_compatible(manager, 3, config, exp.layout, resume=True)
  # Extending the run stretched its decaying learning rate without a word.
  assert ("config.train.num_steps=12 (the checkpoint's: 8): the linear learning-rate decay now "
          "ends at step 12") in caplog.text, caplog.text
  # A longer warmup than the checkpoint's num_steps is a valid extension; the warning built the
  # checkpoint's schedule from the new warmup, and refused the resume for a num_steps not given.
  caplog.clear()
  config.optim.warmup_steps = 10
  with caplog.at_level(logging.WARNING):
    checkpointing.check_compatible(manager, 3, config, exp.layout, resume=True)
  assert "trains at 0.0006 where the checkpoint's schedule gave" in caplog.text, caplog.text
  caplog.clear()
  config.train.num_steps = 2   # below the checkpoint: nothing to train, no schedule to warn of
  with caplog.at_level(logging.WARNING):
    checkpointing.check_compatible(manager, 3, config, exp.layout, resume=True)
  assert "learning-rate decay" not in caplog.text, caplog.text
  manager.close()


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_before_compiling_with_a_message(case, tmp_path, request,
                                                             monkeypatch):
  make, expected = BAD_INPUTS[case]
  checkpoint = request.getfixturevalue("bert_checkpoint") if "checkpoint" in case else None
  config, workdir = make(tiny_config("bert"), tmp_path, checkpoint)
  compiled = []
  original = trainer.compile_train_step
  # A spy, not a stand-in: it records whether the step got compiled before the error.
  monkeypatch.setattr(trainer, "compile_train_step",
                      lambda exp: compiled.append(1) or original(exp))
  with pytest.raises((ValueError, FileNotFoundError)) as error:
    trainer.train_and_evaluate(config, workdir)
  for text in expected:
    assert text in str(error.value), (text, str(error.value))
  assert not compiled


def test_eval_without_eval_steps_is_refused(bert_checkpoint, tmp_path):
  config = bert_checkpoint.config.copy_and_resolve_references()
  config.train.eval_steps = 0  # it appended an empty eval row
  with pytest.raises(ValueError, match="config.train.eval_steps=0: `ssl-jax eval` scores"):
    trainer.evaluate_workdir(config, bert_checkpoint.workdir)
  # A fine-tuning run is refused by name, with or without --config. A text-to-text one trains
  # span corruption: given a T5 --config, eval appended a pretraining row to its metrics.jsonl,
  # whose last eval row is the fine-tuning's score.
  t2t = config_lib.load_config_file(os.path.join(REPO, "configs/finetune/text_to_text.py"), "tiny")
  for finetune, objective in (("sst2.py", "classification"), ("text_to_text.py:tiny",
                                                                "span_corruption")):
    path, _, variant = finetune.partition(":")
    saved = config_lib.load_config_file(os.path.join(REPO, "configs/finetune", path), variant)
    (tmp_path / "config.json").write_text(saved.to_json_best_effort())
    for given in (None, config_lib.load_config_file(os.path.join(REPO, "configs/t5.py"), "tiny")):
      with pytest.raises(ValueError, match=rf"holds a fine-tuning run \(objective '{objective}', "
                         r"--init 'none'\); `ssl-jax eval` reads pretraining runs"):
        trainer.evaluate_workdir(given, str(tmp_path))
  with pytest.raises(ValueError, match="--config is a fine-tuning config"):
    trainer.evaluate_workdir(t2t, bert_checkpoint.workdir)
  # Another family's config: the error listed a missing parameter and a dozen model fields, and
  # asked to match config.model to the checkpoint's.
  gpt = config_lib.load_config_file(os.path.join(REPO, "configs/gpt.py"), "tiny")
  gpt.data.vocab = bert_checkpoint.config.data.vocab
  with pytest.raises(ValueError, match=r"config.model.family='gpt' \(the checkpoint's: 'bert'\): "
                     r".* holds a bert model, trained with objective 'mlm'; use a config of that "
                     r"family \(configs/bert.py\)"):
    trainer.evaluate_workdir(gpt, bert_checkpoint.workdir)


def test_console_script_help_lists_the_commands_and_flags():
  # Under the console script __main__ is a wrapper: --help printed one USAGE line.
  code = "import sys; from ssl_jax import main; sys.argv = ['ssl-jax', '--help']; main.run()"
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  for text in ("ssl-jax train --config", "ssl-jax eval-suite", "--workdir: Run directory",
               "--init:"):
    assert text in result.stdout, result.stdout


def test_cli_refuses_a_json_config():
  # A run's config.json as --config was executed as Python: "NameError: name 'false'".
  from ssl_jax import main  # pylint: disable=g-import-not-at-top
  for argv in (["--config=run/config.json"], ["--config", "run/config.json:tiny"]):
    with pytest.raises(SystemExit, match=r"--config=run/config.json(:tiny)? is a JSON file; "
                       r"--config takes a Python config file"):
      main._parse_flags(["ssl-jax", "train", *argv, "--workdir=w"])
  # Overrides without --config (`ssl-jax eval` reads the run's config.json): "Unknown command
  # line flag".
  with pytest.raises(SystemExit, match=r"--config.train.eval_steps overrides a config, but no "
                     r"--config names one"):
    main._parse_flags(["ssl-jax", "eval", "--workdir=w", "--config.train.eval_steps=3"])


def test_cli_names_an_unknown_config_key(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "ssl_jax.main", "train", "--config=configs/bert.py:tiny",
       f"--workdir={tmp_path}", "--config.train.num_stepz=5"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  message = result.stderr.strip().splitlines()[-1]
  for text in ("--config.train.num_stepz", "'num_stepz'", 'Did you mean "num_steps"',
               "fix the spelling"):
    assert text in message, message
  # A config file without get_config was reported as an override of a key it lacks.
  (tmp_path / "no_get_config.py").write_text("LEARNING_RATE = 1e-3\n")
  result = subprocess.run(
      [sys.executable, "-m", "ssl_jax.main", "train", f"--config={tmp_path}/no_get_config.py",
       f"--workdir={tmp_path}/run"], cwd=REPO, capture_output=True, text=True, timeout=300)
  message = result.stderr.strip().splitlines()[-1]
  assert result.returncode != 0 and "defines no get_config" in message, message
  assert "override" not in message, message


def test_cli_refuses_another_commands_flags(tmp_path):
  # `ssl-jax train --init RUN` trained from random weights, `ssl-jax eval --steps 1` scored the
  # latest checkpoint: flags of other commands were ignored.
  result = subprocess.run(
      [sys.executable, "-m", "ssl_jax.main", "train", "--config=configs/bert.py:tiny",
       f"--workdir={tmp_path}", f"--init={tmp_path}/pretrained"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  # The one line came under absl's 60-line usage page, after TensorFlow and JAX had started.
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      "FATAL Flags parsing error: --init is not a flag of `ssl-jax train` (it is for: finetune, "
      "eval-suite); remove it."], result.stderr
  assert not os.listdir(tmp_path)
  result = subprocess.run([sys.executable, "-m", "ssl_jax.main", "finetune",
                           "--config=configs/finetune/sst2.py"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.stderr.strip().splitlines() == [
      "FATAL Flags parsing error: `ssl-jax finetune` needs --workdir and --init; see "
      "`ssl-jax --help`."], result.stderr
  # An override without its dashes was an argument nobody read: the run trained with the default.
  result = subprocess.run(
      [sys.executable, "-m", "ssl_jax.main", "train", "--config=configs/bert.py:tiny",
       f"--workdir={tmp_path}", "config.train.num_steps=1"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.stderr.strip().splitlines() == [
      "FATAL Flags parsing error: `ssl-jax train` takes no arguments besides its flags, but got "
      "'config.train.num_steps=1'; a config override needs its dashes: "
      "--config.train.num_steps=1"], result.stderr
  # A config file that does not exist: two chained tracebacks, 38 lines.
  result = subprocess.run(
      [sys.executable, "-m", "ssl_jax.main", "train", "--config=configs/nope.py:tiny",
       f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.stderr.strip().splitlines() == [
      f"FATAL Flags parsing error: --config=configs/nope.py:tiny names configs/nope.py, which does "
      f"not exist (the working directory is {REPO}); pass a config file, e.g. "
      "--config=configs/bert.py:tiny."], result.stderr
  assert not os.listdir(tmp_path)


# ---------------------------------------------------------------------------------------------
# Slow: the CLI killed and re-run.


def start_cli(name: str, workdir, *flags: str) -> subprocess.Popen:
  """`ssl-jax train` on one CPU device (as a user runs it; quicker than conftest's 8 fake ones)."""
  log = open(f"{workdir}.log", "w", encoding="utf-8")  # pylint: disable=consider-using-with
  xla_flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "",
                     os.environ.get("XLA_FLAGS", "")).strip()
  return subprocess.Popen(
      [sys.executable, "-m", "ssl_jax.main", "train", f"--config=configs/{name}.py:tiny",
       f"--workdir={workdir}", *flags], cwd=REPO, stdout=log,
      stderr=subprocess.STDOUT, env={**os.environ, "XLA_FLAGS": xla_flags})


def wait_ok(process: subprocess.Popen, workdir) -> None:
  code = process.wait(timeout=900)
  with open(f"{workdir}.log", encoding="utf-8") as f:
    assert code == 0, f.read()[-5000:]


def wait_for(path: str, process: subprocess.Popen, timeout_s: float = 900) -> None:
  deadline = time.monotonic() + timeout_s
  while not os.path.exists(path):
    assert process.poll() is None, f"exited ({process.returncode}) before {path} appeared"
    assert time.monotonic() < deadline, f"no {path} after {timeout_s} s"
    time.sleep(0.02)


def train_rows(workdir) -> dict:
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"),
                                            encoding="utf-8")]
  steps = [r["step"] for r in rows if r["split"] == "train"]
  assert len(steps) == len(set(steps)), steps  # a resumed run rewrites no step twice
  return {r["step"]: r for r in rows if r["split"] == "train"}


def checkpoint_steps(workdir) -> list:
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def saved_state(workdir, step: int):
  return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step),
                                                         "state"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "t5"])
def test_resume_after_sigkill_gives_the_uninterrupted_losses(name, tmp_path, caplog):
  """SIGKILL after the step-k checkpoint, then a re-run. For BERT that re-run is stopped by SIGTERM
  (a preemption: it saves the step it is at and exits 0). The last run, and an uninterrupted run of
  the same flags, train in this process on one device (bit for bit what a 1-device CLI process
  computes): every step's metrics and the final state are equal."""
  k = 6
  flags = (*CLI_FLAGS, f"--config.train.num_steps={3 * k}", f"--config.train.save_every={k}")
  reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
  killed = start_cli(name, resumed_dir, *flags)
  wait_for(os.path.join(resumed_dir, "checkpoints", str(k)), killed)
  killed.send_signal(signal.SIGKILL)
  assert killed.wait() == -signal.SIGKILL
  assert checkpoint_steps(resumed_dir) == [k]
  stopped = k
  if name == "bert":
    stopped = preempt(start_cli(name, resumed_dir, *flags), resumed_dir, after_step=k + 1)
    assert k < stopped < 3 * k and stopped in checkpoint_steps(resumed_dir)
  with caplog.at_level(logging.INFO):
    helpers.train_here(name, resumed_dir, *flags, num_devices=1)
  assert f"resumed from step {stopped} " in caplog.text
  helpers.train_here(name, reference_dir, *flags, num_devices=1)

  want, got = train_rows(reference_dir), train_rows(resumed_dir)
  assert sorted(got) == sorted(want) == list(range(1, 3 * k + 1))
  for step in want:
    for key, value in want[step].items():
      if key not in ("step_time_s", "tokens_per_sec"):
        assert got[step][key] == value, (step, key, got[step][key], value)
  assert bitwise_equal(saved_state(resumed_dir, 3 * k), saved_state(reference_dir, 3 * k))


def preempt(process: subprocess.Popen, workdir, after_step: int) -> int:
  """SIGTERM to a training run once its console shows `after_step`; checks that the run saves the
  step it stops at and exits 0. Returns that step."""
  log = f"{workdir}.log"  # this process's output alone (start_cli rewrites it)
  while f"step {after_step}/" not in open(log, encoding="utf-8").read():
    assert process.poll() is None, open(log, encoding="utf-8").read()[-5000:]
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  wait_ok(process, workdir)
  stopped = max(train_rows(workdir))
  with open(log, encoding="utf-8") as f:
    assert f"saving a checkpoint at step {stopped} and stopping" in f.read()
  return stopped


def test_nonfinite_abort_raises_and_keeps_only_the_checkpoints_before_the_bad_step(tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(trainer.NonFiniteLossError) as error:  # `ssl-jax train` exits with it
    helpers.train_here(
        "bert", workdir, *CLI_FLAGS, "--config.train.num_steps=6", "--config.train.save_every=1",
        "--config.train.on_nonfinite=abort", "--config.optim.learning_rate=1e30",
        "--config.optim.grad_clip_norm=0", "--config.optim.schedule=constant",
        "--config.optim.warmup_steps=0", num_devices=1)
  rows = train_rows(workdir)
  bad = min(step for step, row in rows.items() if row["nonfinite_steps"] > 0)
  assert str(error.value).startswith(f"step {bad}: the loss or a gradient is not finite")
  assert "config.train.on_nonfinite='skip'" in str(error.value)
  assert checkpoint_steps(workdir) == list(range(1, bad))


@pytest.mark.slow
def test_sigterm_saves_and_stops_the_callers_too(tmp_path):
  # train_and_evaluate returned normally after a preemption's save, so fine-tuning scored the
  # half-trained state as its final eval_results.json, and eval-suite went on to train its next
  # task, then wrote the table and exited 0. It raises `Preempted` now, after the save.
  config = helpers.cli_config("gpt", *CLI_FLAGS, "--config.train.num_steps=50",
                              "--config.train.eval_every=2", "--config.train.save_every=100")
  workdir = str(tmp_path / "run")

  def evaluate_fn(params, step, logger):
    del params, logger
    if step == 2:   # a real SIGTERM, to this process, mid-run
      os.kill(os.getpid(), signal.SIGTERM)

  exp = trainer.Experiment.build(config, devices=jax.devices()[:1])
  with pytest.raises(checkpointing.Preempted, match="stopped at step 2, after saving"):
    trainer.train_and_evaluate(config, workdir, exp=exp, evaluate_fn=evaluate_fn)
  manager = checkpointing.make_manager(workdir, config.train, read_only=True)
  assert manager.all_steps() == [2]
  manager.close()


@pytest.mark.slow
def test_a_second_sigterm_cannot_cut_the_preemption_checkpoint_short(tmp_path):
  # A launcher and the scheduler may both signal a job. The preemption's save is asynchronous;
  # train_and_evaluate restored the default SIGTERM handler before it waited for that save, so a
  # second SIGTERM then killed the process with its last checkpoint half-written.
  result = subprocess.run(
      [sys.executable, os.path.abspath(__file__), "second_sigterm_driver", str(tmp_path)],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**os.environ, "XLA_FLAGS": "", "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  assert result.stdout.strip().splitlines()[-1] == "preempted at step 2"
  assert checkpoint_steps(tmp_path) == [2]
  assert int(saved_state(tmp_path, 2)["step"]) == 2


def _second_sigterm_driver(workdir: str) -> None:
  """A GPT run that gets SIGTERM at step 2, and again whenever it waits for Orbax's saves: while
  its preemption checkpoint completes."""
  wait = ocp.CheckpointManager.wait_until_finished
  def signalled_wait(manager):
    os.kill(os.getpid(), signal.SIGTERM)
    wait(manager)
  ocp.CheckpointManager.wait_until_finished = signalled_wait

  def evaluate_fn(params, step, logger):
    del params, logger
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)

  config = helpers.cli_config("gpt", *CLI_FLAGS, "--config.train.num_steps=50",
                              "--config.train.eval_every=2", "--config.train.save_every=100")
  try:
    trainer.train_and_evaluate(config, workdir, evaluate_fn=evaluate_fn)
  except checkpointing.Preempted as stop:
    print(f"preempted at step {stop.step}")


def test_sigkill_during_async_saves_never_leaves_a_partial_latest_checkpoint(tmp_path):
  kills = 8
  start = time.monotonic()
  result = subprocess.run(
      [sys.executable, os.path.abspath(__file__), "kill_driver", str(tmp_path), str(kills)],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**os.environ, "XLA_FLAGS": "", "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  records = json.loads(result.stdout.strip().splitlines()[-1])
  print(f"{kills} kills in {time.monotonic() - start:.0f} s: {records}")
  assert len(records) == kills + 1
  for killed, restarted in zip(records, records[1:]):
    # The restart sees every checkpoint that was complete when the writer died, and only those.
    assert restarted["finalized_at_start"] == killed["finalized_after_kill"]
    assert restarted["latest"] == max(killed["finalized_after_kill"], default=None)
    assert restarted["restored_ok"], restarted
  assert records[-1]["latest"] > records[1]["latest"]  # progress across restarts
  # Most kills landed in the middle of a save (its temporary directory was left behind).
  assert sum(bool(r["tmp_after_kill"]) for r in records[:-1]) >= kills // 2, records


# ---------------------------------------------------------------------------------------------
# The kill driver (run as a script by the test above).

_SHAPE = (1024, 2048)  # two 8 MiB arrays of random values: a save takes a measurable time


def _finalized(workdir) -> list:
  return checkpoint_steps(workdir) if os.path.isdir(os.path.join(workdir, "checkpoints")) else []


def _state_at(step: int) -> dict:
  keys = jax.random.split(jax.random.key(step))
  return {"a": jax.random.normal(keys[0], _SHAPE), "b": jax.random.normal(keys[1], _SHAPE),
          "step": jnp.int32(step)}


def _writer(workdir: str, report_fd: int) -> None:
  """Restores the latest checkpoint, checks it, reports, then saves every step forever."""
  train_cfg = ml_collections.ConfigDict(dict(
      save_every=1, keep_checkpoints=2, log_spaced_checkpoints=False, num_steps=10**6))
  finalized = _finalized(workdir)  # before the manager deletes temporary directories
  manager = checkpointing.make_manager(workdir, train_cfg)
  latest = manager.latest_step()
  it = range_iterator()
  expected = _state_at(latest or 0)  # also compiles _state_at before the clock starts
  if latest is not None:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    expected = bitwise_equal(expected, checkpointing.restore(
        manager, latest, jax.eval_shape(_state_at, 0),
        jax.tree.map(lambda _: sharding, expected), it))
  restored_ok = bool(expected) and int(next(it)["i"]) == (latest or 0)
  os.write(report_fd, (json.dumps({"latest": latest, "finalized_at_start": finalized,
                                   "restored_ok": restored_ok}) + "\n").encode())
  step = (latest or 0) + 1
  while True:  # the element read for `step` is consumed; the position saved is the next one
    checkpointing.save(manager, step, _state_at(step), it, train_cfg, force=True)
    next(it)
    step += 1


def _kill_driver(workdir: str, kills: int, seed: int = 0) -> list:
  """Forks a writer `kills + 1` times, SIGKILLs each (but the last) at a random moment of its
  saving, and returns what each writer found at start and what each kill left on disk."""
  rng = random.Random(seed)
  records = []
  for i in range(kills + 1):
    read_fd, write_fd = os.pipe()
    pid = os.fork()  # the parent never touched a device, so the child starts a clean runtime
    if pid == 0:
      os.close(read_fd)
      try:
        _writer(workdir, write_fd)
      except BaseException:  # pylint: disable=broad-except
        traceback.print_exc()
      finally:
        os._exit(1)  # pylint: disable=protected-access
    os.close(write_fd)
    ready, _, _ = select.select([read_fd], [], [], 120)
    assert ready, "writer did not start"
    record = json.loads(os.read(read_fd, 1 << 16).decode())
    os.close(read_fd)
    time.sleep(rng.uniform(0.2, 2.0))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    record["tmp_after_kill"] = sorted(
        os.path.basename(p) for p in glob.glob(os.path.join(workdir, "checkpoints", "*tmp*")))
    record["finalized_after_kill"] = _finalized(workdir)
    records.append(record)
  return records


if __name__ == "__main__" and sys.argv[1:2] == ["kill_driver"]:
  print(json.dumps(_kill_driver(sys.argv[2], int(sys.argv[3]))))
if __name__ == "__main__" and sys.argv[1:2] == ["second_sigterm_driver"]:
  _second_sigterm_driver(sys.argv[2])
