"""The benchmark scripts' refusals of settings that would report a wrong comparison, checked as
the scripts run them (benchmarks/ is not a package: its scripts import each other by file)."""
import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")
sys.path.insert(0, BENCHMARKS)

import exported_step  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def test_exported_step_refuses_to_compare_adafactor_with_transformers_adamw(tmp_path):
  # T5 base trains with Adafactor; the transformers step always builds AdamW.
  out = tmp_path / "t5_base"
  with pytest.raises(ValueError, match=r"config.optim.name='adafactor'.*--set optim.name=adamw"):
    exported_step.main(["export", f"--config={BENCHMARKS}/../configs/t5.py:base", f"--out={out}",
                        "--platform=cpu", "--compare-transformers"])
  assert not out.exists()  # refused before anything was exported
