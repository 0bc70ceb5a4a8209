"""The main job end to end on the built-in real images: precompute, tokenizer, Grain batches,
train steps, Orbax checkpoint with the data iterator; a resumed run equals an uninterrupted one."""

import json
import os

import numpy as np
import pytest

from configs import medq_uni
from configs.data import medq_sample


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


def _config(data_dir, steps, profile_steps=(0, 0)):
  config = medq_uni.get_config("size=tiny,stage=2,mesh=1x-1x1")
  with config.unlocked():
    config.train.profile_steps = profile_steps
    config.data.data_dir = data_dir
    config.data.max_slices_per_volume = 2
    config.data.ldct.num_angles = 30
    config.data.num_workers = 0
    config.train.steps = steps
    config.train.batch_size = 8
    config.train.checkpoint_every = 1
  return config


def _metrics(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_resumed_run_matches_uninterrupted_run(data_dir, tmp_path):
  from launch.jobs import run_training as train

  straight = str(tmp_path / "straight")
  final_straight = train(_config(data_dir, 3, profile_steps=(1, 2)), straight)
  traces = [f for _, _, files in os.walk(os.path.join(straight, "profile")) for f in files]
  assert any(f.endswith(".xplane.pb") for f in traces), traces
  assert [m["step"] for m in _metrics(straight)] == [1, 2, 3]
  assert np.isfinite(final_straight["loss"]) and final_straight["loss_ce"] > 0
  # The logged rate is the model FLOPs per device (counted in a second thread while the step
  # compiled) over the step time: the same count as `step_flops` of the run's batch shapes.
  import jax

  from medq_jax import layout as layout_lib
  from medq_jax.train import profiling

  config = _config(data_dir, 3)
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, config.train.stage)
  batch = next(profiling.synthetic_batches(config, os.path.join(straight, "tokenizer"), spec))
  logged = final_straight["tflops_per_second_per_device"] * final_straight["step_seconds"] * 1e12
  assert logged == pytest.approx(profiling.step_flops(config, batch) / jax.device_count(), rel=1e-6)
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  events = EventAccumulator(os.path.join(straight, "tensorboard"))
  events.Reload()
  assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
  assert [e.value for e in events.Scalars("train/loss")][-1] == pytest.approx(
    final_straight["loss"], rel=1e-6
  )

  resumed = str(tmp_path / "resumed")
  os.makedirs(resumed)
  # Reuse the trained tokenizer so both runs see identical token ids.
  os.symlink(os.path.join(straight, "tokenizer"), os.path.join(resumed, "tokenizer"))
  train(_config(data_dir, 2), resumed)
  final_resumed = train(_config(data_dir, 3), resumed)
  assert [m["step"] for m in _metrics(resumed)] == [1, 2, 3]
  for key in ("loss", "loss_rf", "loss_ce", "grad_norm"):
    assert final_resumed[key] == pytest.approx(final_straight[key], rel=1e-5), key


def test_trained_checkpoint_scores_bench_items(data_dir, tmp_path):
  """The checkpoint of a run restores as a BenchModel and predicts MedQ-Bench items written
  and read back in VLMEvalKit TSV format."""
  from data_pipeline.demo_examples import demo_examples
  from launch.jobs import run_training as train
  from medq_jax.bench import model_interface
  from medq_jax.bench.generator import generate_items, write_items
  from medq_jax.bench.items import load_mcq_items, load_reasoning_items
  from medq_jax.infer.bench_model import load_from_workdir

  workdir = str(tmp_path / "run")
  config = _config(data_dir, 1)
  with config.unlocked():
    config.init.flux_ae = "builtin"  # the tiny VAE shipped with the package
  train(config, workdir)
  model = load_from_workdir(workdir, config)
  assert isinstance(model, model_interface.BenchModel)
  model.max_new_tokens = 4
  paths = write_items(
    generate_items(demo_examples(medq_sample.get_config("image_size=64,runlocal"))[:2], seed=0),
    str(tmp_path / "items"),
  )
  mcq = load_mcq_items(paths["qa"]).items[:3]
  rows = model_interface.predict_items(model, mcq)
  assert [r["index"] for r in rows] == [i.index for i in mcq]
  for row, item in zip(rows, mcq):
    assert isinstance(row["prediction"], str)  # the generated answer; the scorer extracts it
    assert row["likelihood_letter"] in item.options
    assert len(row["option_log_likelihoods"]) == len(item.options)
    assert all(s < 0 for s in row["option_log_likelihoods"])
  paired = load_reasoning_items(paths["paired"], "paired").items[:1]
  texts = model_interface.predict_items(model, paired)
  assert isinstance(texts[0]["prediction"], str)
