"""The trainer under faults (tiny config, real data): a corrupt latest checkpoint is reported and
the previous one resumes (metrics.jsonl without duplicate rows, the same numbers as the first
time); non-finite steps are skipped and stop the run without touching the checkpoints; logged
step timings are the true mean; an all-undecodable split stops naming the dataset; Grain workers
exit with a SIGKILLed trainer."""

import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from configs import medq_uni
from medq_jax import checkpoints
from medq_jax.train import checkpoint as checkpoint_lib
from medq_jax.train import loop

BATCH = 8


def _config(data_dir, steps, **train):
  config = medq_uni.get_config("size=tiny,stage=1,mesh=1x-1x1")
  with config.unlocked():
    config.data.data_dir = data_dir
    config.data.max_slices_per_volume = 2
    config.data.ldct.num_angles = 30
    config.data.num_workers = 0
    config.train.steps = steps
    config.train.batch_size = BATCH
    config.train.tensorboard = False
    for key, value in train.items():
      config.train[key] = value
  return config


def _rows(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 4-step run (checkpoints at 2 and 4, logs at 2 and 4) and the wall time of each report."""
  from launch import prepare

  root = tmp_path_factory.mktemp("faults")
  data_dir, workdir = str(root / "data"), str(root / "run")
  config = _config(data_dir, 4, log_every=2, checkpoint_every=2)
  tokenizer_dir = prepare.prepare_training(config, workdir)
  reported = {}

  def report(step, metrics):
    reported[step] = (time.perf_counter(), metrics)

  loop.train(config, workdir, tokenizer_dir, report=report)
  return data_dir, workdir, tokenizer_dir, reported


def _copy_run(workdir, target):
  shutil.copytree(workdir, target, symlinks=True)
  return str(target)


def test_logged_examples_per_second_is_the_true_mean(trained):
  """Steps run asynchronously; the logged rate is steps * batch / wall time between logs."""
  _, _, _, reported = trained
  (t2, _), (t4, metrics) = reported[2], reported[4]
  measured = 2 * BATCH / (t4 - t2)
  assert metrics["examples_per_second"] == pytest.approx(measured, rel=0.1)
  assert metrics["step_seconds"] == pytest.approx((t4 - t2) / 2, rel=0.1)
  assert metrics["nonfinite_steps"] == 0 and metrics["nonfinite"] == 0


def _largest_array_file(step_dir):
  files = [
    os.path.join(root, name)
    for root, _, names in os.walk(os.path.join(step_dir, "state"))
    for name in names
  ]
  return max(files, key=os.path.getsize)


def test_corrupt_latest_checkpoint_resumes_from_the_previous_one(trained, tmp_path, caplog):
  data_dir, workdir, tokenizer_dir, _ = trained
  run = _copy_run(workdir, tmp_path / "run")
  first = {row["step"]: row for row in _rows(run)}
  step4 = os.path.join(checkpoints.checkpoint_dir(run), "4")
  path = _largest_array_file(step4)
  data = bytearray(pathlib.Path(path).read_bytes())
  data[len(data) // 2] ^= 0x10  # one flipped bit in the array data
  pathlib.Path(path).write_bytes(bytes(data))

  with caplog.at_level(logging.ERROR):
    last = loop.train(_config(data_dir, 4, log_every=2, checkpoint_every=2), run, tokenizer_dir)
  assert any("step 4" in r.getMessage() for r in caplog.records), caplog.text
  assert os.path.isdir(os.path.join(run, checkpoint_lib.CORRUPT_SUBDIR, "4"))
  # Resumed from step 2 (the data iterator too): step 4 again, the same numbers, one row each.
  assert [row["step"] for row in _rows(run)] == [2, 4]
  for key in ("loss", "loss_rf", "grad_norm"):
    assert last[key] == pytest.approx(first[4][key], rel=1e-5), key


def test_a_resume_reads_no_init_weights(trained, tmp_path, caplog):
  """A resume restores its own state: the init.* weights it started from are neither checked
  nor read (here init.from_checkpoint names a directory that is gone), and the resumed steps
  give the first run's numbers."""
  data_dir, workdir, tokenizer_dir, _ = trained
  run = _copy_run(workdir, tmp_path / "run")
  first = {row["step"]: row for row in _rows(run)}
  shutil.rmtree(os.path.join(checkpoints.checkpoint_dir(run), "4"))
  config = _config(data_dir, 4, log_every=2, checkpoint_every=2)
  config.init.from_checkpoint = str(tmp_path / "deleted_stage1")
  with caplog.at_level(logging.INFO):
    last = loop.train(config, run, tokenizer_dir)
  assert "resumed from step 2" in caplog.text
  assert "initialising MedQUni" not in caplog.text
  for key in ("loss", "loss_rf", "grad_norm"):
    assert last[key] == pytest.approx(first[4][key], rel=1e-5), key
  # a run that has not started still checks it, before anything is built
  fresh = _config(data_dir, 4)
  fresh.init.from_checkpoint = str(tmp_path / "deleted_stage1")
  with pytest.raises(ValueError, match="init.from_checkpoint=.*deleted_stage1: no checkpoints"):
    loop.train(fresh, str(tmp_path / "fresh"), tokenizer_dir)


def test_no_usable_checkpoint_is_one_error(trained, tmp_path, unraisable_reports):
  data_dir, workdir, tokenizer_dir, _ = trained
  run = _copy_run(workdir, tmp_path / "run")
  directory = checkpoints.checkpoint_dir(run)
  steps = sorted((int(s) for s in os.listdir(directory) if s.isdigit()), reverse=True)
  assert steps == [4, 2, 1]  # Orbax also keeps the first step
  for step in steps:
    os.remove(_largest_array_file(os.path.join(directory, str(step))))
  with pytest.raises(
    checkpoints.CheckpointError,
    match=r"no usable checkpoint to resume from: step 4 .*OCDBT.*; step 2 .*; step 1 ",
  ):
    loop.train(_config(data_dir, 6, checkpoint_every=2), run, tokenizer_dir)
  # Orbax's abandoned reads of the three failed restores stay out of the terminal.
  assert unraisable_reports.settle() == []


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # the 1e39
def test_nonfinite_steps_are_skipped_and_stop_the_run(trained, tmp_path):
  """A learning rate beyond float32's range (inf inside the step; the config check refuses NaN
  itself) makes every update non-finite: each is skipped, the run stops after
  max_consecutive_nonfinite, and no checkpoint is written or pruned."""
  data_dir, workdir, tokenizer_dir, _ = trained
  run = _copy_run(workdir, tmp_path / "run")
  directory = checkpoints.checkpoint_dir(run)
  steps = (1, 2, 4)  # Orbax keeps the first step too
  before = {s: pathlib.Path(checkpoints.checksum_path(directory, s)).read_text() for s in steps}
  config = _config(
    data_dir, 12, learning_rate=1e39, checkpoint_every=1, max_consecutive_nonfinite=3
  )
  with pytest.raises(loop.NonFiniteError, match=r"stopping at step 7: 3 consecutive .*step 4"):
    loop.train(config, run, tokenizer_dir)
  manager = checkpoints.open_manager(directory)
  assert sorted(manager.all_steps()) == list(steps)
  manager.close()
  assert {
    s: pathlib.Path(checkpoints.checksum_path(directory, s)).read_text() for s in steps
  } == before
  rows = _rows(run)
  assert [r["step"] for r in rows] == [2, 4, 5, 6]  # step 7 raised before its row
  assert [r["nonfinite_steps"] for r in rows[2:]] == [1, 2]
  assert all(np.isfinite(r["loss"]) for r in rows)  # the kept parameters stay good


def _corrupt_split(data_dir, target):
  """A copy of the precomputed dataset whose train records are all garbage."""
  from array_record.python import array_record_module

  from data_pipeline import tfds_format

  config = _config(data_dir, 1).data
  source = tfds_format.dataset_dir(data_dir, config.name, config.version)
  copy = tfds_format.dataset_dir(str(target), config.name, config.version)
  shutil.copytree(source, copy)
  shards = [os.path.join(copy, name) for name in os.listdir(copy) if "train.array_record" in name]
  assert shards
  for shard in shards:
    count = array_record_module.ArrayRecordReader(shard).num_records()
    writer = array_record_module.ArrayRecordWriter(shard, "group_size:1")
    for index in range(count):
      writer.write(b"not a record %d" % index)
    writer.close()
  return str(target)


def test_all_records_skipped_stops_naming_the_dataset(trained, tmp_path):
  from data_pipeline import loader
  from medq_jax import layout as layout_lib
  from medq_jax.train import data as data_lib

  data_dir, _, tokenizer_dir, _ = trained
  config = _config(_corrupt_split(data_dir, tmp_path / "bad"), 1, max_consecutive_skips=20)
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, 1)
  iterator = data_lib.make_train_iterator(config, tokenizer_dir, spec)
  with pytest.raises(loader.SkipLimitError, match=r"bad.*split 'train'.*20 records in a row"):
    next(iterator)


_CHILD = textwrap.dedent(
  """
  import os, sys, time
  sys.path.insert(0, sys.argv[2])
  from absl import flags
  from configs.data import medq_sample
  from data_pipeline import loader

  if __name__ == "__main__":
    flags.FLAGS(sys.argv[:1])
    config = medq_sample.get_config("image_size=64")
    config.data_dir = sys.argv[1]
    iterator = iter(loader.make_loader(config, "train", worker_count=2, batch_size=2))
    next(iterator)
    print("ready", flush=True)
    time.sleep(600)
  """
)


def test_grain_workers_exit_with_a_killed_trainer(trained, tmp_path):
  psutil = pytest.importorskip("psutil")
  data_dir = trained[0]
  script = tmp_path / "child.py"
  script.write_text(_CHILD)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  child = subprocess.Popen(
    [sys.executable, str(script), data_dir, repo], stdout=subprocess.PIPE, text=True
  )
  try:
    assert child.stdout.readline().strip() == "ready"
    workers = psutil.Process(child.pid).children(recursive=True)
    names = {w.pid: " ".join(w.cmdline())[-80:] for w in workers}
    assert len(workers) >= 2
  finally:
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
  alive = lambda: [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
  deadline = time.time() + 30
  while alive() and time.time() < deadline:
    time.sleep(0.5)
  survivors = [names[w.pid] for w in alive()]
  for worker in alive():
    worker.kill()
  assert not survivors, survivors
