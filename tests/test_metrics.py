"""Metric normalization and the metrics.jsonl / TensorBoard logger."""
import glob
import json
import os
import time

import jax.numpy as jnp
import pytest

from ssl_jax import metrics


def _sums(loss, count=1.0, accuracy=None):
  sums = {"loss": (jnp.float32(loss * count), jnp.float32(count))}
  if accuracy is not None:
    sums["mlm_accuracy"] = (jnp.float32(accuracy * count), jnp.float32(count))
  return sums


def test_normalize_divides_and_skips_empty_metrics():
  sums = {"loss": (jnp.float32(6.0), jnp.float32(3.0)), "nsp_accuracy": (jnp.float32(0.0), 0)}
  assert metrics.normalize(sums) == {"loss": 2.0}


def test_merge_adds_sums_and_counts():
  merged = metrics.merge([_sums(1.0, count=1), _sums(4.0, count=3)])
  assert merged == {"loss": (13.0, 4.0)}
  assert metrics.normalize(merged) == {"loss": 13.0 / 4.0}


def test_logger_writes_rows_one_step_late(tmp_path):
  lr = lambda step: 0.1 * step
  logger = metrics.MetricsLogger(tmp_path, num_steps=5, log_every=2, tokens_per_step=128,
                                 learning_rate_fn=lr)
  logger.train_step(1, _sums(2.0, accuracy=0.5))
  logger.train_step(2, _sums(4.0, accuracy=1.0))
  assert metrics.read_metrics(tmp_path) == []  # step 2 is not fetched until step 3 is handed over
  logger.train_step(3, _sums(1.0))
  assert [row["step"] for row in metrics.read_metrics(tmp_path)] == [2]
  logger.train_step(4, _sums(1.0))
  logger.train_step(5, _sums(7.0))
  eval_row = logger.write_eval(5, [_sums(3.0, count=2), _sums(0.0, count=2)])
  logger.close()

  rows = metrics.read_metrics(tmp_path)
  assert [(r["step"], r["split"]) for r in rows] == [(2, "train"), (4, "train"), (5, "eval"),
                                                      (5, "train")]
  first = rows[0]
  assert first["loss"] == pytest.approx(3.0)  # mean over the window's steps 1 and 2
  assert first["mlm_accuracy"] == pytest.approx(0.75)
  assert first["learning_rate"] == pytest.approx(0.1)  # step 2 applied the schedule at 1
  assert first["step_time_s"] > 0
  assert first["tokens_per_sec"] == pytest.approx(128 / first["step_time_s"])
  assert "mlm_accuracy" not in rows[1]
  assert eval_row == {"loss": 1.5} and rows[2]["loss"] == 1.5
  assert metrics.read_metrics(tmp_path, "train")[-1]["loss"] == pytest.approx(7.0)
  assert glob.glob(os.path.join(tmp_path, "tensorboard", "events.out.tfevents.*"))


def test_paused_time_is_not_step_time(tmp_path):
  # An eval at the end of a window counted into its step_time_s (2-3x lower tokens/s).
  logger = metrics.MetricsLogger(tmp_path, num_steps=4, log_every=2, tokens_per_step=128)
  for step in range(1, 5):
    logger.train_step(step, _sums(1.0))
    if step == 2:
      with logger.paused(wait_for=_sums(1.0)):
        time.sleep(1.0)
  logger.close()
  first, second = metrics.read_metrics(tmp_path, "train")
  assert first["step_time_s"] < 0.2 and second["step_time_s"] < 0.2, (first, second)


def test_non_finite_metrics_are_strict_json_nulls_read_back_as_nan(tmp_path):
  with metrics.MetricsLogger(tmp_path, num_steps=2, log_every=1) as logger:
    logger.write_eval(1, {"loss": (float("nan"), 1.0), "token_accuracy": (0.5, 1.0)})
  with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
    line = f.read()
  assert "NaN" not in line
  json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
  row = metrics.read_metrics(tmp_path, "eval")[0]
  assert row["loss"] != row["loss"] and row["token_accuracy"] == 0.5   # NaN
  # A fine-tuning run's eval_results.json too (a diverged run's scores are NaN).
  metrics.write_results(str(tmp_path), {"task": "sst2", "scores": {"accuracy": float("nan"),
                                                                   "f1": [0.5, float("inf")]}})
  with open(os.path.join(tmp_path, metrics.RESULTS_FILE)) as f:
    results = json.load(f, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
  assert results == {"task": "sst2", "scores": {"accuracy": None, "f1": [0.5, None]}}


def test_a_replaced_eval_row_is_the_one_of_its_step_with_the_same_metrics(tmp_path):
  # A re-scored fine-tuning run appended another final row each time.
  with metrics.MetricsLogger(tmp_path, num_steps=3, log_every=1) as logger:
    logger.write_eval(3, {"loss": (2.0, 1.0)})   # the trainer's
    logger.write_eval(3, {"accuracy": (0.5, 1.0)})   # the task's
  with metrics.MetricsLogger(tmp_path, num_steps=3, log_every=1, start_step=3) as logger:
    logger.write_eval(3, {"accuracy": (0.75, 1.0)}, replace=True)
  assert [(r["step"], r.get("loss"), r.get("accuracy")) for r in metrics.read_metrics(tmp_path)] == [
      (3, 2.0, None), (3, None, 0.75)]


def test_resume_drops_rows_after_start_step(tmp_path):
  with metrics.MetricsLogger(tmp_path, num_steps=6, log_every=1) as logger:
    for step in range(1, 5):
      logger.train_step(step, _sums(float(step)))
  with open(os.path.join(tmp_path, "metrics.jsonl"), "a") as f:
    f.write('{"step": 5, "spl')  # torn line from a crash mid-write
  with metrics.MetricsLogger(tmp_path, num_steps=6, log_every=1, start_step=2) as logger:
    logger.train_step(3, _sums(30.0))
  assert [(r["step"], r["loss"]) for r in metrics.read_metrics(tmp_path)] == [
      (1, 1.0), (2, 2.0), (3, 30.0)]


def test_a_row_appended_after_a_cut_line_stays_its_own_line(tmp_path):
  # `ssl-jax eval` appends (truncate=False): its row was glued onto a line cut by a crash, and
  # the file no longer parsed (the next resume then dropped the eval row with the cut line).
  with metrics.MetricsLogger(tmp_path, num_steps=4, log_every=1) as logger:
    for step in range(1, 3):
      logger.train_step(step, _sums(float(step)))
  with open(os.path.join(tmp_path, "metrics.jsonl"), "a") as f:
    f.write('{"step": 3, "spl')
  assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [1, 2]   # a reader skips it
  with metrics.MetricsLogger(tmp_path, num_steps=4, log_every=1, start_step=2,
                             truncate=False) as logger:
    logger.write_eval(2, {"loss": (5.0, 1.0)})
  assert [(r["step"], r["split"]) for r in metrics.read_metrics(tmp_path)] == [
      (1, "train"), (2, "train"), (2, "eval")]


def test_log_every_must_be_positive(tmp_path):
  with pytest.raises(ValueError, match="config.train.log_every=0"):
    metrics.MetricsLogger(tmp_path, num_steps=5, log_every=0)


def test_workdir_files_of_a_remote_workdir_stay_there(tmp_path, monkeypatch):
  # A gs:// workdir kept only its checkpoints there: os.makedirs('gs://b/run') made a local
  # 'gs:/b/run', which got config.json and metrics.jsonl. TF's ram:// filesystem stands in for
  # gs:// (clu's TensorBoard writer goes through etils, which knows gs:// but not ram://).
  import ml_collections  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from ssl_jax import trainer  # pylint: disable=g-import-not-at-top
  from ssl_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from ssl_jax.finetune import lm_init  # pylint: disable=g-import-not-at-top
  from ssl_jax.probes import runner  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  workdir = f"ram://bucket-{os.getpid()}/run"
  workdir_lib.check(workdir)
  trainer.write_config(ml_collections.ConfigDict({"objective": "causal_lm"}), workdir)
  assert tf.io.gfile.exists(f"{workdir}/config.json")
  rows = [{"step": s, "split": "train", "loss": 1.0 / s} for s in (1, 2, 3)]
  with tf.io.gfile.GFile(f"{workdir}/metrics.jsonl", "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows))
  # What a resume at step 2 does.
  metrics._drop_rows(f"{workdir}/metrics.jsonl", lambda line: metrics._row_step(line) > 2)
  assert metrics.read_metrics(workdir) == rows[:2]
  runner.write_rows(rows, f"{workdir}/probes.jsonl")
  assert runner.read_rows(workdir) == rows
  assert lm_init.run_location(f"{workdir}/checkpoints/3") == (workdir, 3)
  assert lm_init.run_location(workdir + "/") == (workdir, None)
  assert not os.listdir(tmp_path)
