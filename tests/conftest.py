"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere."""
import os

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
