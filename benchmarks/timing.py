"""What the train-step benchmarks share, importing JAX, numpy and (lazily) torch alone, never
ssl_jax: a timer, XLA's dense matmul rate, and the `transformers` (PyTorch) training step with its
inputs. `benchmarks/exported_step.py run` uses it on hosts without ssl_jax's dependencies."""
import time

import jax
import jax.numpy as jnp
import numpy as np

# Encoder-decoders take the class their HF config names (BART, or mBART for a pre-norm BART).
HF_CLASS = {"mlm": "BertForMaskedLM", "causal_lm": "GPT2LMHeadModel"}


def timed(fn):
  """(fn(), seconds it took)."""
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


class MatmulRate:
  """GFLOP/s of a square matmul under XLA (float32 unless `dtype`), one timing per call of `reps`
  chained matmuls (one on a CPU, where one takes ~40 ms; on an accelerator one takes microseconds,
  about what dispatching and waiting for it costs, so 50 run in one program)."""

  def __init__(self, n: int, reps: int = 1, dtype=jnp.float32):
    self.n, self.reps = n, reps
    key = jax.random.key(0)
    self.a = (jax.random.normal(key, (n, n)) / n**0.5).astype(dtype)   # keeps the chain bounded
    self.b = jax.random.normal(jax.random.fold_in(key, 1), (n, n)).astype(dtype)
    self.fn = jax.jit(lambda a, b: jax.lax.fori_loop(0, reps, lambda _, x: a @ x, b))
    self.fn(self.a, self.b).block_until_ready()

  def __call__(self) -> float:
    _, seconds = timed(lambda: self.fn(self.a, self.b).block_until_ready())
    return 2 * self.n**3 * self.reps / seconds / 1e9


def hf_inputs(objective: str, batch, device: str) -> dict:
  """The torch inputs of the HF model for an ssl_jax batch (labels -100 where no loss)."""
  import torch  # pylint: disable=g-import-not-at-top
  b = {k: np.asarray(v) for k, v in batch.items()}
  long = lambda x: torch.as_tensor(np.asarray(x, np.int64), device=device)
  if objective == "mlm":
    labels = np.full(b["input_tokens"].shape, -100)
    real = b["masked_weights"] > 0
    rows = np.broadcast_to(np.arange(real.shape[0])[:, None], real.shape)
    labels[rows[real], b["masked_positions"][real]] = b["masked_targets"][real]
    return dict(input_ids=long(b["input_tokens"]), token_type_ids=long(b["token_type_ids"]),
                attention_mask=long(b["segment_ids"] > 0), labels=long(labels))
  labels = long(np.where(b["decoder_loss_weights"] > 0, b["decoder_target_tokens"], -100))
  decoder_mask = long(b["decoder_segment_ids"] > 0)
  if objective == "causal_lm":
    return dict(input_ids=long(b["decoder_input_tokens"]), attention_mask=decoder_mask,
                labels=labels)
  return dict(input_ids=long(b["encoder_input_tokens"]),
              attention_mask=long(b["encoder_segment_ids"] > 0),
              decoder_input_ids=long(b["decoder_input_tokens"]),
              decoder_attention_mask=decoder_mask, labels=labels)


def check_adamw(optim) -> None:
  """Raises unless `optim` (ssl_jax's config.optim as a dict) trains with AdamW, the one optimizer
  `TransformersStep` builds: against another (T5's presets train with Adafactor) the comparison
  would time two different updates."""
  name = optim.get("name", "adamw")
  if name != "adamw":
    raise ValueError(
        f"config.optim.name={name!r}: the transformers step trains with torch's AdamW alone, so "
        f"comparing with transformers would time ssl_jax's {name} update against AdamW's. Compare "
        "an AdamW config (exported_step.py: --set optim.name=adamw) or drop "
        "--compare-transformers.")


class TransformersStep:
  """`transformers` training step (AdamW, clipping as our config) of `hf_config`'s model.

  `optim`: learning_rate, b1, b2, eps, weight_decay and grad_clip_norm, as ssl_jax's config.optim
  (whose name must be 'adamw': `check_adamw`).
  `autocast`: a torch dtype (e.g. torch.bfloat16) to run the forward pass under `torch.autocast`
  with float32 weights, as ssl_jax's `model.dtype='bfloat16'` computes; None: float32.
  """

  def __init__(self, objective: str, hf_config, optim, device: str, autocast=None):
    check_adamw(optim)
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    self.torch, self.device, self.objective, self.autocast = torch, device, objective, autocast
    self.model = getattr(transformers, HF_CLASS.get(objective, hf_config.architectures[0]))(
        hf_config).to(device)
    if hasattr(self.model, "shared"):
      # T5 v1.1 (untied output layer): transformers 5 ties the encoder's and decoder's input
      # embeddings to `shared` only with tie_word_embeddings, so it trained three tables to
      # ssl_jax's two (one input embedding, one output layer).
      self.model.set_input_embeddings(self.model.shared)
    self.model.train()
    self.optimizer = torch.optim.AdamW(
        self.model.parameters(), lr=optim["learning_rate"], betas=(optim["b1"], optim["b2"]),
        eps=optim["eps"], weight_decay=optim["weight_decay"])
    self.clip = optim["grad_clip_norm"]
    self.inputs = None

  def loss(self):
    if self.objective != "causal_lm":
      return self.model(**self.inputs).loss
    # GPT2LMHeadModel would shift `labels` once more: our targets are already the next tokens.
    inputs = dict(self.inputs)
    labels = inputs.pop("labels")
    logits = self.model(**inputs).logits
    return self.torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                                                  ignore_index=-100)

  def __call__(self) -> float:
    def step():
      if self.autocast is None:
        loss = self.loss()
      else:
        with self.torch.autocast(self.device, dtype=self.autocast):
          loss = self.loss()
      loss.backward()
      if self.clip:
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
      self.optimizer.step()
      self.optimizer.zero_grad(set_to_none=True)
      if self.device == "cuda":
        self.torch.cuda.synchronize()
    return timed(step)[1]
