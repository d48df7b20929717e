"""Mesh construction, logical rules -> shardings, batch checks, and FSDP memory per device."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssl_jax import optim, partitioning, train_state

RULES = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
         ("kv", None), ("vocab", "tensor"), ("length", None), ("layers", None))
OPTIM = dict(learning_rate=1e-2, warmup_steps=0, schedule="constant", weight_decay=0.0, b1=0.9,
             b2=0.99, eps=1e-8, grad_clip_norm=0.0)


def _config(rules=RULES, **mesh):
  return ml_collections.ConfigDict(dict(mesh={"data": -1, "fsdp": 1, "tensor": 1, **mesh},
                                        logical_axis_rules=rules))


class MLP(nn.Module):
  """Two Dense layers and a LayerNorm, every param logically partitioned like the models."""
  embed: int = 64
  mlp: int = 256

  @nn.compact
  def __call__(self, x):  # (B, E)
    kernel = nn.initializers.lecun_normal()
    zeros = nn.initializers.zeros
    h = nn.Dense(self.mlp, kernel_init=nn.with_logical_partitioning(kernel, ("embed", "mlp")),
                 bias_init=nn.with_logical_partitioning(zeros, ("mlp",)))(x)
    h = nn.with_logical_constraint(nn.gelu(h), ("batch", "mlp"))  # (B, M)
    y = nn.Dense(self.embed, kernel_init=nn.with_logical_partitioning(kernel, ("mlp", "embed")),
                 bias_init=nn.with_logical_partitioning(zeros, ("embed",)))(h)
    return nn.LayerNorm(
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(zeros, ("embed",)))(x + y)  # (B, E)


def _init_fn(model=MLP()):
  return lambda rng: model.init(rng, jnp.zeros((8, model.embed)))["params"]


# --- mesh ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sizes, shape", [
    (dict(data=-1), (8, 1, 1)),
    (dict(data=2, fsdp=-1, tensor=2), (2, 2, 2)),
    (dict(data=1, fsdp=8, tensor=1), (1, 8, 1)),
    (dict(data=2, fsdp=1, tensor=-1), (2, 1, 4)),
])
def test_make_mesh_resolves_minus_one(sizes, shape):
  mesh = partitioning.make_mesh(_config(**sizes).mesh)
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert tuple(mesh.shape.values()) == shape
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


def test_make_mesh_on_a_subset_of_devices():
  mesh = partitioning.make_mesh(_config(data=-1, fsdp=2).mesh, devices=jax.devices()[:4])
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 1}


@pytest.mark.parametrize("sizes, match", [
    (dict(data=2, fsdp=2, tensor=1), r"config.mesh \(data=2, fsdp=2, tensor=1\) needs 4 devices "
                                     r"but 8 are available"),
    (dict(data=-1, fsdp=-1), r"-1 for \['data', 'fsdp'\]; at most one axis"),
    (dict(data=-1, fsdp=0), r"config.mesh.fsdp=0 is not a valid axis size"),
    (dict(data=-1, tensor=-2), r"config.mesh.tensor=-2 is not a valid axis size"),
    (dict(data=-1, fsdp=3), r"config.mesh.data=-1 cannot take the remaining devices.*divides 8"),
])
def test_make_mesh_errors_name_setting_and_fix(sizes, match):
  with pytest.raises(ValueError, match=match):
    partitioning.make_mesh(_config(**sizes).mesh)


# --- logical rules ------------------------------------------------------------------------

def test_logical_rules_normalize_lists_and_validate():
  rules = partitioning.logical_rules(_config(rules=[["batch", ["data", "fsdp"]], ["embed", None]]))
  assert rules == (("batch", ("data", "fsdp")), ("embed", None))
  with pytest.raises(ValueError, match="unknown logical axis 'embedding'"):
    partitioning.logical_rules(_config(rules=(("embedding", "fsdp"),)))
  with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
    partitioning.logical_rules(_config(rules=(("mlp", "model"),)))
  # A table without 'batch' replicated every activation: 4.2x the work per device on data=8.
  with pytest.raises(ValueError, match="has no rule for 'batch'.*Put \\('batch'"):
    partitioning.logical_rules(_config(rules=(("embed", "fsdp"),)))
  with pytest.raises(ValueError, match="maps 'batch' to 'data'"):
    partitioning.logical_rules(_config(rules=(("batch", "data"), ("embed", "fsdp"))))


def test_state_shardings_follow_rules_and_optimizer_mirrors_params():
  config = _config(data=2, fsdp=2, tensor=2)
  mesh, rules = partitioning.make_mesh(config.mesh), partitioning.logical_rules(config)
  tx, _ = optim.make_optimizer(OPTIM, num_steps=10)
  boxed = train_state.abstract_train_state(jax.random.key(0), _init_fn(), tx)
  shardings = partitioning.state_shardings(boxed, mesh, rules)
  specs = jax.tree.map(lambda s: s.spec, shardings)
  assert specs.params["Dense_0"]["kernel"] == P("fsdp", "tensor")
  assert specs.params["Dense_1"]["kernel"] == P("tensor", "fsdp")
  assert specs.params["Dense_0"]["bias"] == P("tensor")
  assert specs.params["LayerNorm_0"]["scale"] == P("fsdp")
  assert specs.step == P()
  adam = specs.opt_state[1][0]  # chain(clipping, adamw = chain(scale_by_adam, ...))
  assert adam.count == P()
  assert adam.mu == specs.params and adam.nu == specs.params
  logical = partitioning.logical_specs(boxed)
  assert logical.params["Dense_0"]["kernel"] == P("embed", "mlp")


def test_state_shardings_errors():
  mesh = partitioning.make_mesh(_config(fsdp=8, data=1).mesh)
  params = jax.eval_shape(_init_fn(MLP(embed=12)), jax.random.key(0))
  with pytest.raises(ValueError,
                     match=r"Dense_0/kernel .* axis 'embed' of size 12 cannot be split 8.*"
                     r"or set config.model.hidden_size to a multiple of 8"):
    partitioning.state_shardings(params, mesh, RULES)
  params = jax.eval_shape(_init_fn(), jax.random.key(0))
  with pytest.raises(ValueError, match=r"logical axis 'mlp'.*does not map.*\('mlp', None\)"):
    partitioning.state_shardings(params, mesh, tuple(r for r in RULES if r[0] != "mlp"))
  # GPT-2's odd vocabulary over tensor parallelism: the fix that keeps the table sharded is named.
  embed = nn.Embed(50257, 8, embedding_init=nn.with_logical_partitioning(
      nn.initializers.normal(), ("vocab", "embed")))
  table = jax.eval_shape(lambda: embed.init(jax.random.key(0), jnp.zeros((1,), jnp.int32)))
  with pytest.raises(ValueError, match=r"pad config.model.vocab_size=50257 up to a multiple of 2 "
                                       r"\(e.g. 50304"):
    partitioning.state_shardings(table, partitioning.make_mesh(_config(tensor=2).mesh), RULES)


def test_with_logical_rules_constrains_activations():
  config = _config(data=4, tensor=2)
  mesh, rules = partitioning.make_mesh(config.mesh), partitioning.logical_rules(config)

  def hidden(x):  # (B, M) under the ('batch', 'mlp') constraint
    return nn.with_logical_constraint(x * 2, ("batch", "mlp"))

  x = jnp.ones((8, 16))
  with partitioning.with_logical_rules(rules, mesh):
    y = jax.jit(hidden)(x)
  assert {s.data.shape for s in y.addressable_shards} == {(2, 8)}
  assert jax.jit(hidden)(x).sharding.is_fully_replicated  # no rules, no mesh: a no-op


# --- batch ----------------------------------------------------------------------------------

def test_batch_sharding_splits_leading_dim_over_data_parallel_axes():
  mesh = partitioning.make_mesh(_config(data=2, fsdp=2, tensor=2).mesh)
  assert partitioning.data_parallel_size(mesh) == 4
  batch = jax.device_put(np.arange(8 * 3).reshape(8, 3), partitioning.batch_sharding(mesh))
  assert {s.data.shape for s in batch.addressable_shards} == {(2, 3)}
  assert len({s.index[0].start for s in batch.addressable_shards}) == 4  # tensor holds copies


@pytest.mark.parametrize("batch, micro, processes, match", [
    (12, 1, 1, r"config.train.global_batch_size=12 is not divisible by the 8 data-parallel"),
    (24, 1, 16, r"global_batch_size=24 is not divisible by the 16 processes"),
    (16, 4, 1, r"config.train.microbatches=4 .*multiple of microbatches x 8 = 32"),
    (16, 0, 1, r"config.train.microbatches=0 must be >= 1"),
])
def test_validate_batch_errors(batch, micro, processes, match):
  mesh = partitioning.make_mesh(_config(data=4, fsdp=2).mesh)
  with pytest.raises(ValueError, match=match):
    partitioning.validate_batch(batch, micro, mesh, processes)


def test_validate_batch_accepts_divisible_batches():
  mesh = partitioning.make_mesh(_config(data=4, fsdp=2).mesh)
  partitioning.validate_batch(32, 4, mesh, 2)


# --- sharded init -----------------------------------------------------------------------------

def _bytes_per_device(tree):
  per_device = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
  return per_device


def test_fsdp_shards_params_and_adam_state():
  config = _config(data=1, fsdp=8)
  mesh, rules = partitioning.make_mesh(config.mesh), partitioning.logical_rules(config)
  tx, _ = optim.make_optimizer(OPTIM, num_steps=10)
  layout = train_state.state_layout(jax.random.key(0), _init_fn(), tx, mesh, rules)
  state = train_state.init_sharded(jax.random.key(0), _init_fn(), tx, layout)
  assert jax.tree.map(lambda a: a.sharding, state) == layout.shardings
  replicated_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
  per_device = _bytes_per_device(state)
  assert len(per_device) == 8
  assert max(per_device.values()) <= replicated_bytes / 6, (per_device, replicated_bytes)

  # An update keeps the layout: jit the step with the layout's shardings, as the trainer does.
  def step(state, x):
    grads = jax.grad(lambda p: jnp.mean(MLP().apply({"params": p}, x) ** 2))(state.params)
    return state.apply_gradients(grads, tx)

  step = jax.jit(step, in_shardings=(layout.shardings, partitioning.batch_sharding(mesh)),
                 out_shardings=layout.shardings, donate_argnums=0)
  x = jax.device_put(jnp.ones((8, 64)), partitioning.batch_sharding(mesh))
  with partitioning.with_logical_rules(rules, mesh):
    new_state = step(state, x)
  assert int(new_state.step) == 1
  assert max(_bytes_per_device(new_state).values()) <= replicated_bytes / 6


def test_adafactor_factored_state_is_laid_out_and_steps_like_one_device():
  # Adafactor's factored statistics have one axis fewer than their params: they are replicated
  # (small), and the sharded update equals the one-device update.
  model = MLP(embed=128, mlp=256)
  tx, _ = optim.make_optimizer({**OPTIM, "name": "adafactor", "weight_decay": 0.1},
                               num_steps=10)
  x, target = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 128)), jnp.float32)

  def run(mesh_sizes, devices=None):
    config = _config(**mesh_sizes)
    mesh = partitioning.make_mesh(config.mesh, devices)
    rules = partitioning.logical_rules(config)
    layout = train_state.state_layout(jax.random.key(0), _init_fn(model), tx, mesh, rules)
    state = train_state.init_sharded(jax.random.key(0), _init_fn(model), tx, layout)

    def step(state, x):
      loss = lambda p: jnp.mean((model.apply({"params": p}, x) - target) ** 2)  # noqa: E731
      return state.apply_gradients(jax.grad(loss)(state.params), tx)

    step = jax.jit(step, in_shardings=(layout.shardings, partitioning.batch_sharding(mesh)),
                   out_shardings=layout.shardings)
    with partitioning.with_logical_rules(rules, mesh), jax.default_matmul_precision("highest"):
      for _ in range(2):
        state = step(state, jax.device_put(x, partitioning.batch_sharding(mesh)))
    return layout, state

  layout, sharded = run(dict(data=1, fsdp=4, tensor=2))
  specs = {jax.tree_util.keystr(p): s.spec
           for p, s in jax.tree_util.tree_leaves_with_path(layout.shardings.opt_state)}
  assert specs["[1][0].v_row['Dense_0']['kernel']"] == P()  # factored: (128,) of (128, 256)
  assert specs["[1][0].v['Dense_0']['bias']"] == P("tensor")  # unfactored: the param's layout
  _, single = run(dict(data=1), jax.devices()[:1])
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
