"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere."""
import os
import tempfile

# On a busy 2-core machine one simulated device can lag the others by minutes; XLA's default
# collective timeout (40 s) would then abort a correct run.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    " --xla_cpu_collective_timeout_seconds=1800"
    " --xla_cpu_collective_call_terminate_timeout_seconds=1800"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# tf.data must not grab the accelerator or all host threads away from XLA.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# One persistent XLA compilation cache for the suite and the processes it starts (inherited through
# the environment): the slow tests run the same tiny configs through the CLI many times, and a
# cache hit is the compiled program itself, so no result depends on it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"ssl_jax_tests_xla_cache_{os.getuid()}"))

import pytest  # noqa: E402  (after the environment above, which must precede any jax import)

# Module fixtures that run a training job. Under `-n 2` (pytest.ini sets `--dist loadgroup`) the
# tests that use one run on the same worker, so the job runs once rather than once per worker.
SHARED_RUNS = ("bert_runs", "bert_workdir", "bert_checkpoint")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items):
  """Slow tests first (each worker takes the next test when it is free, so the short ones fill in
  at the end), and one xdist group per shared training run."""
  for item in items:
    for name in SHARED_RUNS:
      if name in item.fixturenames:
        item.add_marker(pytest.mark.xdist_group(name))
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)
