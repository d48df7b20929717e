"""AdamW (or T5's Adafactor) with warmup, a decay schedule, decoupled weight decay and
global-norm clipping.

    tx, schedule = optim.make_optimizer(config.optim, config.train.num_steps)

One optimizer update per applied train step: gradient accumulation over
`config.train.microbatches` happens inside the jitted step, and a step skipped for a non-finite
loss or gradient leaves the optimizer as it was, so the schedule's step is the train step less
the steps skipped (`update_count`).
"""
from __future__ import annotations

from collections.abc import Mapping
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("linear", "cosine", "inverse_sqrt", "rsqrt", "constant")
OPTIMIZERS = ("adamw", "adafactor")
# Flax's names for Dense/Conv biases and LayerNorm/RMSNorm gains. Checked by name as well as by
# ndim because with scan_layers a stacked bias is [layers, features], i.e. 2-D.
NO_DECAY_NAMES = ("bias", "scale")


def _validate(optim_cfg: Mapping[str, Any], num_steps: int) -> None:
  def fail(field, why):
    raise ValueError(f"config.optim.{field}={optim_cfg[field]!r} {why}")

  if num_steps <= 0:
    raise ValueError(f"config.train.num_steps={num_steps} must be positive.")
  for field in ("learning_rate", "weight_decay", "eps", "grad_clip_norm"):
    if not math.isfinite(optim_cfg[field]):   # NaN passed the range checks below, inf some
      fail(field, "must be a finite number.")
  if not optim_cfg["learning_rate"] > 0:
    fail("learning_rate", "must be > 0.")
  if optim_cfg.get("name", "adamw") not in OPTIMIZERS:
    fail("name", f"is unknown; use one of {OPTIMIZERS}.")
  if optim_cfg["schedule"] not in SCHEDULES:
    fail("schedule", f"is unknown; use one of {SCHEDULES}.")
  if not 0 <= optim_cfg["warmup_steps"] <= num_steps:
    fail("warmup_steps", f"must be between 0 and config.train.num_steps={num_steps}; lower "
         "warmup_steps (a shortened preset run keeps the preset's) or raise num_steps.")
  if optim_cfg["weight_decay"] < 0:
    fail("weight_decay", "must be >= 0 (0 turns weight decay off).")
  for field in ("b1", "b2"):
    if not 0 <= optim_cfg[field] < 1:
      fail(field, "must be in [0, 1).")
  if not optim_cfg["eps"] > 0:
    fail("eps", "must be > 0.")
  if optim_cfg["grad_clip_norm"] < 0:
    fail("grad_clip_norm", "must be >= 0 (0 turns clipping off).")
  if not 0 <= optim_cfg.get("adafactor_momentum", 0.0) < 1:
    fail("adafactor_momentum", "must be in [0, 1) (0: no momentum, as T5 trained).")
  if optim_cfg.get("adafactor_momentum", 0.0) and optim_cfg.get("name", "adamw") == "adamw":
    fail("adafactor_momentum", "is Adafactor's (config.optim.name='adafactor'), and AdamW "
         "ignored it; AdamW's momentum is config.optim.b1. Set adafactor_momentum to 0.")
  min_lr_ratio = optim_cfg.get("min_lr_ratio", 0.0)
  if not 0 <= min_lr_ratio <= 1:
    fail("min_lr_ratio", "must be in [0, 1] (the share of learning_rate the decay ends at).")
  if min_lr_ratio and optim_cfg["schedule"] not in ("linear", "cosine"):
    fail("min_lr_ratio", f"ends a 'linear' or 'cosine' decay; schedule="
         f"{optim_cfg['schedule']!r} has no end value. Set it to 0, or use one of those.")


def make_schedule(optim_cfg: Mapping[str, Any], num_steps: int) -> optax.Schedule:
  """Learning rate per step: linear warmup from 0 to `learning_rate` over `warmup_steps`, then

  - 'linear': linear decay to `min_lr_ratio * learning_rate` (default 0) at `num_steps`;
  - 'cosine': cosine decay to `min_lr_ratio * learning_rate` at `num_steps` (GPT-3's 10%:
    `min_lr_ratio=0.1`);
  - 'inverse_sqrt': `learning_rate * sqrt(warmup_steps) / sqrt(step)` (fairseq's; with no
    warmup, `learning_rate / sqrt(max(step, 1))`);
  - 'constant': `learning_rate`.

  'rsqrt' is T5's (t5x's `constant * rsqrt_decay`), with no ramp: `learning_rate *
  sqrt(warmup_steps / max(step, warmup_steps))`, constant for the first `warmup_steps` steps.
  """
  _validate(optim_cfg, num_steps)
  lr = float(optim_cfg["learning_rate"])
  warmup_steps = int(optim_cfg["warmup_steps"])
  decay_steps = num_steps - warmup_steps
  name = optim_cfg["schedule"]
  if name in ("inverse_sqrt", "rsqrt"):
    def inverse_sqrt(step):
      step = jnp.asarray(step, jnp.float32)
      ramp = (jnp.minimum(step / warmup_steps, 1.0) if warmup_steps and name == "inverse_sqrt"
              else 1.0)
      return lr * ramp * jnp.sqrt(max(warmup_steps, 1) / jnp.maximum(step, max(warmup_steps, 1)))
    return inverse_sqrt
  floor = float(optim_cfg.get("min_lr_ratio", 0.0))
  decay = {
      "linear": lambda: optax.linear_schedule(lr, lr * floor, max(decay_steps, 1)),
      "cosine": lambda: optax.cosine_decay_schedule(lr, max(decay_steps, 1), alpha=floor),
      "constant": lambda: optax.constant_schedule(lr),
  }[name]()
  if not warmup_steps:
    return decay
  warmup = optax.linear_schedule(0.0, lr, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def _names(path) -> list[str]:
  return [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]


def _stacked_mask(params: Any) -> Any:
  """True for parameters that scan_layers stacks: those under a 'layers' key, one layer per
  index of their leading axis."""
  return jax.tree_util.tree_map_with_path(lambda path, _: "layers" in _names(path), params)


def _block_rms(x: jax.Array, stacked: bool) -> jax.Array:
  """Root mean square of a parameter block: the whole array, or each layer of a stacked one
  (shape [layers, 1, ...]), so that a scanned model's blocks are an unscanned one's."""
  axes = tuple(range(1, x.ndim)) if stacked else None
  return jnp.sqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True))


def _clip_by_block_rms(threshold: float) -> optax.GradientTransformation:
  """optax.clip_by_block_rms, a block being a layer of a stacked parameter (`_block_rms`)."""
  def update_fn(updates, state, params=None):
    del params
    clip = lambda u, stacked: u / jnp.maximum(1.0, _block_rms(u, stacked) / threshold)  # noqa: E731
    return jax.tree.map(clip, updates, _stacked_mask(updates)), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _scale_by_param_block_rms(min_scale: float = 1e-3) -> optax.GradientTransformation:
  """optax.scale_by_param_block_rms, a block being a layer of a stacked parameter."""
  def update_fn(updates, state, params):
    def scale(u, p, stacked):
      rms = _block_rms(p, stacked)
      return u * jnp.where(rms <= min_scale, min_scale, rms)
    return jax.tree.map(scale, updates, params, _stacked_mask(params)), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _adafactor(learning_rate: optax.Schedule, momentum: float,
               weight_decay_rate: Callable[[Any], Any] | None) -> optax.GradientTransformation:
  """optax.adafactor with T5's defaults (factored second moments, decay rate 0.8, updates clipped
  at RMS 1 and scaled by the parameter's RMS), the RMS taken per layer of a scan_layers stack as
  t5x does (its 'layers' axis is a batch axis of Adafactor): optax's takes it over the whole
  stack, so a scanned model trained differently from the same model unscanned. Same state tree
  as optax.adafactor's."""
  tx = [optax.scale_by_factored_rms(), _clip_by_block_rms(1.0),
        optax.scale_by_learning_rate(learning_rate, flip_sign=False), _scale_by_param_block_rms()]
  if momentum:
    tx.append(optax.ema(momentum, debias=False, accumulator_dtype=jnp.float32))
  if weight_decay_rate is not None:
    tx.append(optax.add_decayed_weights(weight_decay_rate, mask=decay_mask))
  tx.append(optax.scale(-1))
  return optax.chain(*tx)


def decay_mask(params: Any) -> Any:
  """True for parameters that get weight decay: kernels and embeddings.

  Excluded: anything with ndim <= 1 and any leaf named 'bias' or 'scale' (norm gains, biases,
  also when stacked by scan_layers). Works on boxed (nn.Partitioned) and plain param trees.
  """
  def wants_decay(path, leaf):
    names = _names(path)
    return leaf.ndim > 1 and not (names and names[-1] in NO_DECAY_NAMES)

  return jax.tree_util.tree_map_with_path(wants_decay, params)


def make_optimizer(optim_cfg: Mapping[str, Any],
                   num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW (decoupled decay scaled by the schedule, as torch.optim.AdamW) with optional clipping;
  or, with `name='adafactor'`, T5's Adafactor (factored second moments with decay rate 0.8,
  updates clipped at RMS 1 and scaled by each parameter's RMS, per layer: `_adafactor`). Its
  updates are relative to the parameters' size, so it takes T5's learning rate (1e-2), which
  would move AdamW's weights by ~lr each step. Its momentum is `adafactor_momentum` (default 0,
  as t5x's, optax's and HF's Adafactor: no first moment); b1, b2 and eps are AdamW's alone.

  Args:
    optim_cfg: `config.optim` (name, learning_rate, warmup_steps, schedule, min_lr_ratio,
      weight_decay, b1, b2, eps, adafactor_momentum, grad_clip_norm; grad_clip_norm=0 disables
      clipping).
    num_steps: `config.train.num_steps`; where 'linear' and 'cosine' end.

  Returns:
    (tx, schedule): the optax transformation and the step -> learning-rate function it uses,
    for logging.

  Raises:
    ValueError: naming the `config.optim.<field>` that is out of range.
  """
  schedule = make_schedule(optim_cfg, num_steps)
  weight_decay = float(optim_cfg["weight_decay"])
  if optim_cfg.get("name", "adamw") == "adafactor":
    # optax adds Adafactor's decay after the learning rate; scaled by it, as AdamW's is.
    decay_rate = (lambda count: weight_decay * schedule(count)) if weight_decay else None
    update = _adafactor(schedule, float(optim_cfg.get("adafactor_momentum", 0.0)), decay_rate)
  else:
    update = optax.adamw(
        learning_rate=schedule, b1=float(optim_cfg["b1"]), b2=float(optim_cfg["b2"]),
        eps=float(optim_cfg["eps"]), weight_decay=weight_decay, mask=decay_mask)
  clip_norm = float(optim_cfg["grad_clip_norm"])
  # Clipping is stateless, and the chain is there with it or without, so the optimizer state has
  # one tree whatever grad_clip_norm is: a resumed run may turn clipping on or off.
  clip = clip_by_global_norm(clip_norm) if clip_norm > 0 else optax.identity()
  return optax.chain(clip, update), schedule


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
  """optax.clip_by_global_norm (same state, same arithmetic) that takes the gradients' global
  norm from the caller as `tx.update(grads, state, params, grad_norm=...)`: the train step has
  computed it already, to log it and to skip non-finite steps, and a second pass over every
  gradient costs a few % of a CPU step. Without `grad_norm` it computes the norm itself."""
  def update(updates, state, params=None, *, grad_norm=None, **extra_args):
    del params, extra_args
    norm = optax.global_norm(updates) if grad_norm is None else grad_norm
    trigger = norm < max_norm
    return jax.tree.map(lambda t: jax.lax.select(trigger, t, (t / norm.astype(t.dtype)) * max_norm),
                        updates), state
  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update)


def update_count(opt_state: Any) -> jax.Array:
  """The updates `opt_state`'s optimizer has applied: the step its schedule reads next."""
  counts = optax.tree_utils.tree_get_all_with_path(opt_state, "count")
  if not counts:
    raise ValueError("the optimizer state has no update count; build it with make_optimizer.")
  return counts[0][1]


def learning_rate_at(schedule: Callable[[int], Any], step: int) -> float:
  """The schedule's value at `step`, computed on the host CPU so it never waits on the device."""
  try:
    cpu = jax.local_devices(backend="cpu")[0]
  except RuntimeError:  # JAX_PLATFORMS excludes cpu: fall back to the default device.
    return float(schedule(step))
  with jax.default_device(cpu):
    return float(schedule(step))
