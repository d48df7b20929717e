"""The model under probe: a config's model, its vocabulary, and the forward passes probes read.

    subject = Subject.from_workdir("/tmp/bert")                  # config.json of a training run
    for step in subject.steps():
      params = subject.restore(step)                             # params only, one device
      states = subject.layer_states(params, tokens, segment_ids)  # [layers, B, L, E]

Probes run on one device with dropout off. The forward passes are jitted once per input shape
(callers pad to fixed shapes). What a probe reads per objective:

| objective       | layer states / attention      | token embeddings              |
|-----------------|-------------------------------|-------------------------------|
| mlm             | BERT encoder                  | params/bert/token_embed       |
| causal_lm       | GPT decoder (causal)          | params/token_embed            |
| span_corruption | T5 encoder                    | params/token_embed            |
| denoising       | BART encoder                  | params/token_embed            |
"""
from __future__ import annotations

import copy
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from ssl_jax import checkpointing
from ssl_jax import objectives
from ssl_jax import trainer
from ssl_jax.data import vocabularies
from ssl_jax.models import layers

PRETRAINING_OBJECTIVES = objectives.PRETRAINING
_SINGLE_DEVICE_MESH = dict(data=1, fsdp=1, tensor=1)


def _encode(objective: str, module: nn.Module, tokens, segment_ids):
  """The stack whose layers probes read, run on clean `tokens` [B, L]."""
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  if objective == "mlm":
    return module.bert.encode(tokens, None, segment_ids, positions)
  if objective == "causal_lm":
    return module(tokens, segment_ids, positions)
  return module.encode(tokens, segment_ids, positions)


def _stack_tree(objective: str, collection: dict) -> tuple[dict, str]:
  """(subtree, LayerStack name) of the probed stack inside a sown collection."""
  if objective == "mlm":
    return collection["bert"], "encoder"
  if objective == "causal_lm":
    return collection, "decoder"
  return collection["encoder"], "stack"


def params_of(state) -> Any:
  """A TrainState's params, or `state` itself when it already is a params tree."""
  return getattr(state, "params", state)


class Subject:
  """A pretraining config's model and vocabulary, with jitted read-outs (see the module doc)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | None = None,
               flag: str = "--workdir"):
    """`flag` names the setting that gave `workdir` (`ssl-jax convert`: --to_hf), for errors."""
    if config.objective not in PRETRAINING_OBJECTIVES:
      run = f"{flag}={workdir!r} holds a run of " if workdir else ""
      raise ValueError(
          f"{run}config.objective={config.objective!r}: probes and `ssl-jax convert` read "
          f"pretraining runs (objectives {', '.join(PRETRAINING_OBJECTIVES)}); point them at a "
          "pretraining workdir.")
    config = copy.deepcopy(config)
    with config.unlocked():
      config.mesh = ml_collections.ConfigDict(_SINGLE_DEVICE_MESH)
    self.config = config
    self.workdir, self.flag = workdir, flag
    # This process's own device: in a multi-process job every process reads the checkpoints
    # itself (jax.devices()[0] belongs to process 0).
    self.experiment = trainer.Experiment.build(config, devices=jax.local_devices()[:1])
    self.objective = self.experiment.objective
    self.model = self.experiment.model
    self.model_config = self.experiment.model_config
    self.vocab = vocabularies.get_vocabulary(config.data.vocab)
    self.special = vocabularies.special_ids(self.vocab)
    self._manager = None

  @property
  def name(self) -> str:
    """The objective's name ('mlm', 'causal_lm', 'span_corruption', 'denoising')."""
    return self.config.objective

  @property
  def num_layers(self) -> int:
    return self.model_config.num_layers

  @property
  def max_length(self) -> int:
    """Longest input row the probes build: the trained sequence length (positions beyond it
    never learned anything), within the model's positions."""
    return min(int(self.config.data.sequence_length), int(self.model_config.max_length))

  @property
  def sentence_tokens(self) -> int:
    """Most tokens of one probe sentence a row holds: `max_length` less the framing tokens
    ([CLS] and [SEP]; a start token, or T5's and BART's EOS) or the probe batch's one."""
    return self.max_length - (2 if self.name == "mlm" else 1)

  # ------------------------------------------------------------------------------ checkpoints
  @classmethod
  def from_workdir(cls, workdir: str, flag: str = "--workdir") -> "Subject":
    """The subject of an `ssl-jax train` run directory (its config.json)."""
    return cls(checkpointing.run_config(workdir, flag), workdir, flag)

  @property
  def manager(self) -> ocp.CheckpointManager:
    """A read-only manager of the workdir's checkpoints: probing a run that is still training
    must not delete its in-flight (temporary) checkpoint directories."""
    if self.workdir is None:
      raise ValueError("this Subject was built from a config, not a workdir; it has no "
                       "checkpoints.")
    if self._manager is None:
      self._manager = checkpointing.make_manager(self.workdir, self.config.train, read_only=True)
    return self._manager

  def steps(self) -> list[int]:
    """The workdir's checkpoint steps, ascending."""
    steps = sorted(int(s) for s in self.manager.all_steps())
    if not steps:
      raise FileNotFoundError(
          f"{self.flag}={self.workdir!r} has no checkpoints; train first (`ssl-jax train ... "
          "--config.train.log_spaced_checkpoints=True` saves steps 1, 2, 4, 8, ...).")
    return steps

  def restore(self, step: int):
    """The params of checkpoint `step` on this process's first device."""
    return checkpointing.restore_params(self.manager, step, self.experiment.layout)

  def init_params(self):
    """Freshly initialised params (the config's seed): the 'step 0' of a run."""
    return self.experiment.init_state().params

  def close(self) -> None:
    if self._manager is not None:
      self._manager.close()
      self._manager = None

  # ------------------------------------------------------------------------------ read-outs
  def token_embeddings(self, params) -> np.ndarray:
    """The input token embedding table [V, E] (context-free word vectors)."""
    params = params_of(params)
    table = params["bert"]["token_embed"] if self.name == "mlm" else params["token_embed"]
    return np.asarray(jax.device_get(table["embedding"]), np.float32)

  def layer_states(self, params, tokens: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
    """Every layer's output [num_layers, B, L, E] (float32) for clean rows `tokens` [B, L]."""
    return np.asarray(self._layer_states(params_of(params), tokens, segment_ids))

  def attention_probs(self, params, tokens: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
    """Self-attention probabilities [num_layers, B, heads, L, L] for clean rows `tokens`."""
    return np.asarray(self._attention_probs(params_of(params), tokens, segment_ids))

  @property
  def targets_key(self) -> str:
    """The batch feature holding each prediction slot's target token."""
    return "masked_targets" if self.name == "mlm" else "decoder_target_tokens"

  def token_scores(self, params, batch: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(loss, correct, predicted token) per prediction slot of an objective-format batch (see
    corruption.py): mlm slots are `masked_positions` [B, P]; the others' are decoder positions
    [B, Ld]."""
    return tuple(np.asarray(x) for x in self._token_scores(params_of(params), batch))

  @functools.cached_property
  def _layer_states(self):
    def run(params, tokens, segment_ids):
      _, sown = self.model.apply({"params": params}, tokens, segment_ids,
                                 method=functools.partial(_encode, self.name),
                                 mutable=["intermediates"])
      tree, stack = _stack_tree(self.name, sown["intermediates"])
      return layers.hidden_states(tree, stack).astype(jnp.float32)
    return jax.jit(run)

  @functools.cached_property
  def _attention_probs(self):
    def run(params, tokens, segment_ids):
      _, sown = self.model.apply({"params": params}, tokens, segment_ids,
                                 method=functools.partial(_encode, self.name),
                                 mutable=[layers.ATTENTION_WEIGHTS])
      tree, stack = _stack_tree(self.name, sown[layers.ATTENTION_WEIGHTS])
      return layers.attention_probs(tree, stack)
    return jax.jit(run)

  @functools.cached_property
  def _token_scores(self):
    def run(params, batch):
      outputs = self.model.apply({"params": params}, **self.objective.model_inputs(batch),
                                 deterministic=True)
      logits = outputs["mlm_logits"] if self.name == "mlm" else outputs
      targets = batch[self.targets_key]
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
      predicted = jnp.argmax(logits, -1).astype(jnp.int32)
      return loss, (predicted == targets).astype(jnp.float32), predicted
    return jax.jit(run)
