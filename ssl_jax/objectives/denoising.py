"""BART denoising: reconstruct the original document from a noised one.

The noise (token masking, deletion, text infilling, sentence permutation, document rotation) is applied
by `ssl_jax.data.preprocessors.bart_denoising`; batches and loss are those of any encoder-decoder
objective, shared with `span_corruption`.
"""
import dataclasses

from ssl_jax.objectives import span_corruption

OBJECTIVE = dataclasses.replace(span_corruption.OBJECTIVE, name="denoising")
