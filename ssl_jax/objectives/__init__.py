"""Pretraining objectives: what model to build, how to read a batch, and its loss.

Each objective module defines `OBJECTIVE`, an `Objective` the trainer uses without knowing its name:

    objective = objectives.get(config.objective)
    model = objective.make_model(model_config)
    params = objectives.init_params(objective, model, rng, batch)
    loss, metric_sums = objectives.loss_fn(objective, model, params, batch, rng, denominators)

`loss_fn` returns the scalar training loss and metric sums `{name: (sum, count)}`. Every loss term is a
weighted sum divided by a denominator (tokens or sentences) that `denominators(batch)` computes from the
batch's weights alone. The trainer computes denominators once for the whole batch and passes them to every
microbatch, so k microbatches of B/k give exactly the gradient of one batch of B (dropout aside:
each microbatch draws its own masks).
"""
import dataclasses
import functools
import importlib
from typing import Any, Callable

import jax
import jax.numpy as jnp

Batch = dict[str, jax.Array]
MetricSums = dict[str, tuple[jax.Array, jax.Array]]

PRETRAINING = ("mlm", "causal_lm", "span_corruption", "denoising")
# Fine-tuning (ssl_jax.finetune): heads on a BERT encoder.
NAMES = PRETRAINING + ("classification", "regression", "tagging", "extractive_qa")
_MODULES = {
    "mlm": "ssl_jax.objectives.mlm",
    "causal_lm": "ssl_jax.objectives.causal_lm",
    "span_corruption": "ssl_jax.objectives.span_corruption",
    "denoising": "ssl_jax.objectives.denoising",
    "classification": "ssl_jax.finetune.classification",
    "regression": "ssl_jax.finetune.regression",
    "tagging": "ssl_jax.finetune.tagging",
    "extractive_qa": "ssl_jax.finetune.extractive_qa",
}


@dataclasses.dataclass(frozen=True)
class Objective:
  """What the trainer needs from an objective (see the module docstring)."""
  name: str
  family: tuple[str, ...]  # model families this objective trains ('bert', 'gpt', 't5', 'bart')
  make_model: Callable[[Any], Any]
  model_inputs: Callable[[Batch], dict[str, jax.Array]]  # batch -> the model's keyword arguments
  denominators: Callable[[Batch], dict[str, jax.Array]]
  loss: Callable[[Any, Batch, dict], tuple[jax.Array, MetricSums]]  # (model output, batch, dens)


def get(name: str, config=None) -> Objective:
  """Returns the objective registered under `name` (`config.objective`).

  Objectives whose model depends on the task (fine-tuning: the number of labels) define
  `for_config(config)`; given `config`, `get` returns that specialisation, with
  `config.train.z_loss` passed to the loss of a pretraining objective when it is not 0.
  """
  if name not in _MODULES:
    raise ValueError(
        f"config.objective={name!r} is not an objective; use one of {', '.join(NAMES)}.")
  module = importlib.import_module(_MODULES[name])
  if config is None:
    return module.OBJECTIVE
  objective = module.for_config(config) if hasattr(module, "for_config") else module.OBJECTIVE
  z_loss = config.train.get("z_loss", 0.0)
  if z_loss:  # config.validate allows it for the pretraining objectives only
    objective = dataclasses.replace(
        objective, loss=functools.partial(objective.loss, z_loss=z_loss))
  return objective


def init_params(objective: Objective, model, rng, batch):
  """The model's (logically partitioned) parameters, traced on `batch`'s shapes."""
  return model.init({"params": rng, "dropout": rng}, **objective.model_inputs(batch),
                    deterministic=True)["params"]


def loss_fn(objective: Objective, model, params, batch, rng, denominators, deterministic=False):
  """Runs the model on `batch` and returns `(loss, metric_sums)` (see the module docstring)."""
  outputs = model.apply({"params": params}, **objective.model_inputs(batch),
                        deterministic=deterministic, rngs={"dropout": rng})
  return objective.loss(outputs, batch, denominators)


def token_cross_entropy(logits, targets, weights):
  """Weighted softmax cross-entropy in float32.

  Args:
    logits: [..., V] scores.
    targets: [...] integer ids.
    weights: [...] 0/1 (or real) weights.
  Returns:
    (loss_sum, correct_sum, weight_sum) scalars; `correct` counts weighted hits (`token_losses`).
  """
  weights = weights.astype(jnp.float32)
  losses, correct, _ = token_losses(logits, targets)
  return (losses * weights).sum(), (correct * weights).sum(), weights.sum()


def z_loss_sum(log_z, weights, z_loss: float):
  """`z_loss` × the weighted sum of log(Z)², Z the softmax's normaliser (PaLM's and t5x's z-loss,
  which keeps log(Z) near 0: T5.1.1 and PaLM train with 1e-4)."""
  return z_loss * (jnp.square(log_z) * weights.astype(jnp.float32)).sum()


def token_losses(logits, targets):
  """Per-token softmax cross-entropy (float32), hit (1.0 where the target has the largest logit)
  and log Z = logsumexp(logits) (float32, for `z_loss_sum`).

  The loss equals `optax.softmax_cross_entropy_with_integer_labels`; a hit is `argmax(logits) ==
  targets` (it reuses the logsumexp's max: an argmax is a second pass over [..., V] that costs as
  much as the loss itself), except for ties for the largest logit. In float32 they are
  vanishingly rare; bfloat16 logits tie at the top in a few % of rows, so there each of the n tied
  tokens counts 1/n (the expected hit of a random tie-break), at the price of that second pass.
  """
  return _token_losses(logits.astype(jnp.float32), targets, logits.dtype != jnp.float32)


# The gradient is written out (as t5x's cross_entropy_with_logits does) so that XLA sees three
# passes over the [..., V] logits instead of autodiff's six (benchmarks/RESULTS.md, "Softmax
# cross-entropy"): the forward keeps exp(logits - max) for the backward, picks the target logit
# with a gather rather than a select and sum over V, and the backward is one elementwise pass.
# log Z's gradient is the softmax, exp / total: it joins the loss's in that pass.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _token_losses(logits, targets, split_ties):
  return _token_losses_fwd(logits, targets, split_ties)[0]


def _token_losses_fwd(logits, targets, split_ties):
  top = jnp.max(logits, axis=-1, keepdims=True)
  exp = jnp.exp(logits - top)
  total = jnp.sum(exp, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1, mode="clip")[..., 0]
  target_logit = picked - top[..., 0]
  log_total = jnp.log(total)
  losses = log_total - target_logit
  hits = (target_logit >= 0).astype(jnp.float32)
  if split_ties:
    hits = hits / jnp.sum(jnp.where(logits == top, 1.0, 0.0), axis=-1)
  return (losses, hits, log_total + top[..., 0]), (exp, total, targets)


def _token_losses_bwd(split_ties, residuals, cotangents):
  del split_ties
  exp, total, targets = residuals
  dlosses, _, dlog_z = cotangents  # hits are piecewise constant: no gradient
  vocab = jnp.arange(exp.shape[-1], dtype=targets.dtype)
  dlogits = exp * ((dlosses + dlog_z) / total)[..., None] - jnp.where(
      vocab == targets[..., None], dlosses[..., None], 0.0)
  return dlogits, None


_token_losses.defvjp(_token_losses_fwd, _token_losses_bwd)


def safe_denominator(count):
  """A denominator that is never zero (a batch may hold no sentence-level examples)."""
  return jnp.maximum(count, 1.0)


def segment_ids(batch, name: str, tokens_name: str):
  """`batch[name]`, or, for unpacked seqio batches (which carry no segment ids), 1 on real tokens
  of `batch[tokens_name]` and 0 on padding (seqio pads with id 0)."""
  if name in batch:
    return batch[name]
  return (batch[tokens_name] != 0).astype(jnp.int32)


def positions(batch, name: str, like: jax.Array):
  """`batch[name]`, or 0, 1, 2, ... for unpacked batches."""
  if name in batch:
    return batch[name]
  return jnp.broadcast_to(jnp.arange(like.shape[-1], dtype=jnp.int32), like.shape)


def decoder_denominators(batch):
  """Loss denominator of seqio LM and encoder-decoder batches: the number of target tokens."""
  return {"token": batch["decoder_loss_weights"].sum()}


def decoder_token_loss(logits, batch, denominators, z_loss: float = 0.0):
  """Per-token cross-entropy of `decoder_target_tokens` (seqio LM and encoder-decoder batches),
  plus the z-loss (`z_loss_sum`) when `z_loss` is not 0; `token_loss` is the cross-entropy alone."""
  weights = batch["decoder_loss_weights"].astype(jnp.float32)
  losses, hits, log_z = token_losses(logits, batch["decoder_target_tokens"])
  loss_sum, correct, count = (losses * weights).sum(), (hits * weights).sum(), weights.sum()
  sums = {"token_loss": (loss_sum, count), "token_accuracy": (correct, count)}
  if z_loss:
    sums["z_loss"] = (z_loss_sum(log_z, weights, z_loss), count)
    loss_sum = loss_sum + sums["z_loss"][0]
  return loss_sum / safe_denominator(denominators["token"]), sums
