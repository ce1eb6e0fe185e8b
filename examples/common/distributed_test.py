"""Several processes on localhost: ``distributed.initialize`` with the coordinator given, and one
FSDP-sharded RSGDm step that agrees with the same step on one process.

Run as a script, this file is the worker the test starts: ``python -m
examples.common.distributed_test OUT PROCESS_ID NUM_PROCESSES PORT LOCAL_DEVICES``.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from ml_collections import ConfigDict

from examples.common import distributed

STEPS = 3
VIEWS = ("base", "topk", "sign")
TIMEOUT_S = 240  # each process; a hung peer fails the test instead of hanging CI


@pytest.mark.parametrize(
  ("settings", "message"),
  [
    ({"distributed": False, "process_id": 0}, "without config.distributed=True"),
    ({"distributed": True, "coordinator_address": "h:1"}, "num_processes, config.process_id"),
    (
      {"distributed": True, "coordinator_address": "h", "num_processes": 2, "process_id": 0},
      "host:port",
    ),
    (
      {"distributed": True, "coordinator_address": "h:1", "num_processes": 2, "process_id": 2},
      r"process_id must be in \[0, num_processes\)",
    ),
  ],
)
def test_bad_settings_are_named_before_anything_starts(settings, message):
  config = ConfigDict({"coordinator_address": "", "num_processes": 0, "process_id": -1})
  config.update(settings)
  if config.num_processes == 0:
    del config["num_processes"]
  if config.process_id == -1 and "process_id" not in settings:
    del config["process_id"]
  with pytest.raises(ValueError, match=message):
    distributed.initialize(config)


def test_not_distributed_starts_nothing():
  distributed.initialize(ConfigDict({"distributed": False, "coordinator_address": ""}))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(out, process_id, num_processes, port, local_devices):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu")
  return subprocess.Popen(
    [
      sys.executable,
      "-m",
      "examples.common.distributed_test",
      *map(str, (out, process_id, num_processes, port, local_devices)),
    ],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _wait_all(procs):
  outputs = []
  try:
    for proc in procs:
      outputs.append(proc.communicate(timeout=TIMEOUT_S)[0])
  except subprocess.TimeoutExpired:
    for proc in procs:
      proc.kill()
    pytest.fail(f"a worker did not finish within {TIMEOUT_S} s")
  for proc, output in zip(procs, outputs, strict=True):
    assert proc.returncode == 0, output[-3000:]


def test_two_processes_take_the_same_fsdp_steps_as_one(tmp_path):
  port = _free_port()
  _wait_all([_start(tmp_path / "two", i, 2, port, 2) for i in range(2)])
  _wait_all([_start(tmp_path / "one", 0, 1, 0, 4)])
  assert sorted(os.listdir(tmp_path / "two")) == ["0.npz"]  # only process 0 writes
  two, one = np.load(tmp_path / "two" / "0.npz"), np.load(tmp_path / "one" / "0.npz")
  assert sorted(two.files) == sorted(one.files)
  for name in two.files:
    np.testing.assert_allclose(two[name], one[name], rtol=1e-6, atol=1e-7, err_msg=name)
  assert not np.allclose(two["topk/w"], two["base/w"])  # the views really differ


def _worker(out, process_id, num_processes, port, local_devices):
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
  if num_processes > 1:
    distributed.initialize(
      ConfigDict(
        {
          "distributed": True,
          "coordinator_address": f"127.0.0.1:{port}",
          "num_processes": num_processes,
          "process_id": process_id,
          "distributed_timeout_s": 60,
        }
      )
    )
  import jax
  import optax
  from jax.experimental import multihost_utils

  import rsgd_optax as rsgd
  from examples.common import sharding

  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  rng = np.random.default_rng(0)
  host = {"w": rng.normal(size=(8, 6)), "b": rng.normal(size=(6,))}
  curvature = {k: np.abs(rng.normal(size=v.shape)) + 0.5 for k, v in host.items()}
  specs = sharding.shardings(host, mesh, "fsdp")

  def put(tree):
    return jax.tree.map(
      lambda a, s: jax.make_array_from_callback(a.shape, s, lambda i: a[i].astype(np.float32)),
      tree,
      specs,
    )

  tx = optax.named_chain(
    ("base", optax.sgd(0.1, momentum=0.9)),
    ("topk", rsgd.residual_topk(0.25)),
    ("sign", rsgd.residual_sign()),
  )
  params, c = put(host), put(curvature)
  with jax.set_mesh(mesh):
    state = jax.jit(tx.init)(params)

    @jax.jit
    def step(params, state, c):
      grads = jax.tree.map(lambda c, w: c * w, c, params)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    for _ in range(STEPS):
      params, state = step(params, state, c)
    points = {"base": params}
    for name in VIEWS[1:]:
      points[name] = jax.jit(lambda s, p, n=name: rsgd.eval_params(s, p, which=n))(state, params)
  gathered = multihost_utils.process_allgather(points, tiled=True)
  if jax.process_index() == 0:
    os.makedirs(out, exist_ok=True)
    flat = {f"{v}/{k}": np.asarray(a) for v, tree in gathered.items() for k, a in tree.items()}
    np.savez(os.path.join(out, "0.npz"), **flat)
  if num_processes > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  _worker(sys.argv[1], *(int(a) for a in sys.argv[2:]))
