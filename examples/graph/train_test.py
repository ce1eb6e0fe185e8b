"""End-to-end tests of the Cluster-GCN trainer on tiny PPI-format graphs."""

import importlib
import json
import os

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from examples.common import optimizers
from examples.common.checkpoint import Checkpointer
from examples.common.errors import UserError
from examples.common.metrics import read_metrics
from examples.common.nonfinite import NonFiniteLossError
from examples.graph import train
from examples.graph.configs import ppi
from examples.graph.conftest import write_ppi_like
from examples.graph.graphsage_data import GraphDataError


def tiny_config(data_dir: str, **overrides):
  config = ppi.get_config()
  config.data_dir = data_dir
  config.num_layers = 3
  config.hidden = 16
  config.learning_rate = 0.01
  config.num_clusters = 4
  config.clusters_per_batch = 2
  config.num_clusters_val = 2
  config.num_clusters_test = 1
  config.num_epochs = 2
  config.checkpoint_every = 1
  config.optimizer = "adam-scale"
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("ppi"))
  write_ppi_like(directory, num_nodes=90)
  return directory


@pytest.fixture(scope="module")
def first_run(data_dir, tmp_path_factory):
  """One 2-epoch adam-scale run, with the trace counters reset before it."""
  workdir = str(tmp_path_factory.mktemp("run"))
  train.TRACE_COUNTS.clear()
  # A hidden width no other test uses, so no earlier compilation is reused.
  config = tiny_config(data_dir, hidden=12)
  record = train.train_and_evaluate(config, workdir).final["adam-scale"]
  return config, workdir, record, dict(train.TRACE_COUNTS)


def test_writes_metrics_config_and_checkpoints(first_run):
  _, workdir, record, _ = first_run
  records = read_metrics(workdir)
  assert [r["epoch"] for r in records] == [0, 1]
  assert records[-1] == record
  for r in records:
    assert np.isfinite(r["train_loss"])
    for split in ("val", "test"):
      assert 0.0 <= r[f"{split}_micro_f1"] <= 1.0
    assert r["proximity"] > 0  # adam-scale: x and y differ
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["optimizer"] == "adam-scale"
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["0", "1"]


def test_one_compilation_across_batches_of_different_sizes(first_run, data_dir):
  config, _, _, trace_counts = first_run
  graph = train.prepare_graph(config)
  sizes = {int((b.node_ids >= 0).sum()) for b in graph.train.epoch(np.random.default_rng(0))} | {
    int((b.node_ids >= 0).sum()) for b in graph.train.epoch(np.random.default_rng(1))
  }
  assert len(sizes) > 1, "the test graph should give batches of different true sizes"
  # Two epochs of several batches each, and four evaluations: one trace per function.
  assert trace_counts == {"train_step": 1, "predict": 1}


def test_resume_continues_exactly(first_run, data_dir, tmp_path):
  config, workdir, _, _ = first_run
  config = tiny_config(data_dir, hidden=12, num_epochs=3)
  resumed = train.train_and_evaluate(config, workdir).final["adam-scale"]
  assert [r["epoch"] for r in read_metrics(workdir)] == [0, 1, 2]
  # A finished run resumes to nothing and returns its last record.
  assert train.train_and_evaluate(config, workdir).final["adam-scale"] == resumed
  fresh = train.train_and_evaluate(config, str(tmp_path / "fresh")).final["adam-scale"]
  for key in ("train_loss", "val_micro_f1", "test_micro_f1", "proximity"):
    assert resumed[key] == pytest.approx(fresh[key], rel=1e-4), key


def test_evaluates_the_rsgd_point_an_ema_of_the_adam_iterates(data_dir, tmp_path, monkeypatch):
  """With residual_scale(alpha), x_{t+1} = (1 - alpha) x_t + alpha y_{t+1}, x_0 = y_0 (paper)."""
  config = tiny_config(data_dir, alpha=0.25, dropout=0.0, num_epochs=1)
  # Record the trajectory y_t by wrapping the jitted step.
  seen = []
  original = train.make_steps

  def recording(*args):
    steps = original(*args)

    def step(state, rest, batch):
      out = steps.train(state, rest, batch)
      seen.append([np.asarray(x) for x in jax.tree.leaves(out[0]["params"])])
      return out

    return train.Steps(train=step, predict=steps.predict)

  monkeypatch.setattr(train, "make_steps", recording)
  train.train_and_evaluate(config, str(tmp_path))
  with Checkpointer(str(tmp_path / "checkpoints")) as ckpt:
    restored = ckpt.restore({"state": None, "model": None})
  graph = train.prepare_graph(config)
  y0 = [
    np.asarray(x) for x in jax.tree.leaves(nnx.state(train.build_model(config, graph), nnx.Param))
  ]
  ema = y0
  for y in seen:
    ema = [0.75 * e + 0.25 * p for e, p in zip(ema, y, strict=True)]
  x = [np.asarray(v) for v in jax.tree.leaves(restored["model"])]
  assert len(seen) == graph.train.num_batches
  for got, want in zip(x, ema, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert not np.allclose(x[0], seen[-1][0])


def test_plain_adam_evaluates_its_own_parameters():
  (view,) = optimizers.parse_views("adam")
  params = {"w": np.ones(3)}
  state = {"params": params, "opt_state": optax.adam(0.01).init(params)}
  assert train.view_params(state, view) is params


def test_multiclass_graph_reports_accuracy_equal_to_micro_f1(tmp_path):
  write_ppi_like(str(tmp_path / "data"), "toy", multilabel=False, num_nodes=45)
  config = tiny_config(
    str(tmp_path / "data"),
    dataset="toy",
    optimizer="rsgdm-scale",
    num_epochs=1,
    partition_method="random",
  )
  record = train.train_and_evaluate(config, str(tmp_path / "run")).final["rsgdm-scale"]
  assert record["val_accuracy"] == pytest.approx(record["val_micro_f1"])
  assert record["test_accuracy"] == pytest.approx(record["test_micro_f1"])


@pytest.mark.parametrize(
  ("overrides", "error", "message"),
  [
    ({"optimizer": "adamx"}, UserError, "Unknown optimizer 'adamx'"),
    ({"dropout": 1.5}, UserError, r"config\.dropout=1\.5 \(must be in \[0, 1\)\)"),
    ({"clusters_per_batch": 9}, UserError, "clusters_per_batch=9 .* between 1 and the 4 clusters"),
    ({"num_clusters": 55}, UserError, r"num_clusters=55 .* between 1 and the 54 training nodes"),
    ({"dropout": float("nan")}, UserError, r"config\.dropout=nan \(must be a finite number in"),
    ({"num_epochs": 0, "learning_rate": -1.0}, UserError, "learning_rate=-1.0 .*num_epochs=0"),
    ({"dataset": "nope"}, GraphDataError, "nope-G.json"),
  ],
)
def test_user_errors_leave_no_workdir(data_dir, tmp_path, overrides, error, message):
  workdir = tmp_path / "run"
  with pytest.raises(error, match=message):
    train.train_and_evaluate(tiny_config(data_dir, **overrides), str(workdir))
  assert not workdir.exists()


@pytest.mark.parametrize("name", ["ppi", "ppi_small", "wordnet"])
def test_shipped_configs_are_valid(name):
  config = importlib.import_module(f"examples.graph.configs.{name}").get_config()
  train.check_config(config)
  train.build_optimizer(config)
  assert config.optimizer == "adam"


def test_non_finite_loss_stops_without_checkpointing_the_bad_epoch(data_dir, tmp_path):
  config = tiny_config(data_dir, optimizer="sgdm", learning_rate=1e38, num_epochs=3)
  workdir = tmp_path / "run"
  with pytest.raises(NonFiniteLossError, match="epoch 0"):
    train.train_and_evaluate(config, str(workdir))
  assert read_metrics(str(workdir)) == []
  assert not os.listdir(workdir / "checkpoints")


# Views: Adam, adam-scale, adam-sign and adam-topk are one training.

GRAPH_VIEWS = ("adam", "adam-scale", "adam-sign", "adam-topk", "adam-topk@0.2")


def _without_seconds(records):
  return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_views_equal_separate_runs_field_for_field(data_dir, tmp_path):
  config = tiny_config(data_dir, optimizer=",".join(GRAPH_VIEWS), eval_every=2, num_epochs=3)
  last = train.train_and_evaluate(config, str(tmp_path / "views")).final
  assert set(last) == set(GRAPH_VIEWS)
  with Checkpointer(str(tmp_path / "views" / "checkpoints")) as ckpt:
    shared = ckpt.restore({f"model-{n}": None for n in GRAPH_VIEWS}, epoch=2)
  for name in GRAPH_VIEWS:
    optimizer, setting = optimizers.split_setting(name)
    alone_config = tiny_config(data_dir, optimizer=optimizer, eval_every=2, num_epochs=3)
    if setting is not None:
      alone_config.topk_fraction = setting
    train.train_and_evaluate(alone_config, str(tmp_path / name))
    got = read_metrics(str(tmp_path / "views" / name))
    want = read_metrics(str(tmp_path / name))
    assert [sorted(r) for r in got] == [sorted(r) for r in want]
    assert "val_micro_f1" not in got[0] and "val_micro_f1" in got[1]  # eval_every=2
    assert _without_seconds(got) == _without_seconds(want), name
    with Checkpointer(str(tmp_path / name / "checkpoints")) as ckpt:
      model = ckpt.restore({"model": None}, epoch=2)["model"]
    jax.tree.map(np.testing.assert_array_equal, shared[f"model-{name}"], model)
  assert len({last[n]["val_loss"] for n in GRAPH_VIEWS}) == len(GRAPH_VIEWS)


def test_a_mixed_list_is_refused(data_dir, tmp_path):
  with pytest.raises(UserError, match=r"adam follows Adam's trajectory; sgdm follows SGD with"):
    train.train_and_evaluate(tiny_config(data_dir, optimizer="adam,sgdm"), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_a_finished_run_refuses_a_new_learning_rate(data_dir, tmp_path):
  workdir = tmp_path / "run"
  train.train_and_evaluate(tiny_config(data_dir, num_epochs=1), str(workdir))
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  with pytest.raises(UserError, match=r"Differing: learning_rate: 0\.01 -> 0\.02\."):
    train.train_and_evaluate(tiny_config(data_dir, num_epochs=1, learning_rate=0.02), str(workdir))
  assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before
