"""The benchmark scripts' refusals of settings that would report a wrong comparison, checked as
the scripts run them (benchmarks/ is not a package: its scripts import each other by file)."""
import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")
sys.path.insert(0, BENCHMARKS)

import exported_step  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import finetune  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def test_exported_step_refuses_to_compare_adafactor_with_transformers_adamw(tmp_path):
  # T5 base trains with Adafactor; the transformers step always builds AdamW.
  out = tmp_path / "t5_base"
  with pytest.raises(ValueError, match=r"config.optim.name='adafactor'.*--set optim.name=adamw"):
    exported_step.main(["export", f"--config={BENCHMARKS}/../configs/t5.py:base", f"--out={out}",
                        "--platform=cpu", "--compare-transformers"])
  assert not out.exists()  # refused before anything was exported


@pytest.mark.parametrize("command", [["minilm", "--data=/nonexistent"], ["pretraining"]])
def test_finetune_refuses_a_workdir_that_holds_a_run(command, tmp_path, capsys):
  # ssl_jax would resume the run there, train no steps and report its old results.
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(SystemExit):
    finetune.main([*command, f"--workdir={tmp_path}"])
  assert f"--workdir='{tmp_path}' is not empty" in capsys.readouterr().err
