"""The FSDP layout rule and the shardings it gives on a device mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import rsgd_optax as rsgd
from examples.common import sharding


@pytest.mark.parametrize(
  ("shape", "spec"),
  [
    ((8, 6), P("data", None)),  # the largest dimension that 4 divides
    ((6, 8), P(None, "data")),
    ((3, 3, 16, 32), P(None, None, None, "data")),
    ((12, 12), P("data", None)),  # a tie: the first
    ((6,), P()),  # nothing divisible: replicated
    ((), P()),
    ((2, 4), P(None, "data")),
  ],
)
def test_fsdp_splits_the_largest_divisible_dimension(shape, spec):
  assert sharding.fsdp_spec(shape, 4) == spec


def test_params_and_optimizer_state_are_split_across_the_mesh():
  mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4])
  params = {"w": jnp.ones((8, 6)), "b": jnp.ones(6)}
  tx = optax.chain(optax.sgd(0.1, momentum=0.9), rsgd.residual_topk(0.25))
  param_shardings = sharding.shardings(params, mesh, "fsdp")
  params = jax.device_put(params, param_shardings)
  with jax.set_mesh(mesh):
    state = jax.jit(tx.init)(params)
  residual = rsgd.find_residual_state(state).residual
  assert residual["w"].sharding.spec == P("data", None)
  assert residual["b"].sharding.is_fully_replicated
  shard_bytes = {d: 0 for d in mesh.devices.flat}
  for leaf in jax.tree.leaves((params, state)):
    for shard in leaf.addressable_shards:
      shard_bytes[shard.device] += shard.data.nbytes
  # w (8x6), its momentum and its residual are split four ways; the 6-entry vectors are not.
  whole = 3 * 8 * 6 * 4
  replicated = 3 * 6 * 4 + 4  # b, its momentum and residual; the residual's int32 count
  assert set(shard_bytes.values()) == {whole // 4 + replicated}


def test_unknown_sharding_is_named():
  mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  with pytest.raises(ValueError, match=r"Unknown sharding 'zero3'.*replicated, fsdp"):
    sharding.shardings({"w": np.ones(2)}, mesh, "zero3")
