"""The models' one matrix product: `dense`, with a backward pass written for XLA:CPU.

Every dense layer (`layers.Projection`) and the tied output projection (`layers.Embed.attend`)
compute through `dense`, and a bias added apart from one (BART's `final_logits_bias`) through
`bias_add`; `autodiff_dense()` traces autodiff's backward instead (to time it, or to count the
model's FLOPs).
"""
import contextlib
import contextvars
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp

Array = jax.Array


def dense(x: Array, kernel: Array, bias: Optional[Array] = None, in_ndim: int = 1) -> Array:
  """x's last `in_ndim` axes contracted with kernel [*in, *out], plus bias [*out] if given.

  Every dense layer and the tied output projection compute through here. On CPU the backward
  pass is written for XLA:CPU, 4-15% off a train step (benchmarks/RESULTS.md, "Dense backward
  pass"): the kernel's gradient is a YNNPACK dot after copying the smaller of x and the gradient
  transposed (autodiff's x^T·grad copies x, or for the tied output projection the whole logits
  gradient, or runs as an Eigen dot whose sums depend on the process's device count), and the
  bias's is a dot with a matrix of ones (XLA:CPU compiles autodiff's column sum over [tokens,
  features] into a slow strided reduce-window). The gradients equal autodiff's up to float
  rounding. Other backends, and code traced under `autodiff_dense()`, take autodiff's.
  """
  if not _hand_written():
    return _affine(x, kernel, bias, in_ndim)
  return _dense(x, kernel, bias, in_ndim)


def bias_add(y: Array, bias: Array) -> Array:
  """y + bias, bias [*y.shape[-bias.ndim:]], with `dense`'s bias gradient on CPU: a dot with a
  matrix of ones, not autodiff's sum over the tokens (BART tiny: a 15 ms reduce-window of a
  ~250 ms step for its final_logits_bias)."""
  if not _hand_written():
    return y + bias
  return _bias_add(y, bias)


def _hand_written() -> bool:
  return jax.default_backend() == 'cpu' and _HAND_WRITTEN_BACKWARD.get()


_HAND_WRITTEN_BACKWARD = contextvars.ContextVar('hand_written_backward', default=True)


@contextlib.contextmanager
def autodiff_dense():
  """Within this context `dense` traces autodiff's backward pass: to time it against the
  hand-written one (`benchmarks/train_step.py --compare-autodiff-dense`), to count the model's
  FLOPs (`trainer.flops_per_step`) or to rule it out. It acts on tracing: a function traced
  before (a jitted step already called) keeps what it traced, so trace the step inside it."""
  token = _HAND_WRITTEN_BACKWARD.set(False)
  try:
    yield
  finally:
    _HAND_WRITTEN_BACKWARD.reset(token)


def _affine(x, kernel, bias, in_ndim):
  y = jax.lax.dot_general(
      x, kernel, ((tuple(range(x.ndim - in_ndim, x.ndim)), tuple(range(in_ndim))), ((), ())))
  return y if bias is None else y + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _dense(x, kernel, bias, in_ndim):
  return _affine(x, kernel, bias, in_ndim)


def _dense_fwd(x, kernel, bias, in_ndim):
  return _affine(x, kernel, bias, in_ndim), (x, kernel, bias)


def _dense_bwd(in_ndim, residuals, grad):
  x, kernel, bias = residuals
  out_ndim = kernel.ndim - in_ndim
  dx = jax.lax.dot_general(grad, kernel, ((tuple(range(grad.ndim - out_ndim, grad.ndim)),
                                           tuple(range(in_ndim, kernel.ndim))), ((), ())))
  in_size = math.prod(kernel.shape[:in_ndim])
  out_size = kernel.size // in_size
  x2, grad2 = x.reshape(-1, in_size), grad.reshape(-1, out_size)
  # The kernel's gradient sums over tokens. YNNPACK's dots take no transposed left operand, so
  # the smaller of x and grad is copied transposed. The barriers keep XLA from folding the
  # transposes back into a dot it would run in Eigen (whose sums differ between a 1-device
  # process and 1 device of 8, which would break bit-exact resume across the two).
  barrier = jax.lax.optimization_barrier
  if in_size <= out_size:
    dkernel = barrier(jnp.dot(barrier(x2.T), grad2))
  else:
    dkernel = barrier(jnp.dot(barrier(grad2.T), x2)).T
  dkernel = dkernel.reshape(kernel.shape)
  dbias = None if bias is None else _summed_over_tokens(grad, bias.shape)
  return dx, dkernel, dbias


_dense.defvjp(_dense_fwd, _dense_bwd)


def _summed_over_tokens(grad: Array, shape: tuple) -> Array:
  """grad [..., *shape] summed over its leading axes, as a dot with 8 rows of ones (XLA turns a
  dot with one row of ones back into a reduction)."""
  grad2 = grad.reshape(-1, math.prod(shape))
  return jnp.dot(jnp.ones((8, grad2.shape[0]), grad2.dtype), grad2)[0].reshape(shape)


@jax.custom_vjp
def _bias_add(y, bias):
  return y + bias


def _bias_add_fwd(y, bias):
  return y + bias, bias


def _bias_add_bwd(bias, grad):
  return grad, _summed_over_tokens(grad, bias.shape)


_bias_add.defvjp(_bias_add_fwd, _bias_add_bwd)
