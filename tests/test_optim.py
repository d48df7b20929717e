"""Schedules, the weight-decay mask, clipping and config validation of AdamW and Adafactor."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssl_jax import optim

BASE = dict(learning_rate=1e-3, warmup_steps=10, schedule="linear", weight_decay=0.0, b1=0.9,
            b2=0.999, eps=1e-8, grad_clip_norm=0.0)


def _cfg(**overrides):
  return {**BASE, **overrides}


@pytest.mark.parametrize("schedule, expected", [
    # step:           0    5       10     55                 100
    ("linear", {0: 0.0, 5: 5e-4, 10: 1e-3, 55: 5e-4, 100: 0.0}),
    ("cosine", {0: 0.0, 5: 5e-4, 10: 1e-3, 55: 5e-4, 100: 0.0}),
    ("constant", {0: 0.0, 5: 5e-4, 10: 1e-3, 55: 1e-3, 100: 1e-3}),
    ("inverse_sqrt", {0: 0.0, 5: 5e-4, 10: 1e-3, 40: 5e-4, 90: 1e-3 / 3}),
    # T5's: constant through warmup_steps (its paper's 1/sqrt(max(n, k))), no ramp.
    ("rsqrt", {0: 1e-3, 5: 1e-3, 10: 1e-3, 40: 5e-4, 90: 1e-3 / 3}),
])
def test_schedule_values(schedule, expected):
  _, lr = optim.make_optimizer(_cfg(schedule=schedule), num_steps=100)
  for step, value in expected.items():
    np.testing.assert_allclose(float(lr(step)), value, atol=1e-9, err_msg=f"step {step}")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_decays_end_at_min_lr_ratio_of_the_peak(schedule):
  # GPT-3 (and nanoGPT's min_lr) decay to 10% of the peak: lr = floor + shape * (peak - floor).
  _, lr = optim.make_optimizer(_cfg(schedule=schedule, min_lr_ratio=0.1), num_steps=100)
  for step, value in {0: 0.0, 10: 1e-3, 55: 5.5e-4, 100: 1e-4}.items():
    np.testing.assert_allclose(float(lr(step)), value, atol=1e-9, err_msg=f"step {step}")
  if schedule == "cosine":
    np.testing.assert_allclose(float(lr(32.5)), 1e-4 + 0.9e-3 * (1 + np.cos(np.pi / 4)) / 2,
                               rtol=1e-6)


def test_no_warmup_starts_at_peak():
  _, lr = optim.make_optimizer(_cfg(warmup_steps=0, schedule="cosine"), num_steps=100)
  np.testing.assert_allclose(float(lr(0)), 1e-3)
  _, lr = optim.make_optimizer(_cfg(warmup_steps=0, schedule="inverse_sqrt"), num_steps=100)
  np.testing.assert_allclose([float(lr(0)), float(lr(4))], [1e-3, 5e-4])
  assert optim.learning_rate_at(lr, 4) == pytest.approx(5e-4)


def test_decay_mask_skips_biases_norm_scales_and_vectors():
  params = {
      "dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones((3,))},
      "layer_norm": {"scale": jnp.ones((3,)), "bias": jnp.ones((3,))},
      "embedding": jnp.ones((10, 3)),
      # scan_layers stacks per-layer params: still no decay on the [layers, features] ones.
      "scanned": {"kernel": jnp.ones((2, 4, 3)), "bias": jnp.ones((2, 3)),
                  "scale": jnp.ones((2, 3))},
      "temperature": jnp.ones(()),
  }
  assert optim.decay_mask(params) == {
      "dense": {"kernel": True, "bias": False},
      "layer_norm": {"scale": False, "bias": False},
      "embedding": True,
      "scanned": {"kernel": True, "bias": False, "scale": False},
      "temperature": False,
  }


def test_weight_decay_applies_to_kernels_only():
  tx, _ = optim.make_optimizer(_cfg(weight_decay=0.1, warmup_steps=0, schedule="constant"),
                               num_steps=10)
  params = {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 2.0)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -1e-3 * 0.1 * 2.0, rtol=1e-6)  # -lr * wd * p
  np.testing.assert_array_equal(updates["bias"], 0.0)


def test_adafactor_moves_weights_relative_to_their_size_and_decays_by_the_rate():
  # T5's learning rate (1e-2) is Adafactor's: each update is ~1% of the weight's RMS. AdamW at
  # the same rate moves every weight by ~1e-2, several times a small weight's size.
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(0, 0.002, (256, 384)), jnp.float32)}
  grads = {"w": jnp.asarray(rng.normal(0, 1, (256, 384)), jnp.float32)}
  rms = lambda x: float(jnp.sqrt(jnp.mean(jnp.square(x))))  # noqa: E731
  relative = {}
  for name in ("adafactor", "adamw"):
    tx, _ = optim.make_optimizer(_cfg(name=name, learning_rate=1e-2, warmup_steps=0,
                                      schedule="constant"), num_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    relative[name] = rms(updates["w"]) / rms(params["w"])
  assert relative["adafactor"] == pytest.approx(1e-2, rel=0.05)
  assert relative["adamw"] > 2
  # Decoupled decay is scaled by the learning rate, as AdamW's (optax adds it after the rate).
  tx, _ = optim.make_optimizer(_cfg(name="adafactor", learning_rate=1e-2, warmup_steps=0,
                                    schedule="constant", weight_decay=0.1), num_steps=10)
  zero = {"w": jnp.zeros_like(params["w"])}
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -1e-3 * params["w"], rtol=1e-5)


def test_adafactor_has_momentum_only_when_asked_whatever_adamw_s_b1():
  # Adafactor took AdamW's b1 (default 0.9) as its momentum: any config but the T5 presets got a
  # first moment as large as the params (Adafactor's memory saving gone) and undebiased first
  # updates 10x too small. t5x, optax and HF default to none.
  params = {"w": jnp.ones((256, 384))}
  sizes = {}
  for momentum in (0.0, 0.9):
    tx, _ = optim.make_optimizer(_cfg(name="adafactor", b1=0.9, adafactor_momentum=momentum),
                                 num_steps=10)
    sizes[momentum] = sum(x.size for x in jax.tree.leaves(tx.init(params)))
  assert sizes[0.0] < 1000 and sizes[0.9] > params["w"].size


def test_adafactor_is_optax_s_and_per_layer_on_a_scanned_stack():
  # optax's Adafactor clips and scales by the RMS of the whole array: on a scan_layers stack, of
  # all layers together, so a scanned T5 trained differently from the same T5 unscanned (a
  # layer of small weights moved 7x too far). Per layer, as t5x.
  rng = np.random.default_rng(0)
  layers = [{"kernel": jnp.asarray(rng.normal(0, sd, (256, 384)), jnp.float32),
             "scale": jnp.asarray(rng.normal(1, sd, (384,)), jnp.float32)} for sd in (1.0, 0.1)]
  unscanned = {"layers_0": layers[0], "layers_1": layers[1], "embed": jnp.ones((300, 256))}
  scanned = {"layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers),
             "embed": unscanned["embed"]}
  cfg = _cfg(name="adafactor", learning_rate=1e-2, warmup_steps=0, schedule="constant",
             adafactor_momentum=0.9, weight_decay=0.1)
  tx, schedule = optim.make_optimizer(cfg, num_steps=10)
  reference = optax.chain(optax.identity(), optax.adafactor(   # identity: grad_clip_norm=0
      schedule, momentum=0.9, weight_decay_rate=lambda count: 0.1 * schedule(count),
      weight_decay_mask=optim.decay_mask))
  states = {"ours": tx.init(unscanned), "optax": reference.init(unscanned),
            "scanned": tx.init(scanned)}
  assert jax.tree.structure(states["ours"]) == jax.tree.structure(states["optax"])  # checkpoints
  for _ in range(3):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 1, p.shape), jnp.float32), unscanned)
    ours, states["ours"] = tx.update(grads, states["ours"], unscanned)
    theirs, states["optax"] = reference.update(grads, states["optax"], unscanned)
    stacked_grads = {"layers": jax.tree.map(lambda *xs: jnp.stack(xs), grads["layers_0"],
                                            grads["layers_1"]), "embed": grads["embed"]}
    stacked, states["scanned"] = tx.update(stacked_grads, states["scanned"], scanned)
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)   # unscanned: optax's
    for i in range(2):
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-6, atol=1e-9),
                   stacked["layers"], ours[f"layers_{i}"])


def test_global_norm_clipping():
  params = {"w": jnp.zeros((4, 4)), "b": jnp.zeros((4,))}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 100.0), params)
  for clip, expected_norm in [(1.0, 1.0), (0.0, float(optax.global_norm(grads)))]:
    tx, _ = optim.make_optimizer(_cfg(grad_clip_norm=clip), num_steps=10)
    _, state = tx.update(grads, tx.init(params), params)
    adam = next(s for s in jax.tree.leaves(state, is_leaf=lambda s: hasattr(s, "mu"))
                if hasattr(s, "mu"))
    # Adam's first moment after one step is (1 - b1) * (clipped) gradient.
    np.testing.assert_allclose(float(optax.global_norm(adam.mu)), 0.1 * expected_norm,
                               rtol=1e-5)


def test_clipping_takes_the_callers_norm_and_otherwise_is_optaxs():
  """The train step hands clipping the norm it computed: the same updates and state as optax's
  clip_by_global_norm (a checkpoint's optimizer state keeps its tree), without a second pass."""
  params = {"w": jnp.zeros((4, 4)), "b": jnp.zeros((4,))}
  grads = {"w": jnp.arange(16.0).reshape(4, 4), "b": -jnp.ones((4,))}
  ours, theirs = optim.clip_by_global_norm(2.0), optax.clip_by_global_norm(2.0)
  assert jax.tree.structure(ours.init(params)) == jax.tree.structure(theirs.init(params))
  expected, _ = theirs.update(grads, theirs.init(params), params)
  norm = optax.global_norm(grads)
  for extra in ({}, {"grad_norm": norm}):
    clipped, _ = ours.update(grads, ours.init(params), params, **extra)
    jax.tree.map(np.testing.assert_array_equal, clipped, expected)
  # The norm given is the one used: twice the true norm halves the clipped gradients.
  halved, _ = ours.update(grads, ours.init(params), params, grad_norm=2 * norm)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b / 2, rtol=1e-6), halved, expected)
  # Through make_optimizer's chain, as the train step calls it.
  tx, _ = optim.make_optimizer(_cfg(grad_clip_norm=2.0), num_steps=10)
  jax.tree.map(np.testing.assert_array_equal,
               tx.update(grads, tx.init(params), params, grad_norm=norm),
               tx.update(grads, tx.init(params), params))


@pytest.mark.parametrize("overrides, num_steps, match", [
    (dict(learning_rate=0.0), 10, r"config.optim.learning_rate=0.0 must be > 0"),
    (dict(schedule="step"), 10, r"config.optim.schedule='step' is unknown.*'cosine'"),
    (dict(name="lamb"), 10, r"config.optim.name='lamb' is unknown.*'adafactor'"),
    (dict(warmup_steps=20), 10, r"config.optim.warmup_steps=20 must be between 0 and "
                                r"config.train.num_steps=10"),
    (dict(weight_decay=-1.0), 10, r"config.optim.weight_decay=-1.0 must be >= 0"),
    (dict(b2=1.0), 10, r"config.optim.b2=1.0 must be in \[0, 1\)"),
    (dict(eps=0.0), 10, r"config.optim.eps=0.0 must be > 0"),
    (dict(grad_clip_norm=-1.0), 10, r"config.optim.grad_clip_norm=-1.0 must be >= 0"),
    (dict(adafactor_momentum=1.0), 10, r"config.optim.adafactor_momentum=1.0 must be in \[0, 1\)"),
    # AdamW ignored it (its momentum is b1).
    (dict(adafactor_momentum=0.9), 10, r"config.optim.adafactor_momentum=0.9 is Adafactor's"),
    # NaN passed `< 0` (NaN weights after one step; clipping off); inf passed `> 0`.
    (dict(weight_decay=float("nan")), 10, r"config.optim.weight_decay=nan must be a finite"),
    (dict(grad_clip_norm=float("nan")), 10, r"config.optim.grad_clip_norm=nan must be a finite"),
    (dict(learning_rate=float("inf")), 10, r"config.optim.learning_rate=inf must be a finite"),
    (dict(min_lr_ratio=1.5), 10, r"config.optim.min_lr_ratio=1.5 must be in \[0, 1\]"),
    (dict(min_lr_ratio=0.1, schedule="rsqrt"), 10,
     r"config.optim.min_lr_ratio=0.1 ends a 'linear' or 'cosine' decay; schedule='rsqrt'"),
    ({}, 0, r"config.train.num_steps=0 must be positive"),
])
def test_invalid_settings_are_named(overrides, num_steps, match):
  with pytest.raises(ValueError, match=match):
    optim.make_optimizer(_cfg(**overrides), num_steps=num_steps)
