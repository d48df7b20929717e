"""The research notebooks run end to end (nbclient, kernel 'python3') at a tiny setting and
draw their plots; the committed copies hold the outputs of a real run at their own setting."""
import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(REPO, "notebooks")
# Parameter values injected into each notebook's `parameters` cell (papermill-style).
TINY = {
    "training_dynamics.ipynb": dict(NUM_STEPS=4, BATCH_SIZE=8, SEQUENCE_LENGTH=32,
                                    PROBE_SENTENCES=12),
    "contextual_embeddings.ipynb": dict(NUM_STEPS=4, BATCH_SIZE=8, SEQUENCE_LENGTH=32,
                                        PROBE_SENTENCES=60),
    "gpt_in_context.ipynb": dict(NUM_STEPS=4, BATCH_SIZE=8, SEQUENCE_LENGTH=32,
                                 EVAL_EXAMPLES=8),
}


def _notebooks():
  return [name for name in sorted(TINY) if os.path.exists(os.path.join(NOTEBOOK_DIR, name))]


def with_parameters(nb, values: dict):
  """Rewrites `NAME = ...` lines of the cell tagged 'parameters' to the given values."""
  [cell] = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  lines = cell.source.splitlines()
  for name, value in values.items():
    pattern = re.compile(rf"^{name}\s*=.*$")
    hits = [i for i, line in enumerate(lines) if pattern.match(line)]
    assert hits, f"the parameters cell has no {name}"
    lines[hits[0]] = f"{name} = {value!r}"
  cell.source = "\n".join(lines)
  return nb


def images(nb) -> int:
  return sum("image/png" in out.get("data", {}) for cell in nb.cells
             if cell.cell_type == "code" for out in cell.outputs)


def errors(nb) -> list:
  return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
          if out.output_type == "error"]


@pytest.mark.parametrize("name", _notebooks())
def test_committed_notebook_holds_a_real_run(name):
  nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count for c in code), "commit the notebook executed, with outputs"
  assert not errors(nb)
  assert images(nb) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("name", _notebooks())
def test_notebook_executes_at_a_tiny_setting(name, monkeypatch, tmp_path):
  # The kernel inherits the environment: one CPU device, not the 8 fake ones of conftest, and
  # its temporary workdirs under pytest's tmp_path.
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv("TMPDIR", str(tmp_path))
  nb = with_parameters(nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4), TINY[name])
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": NOTEBOOK_DIR}}).execute()
  assert not errors(nb)
  assert images(nb) >= 2
