"""The stage pipeline (medq_jax/train/pipeline.py) run as a user runs it: one `medq-train`
command runs stages 0 -> 1 -> 2; killed mid-stage 2 and rerun, it skips stages 0-1 as complete
and resumes stage 2 from its latest checkpoint; stage 2 starts from stage 1's parameters
(`init.from_checkpoint`). Stage 0's training is stubbed (tests/test_vae_stage.py trains it)."""

import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from configs import medq_uni
from medq_jax.train import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def vae_file(tmp_path_factory):
  """A fresh tiny VAE written in the FLUX naming (what stage 0 would leave)."""
  import jax

  from medq_jax.train import vae_stage

  path = str(tmp_path_factory.mktemp("vae") / "ae.safetensors")
  config = medq_uni.get_config("size=tiny")
  return vae_stage.save_vae_params(
    vae_stage.init_vae_params(config.model.vae, jax.random.key(0)), path
  )


def _command(workdir, data_dir, vae_file):
  return [
    sys.executable,
    "-u",
    "-m",
    "launch.train",
    "--config=configs/medq_uni.py:size=tiny,stages=0-1-2",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    "--config.data.max_slices_per_volume=2",
    "--config.data.ldct.num_angles=30",
    "--config.data.num_workers=0",
    "--config.pipeline.stage1_steps=2",
    "--config.pipeline.stage2_steps=4",
    "--config.train.checkpoint_every=1",
    "--config.train.tensorboard=False",
    f"--config.init.flux_ae={vae_file}",
  ]


def _env(subprocess_env):
  """One CPU device (faster compiles than the tests' 8 fake ones); the session's compilation
  cache (tests/conftest.py) keeps every compile, so the rerun does not compile stage 2 again."""
  return subprocess_env(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


@pytest.fixture(scope="module")
def killed_and_rerun(tmp_path_factory, vae_file, subprocess_env):
  """Runs the pipeline, kills it at stage 2's step 3, reruns it: (workdir, lines of each run)."""
  base = tmp_path_factory.mktemp("pipeline")
  workdir, data_dir = str(base / "run"), str(base / "data")
  command, env = _command(workdir, data_dir, vae_file), _env(subprocess_env)
  stderr_path = base / "stderr.txt"
  stderr_file = open(stderr_path, "w")  # noqa: SIM115 (closed below; kept for the assertion)
  process = subprocess.Popen(
    command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr_file, text=True
  )
  first = []
  for line in process.stdout:
    first.append(line.rstrip("\n"))
    if line.startswith("stage 2 ") and "step 3/4" in line:
      process.send_signal(signal.SIGKILL)
      break
  process.wait(timeout=60)
  stderr_file.close()
  assert process.returncode == -signal.SIGKILL, (first, stderr_path.read_text()[-3000:])
  rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  return workdir, first, rerun.stdout.splitlines()


def test_killed_pipeline_resumes_stage2_and_skips_complete_stages(killed_and_rerun, vae_file):
  workdir, first, second = killed_and_rerun
  stage_lines = lambda lines, stage: [line for line in lines if line.startswith(f"stage {stage} ")]
  assert "loading the VAE" in stage_lines(first, 0)[0]
  assert "starting in" in stage_lines(first, 1)[0]
  assert [re.search(r": step (\d+)/2 loss \d", line)[1] for line in stage_lines(first, 1)[1:]] == [
    "1",
    "2",
  ]
  # The rerun: stage 0 loads the VAE again, stage 1 is skipped, stage 2 resumes.
  assert f"loading the VAE {vae_file}" in stage_lines(second, 0)[0]
  assert stage_lines(second, 1) == [
    f"stage 1 (2/3, restoration pre-training (gen expert)): complete at step 2 in "
    f"{workdir}/stage1, its parameters verified; skipped"
  ]
  resumed = re.search(r"resuming from step (\d+)", stage_lines(second, 2)[0])
  assert resumed, stage_lines(second, 2)
  start = int(resumed[1])
  assert 1 <= start <= 2  # killed while stage 2's step 3 was running
  steps = [int(m[1]) for line in stage_lines(second, 2) if (m := re.search(r"step (\d+)/4", line))]
  assert steps == list(range(start + 1, 5))
  assert second[-2] == f"pipeline done: final checkpoint directory {workdir}/stage2/checkpoints"
  assert second[-1].startswith("final: ") and "step=4" in second[-1]
  assert pipeline.completed_step(f"{workdir}/stage2") == 4
  # each stage directory loads alone (its own copy of the run's tokenizer)
  for stage in (1, 2):
    assert os.path.isfile(f"{workdir}/stage{stage}/tokenizer/tokenizer.json")


def test_a_complete_stage_whose_final_step_does_not_verify_is_trained_again(
  killed_and_rerun, tmp_path, capsys
):
  """A stage that reached its steps is skipped only when its final step's parameters restore and
  match their checksums: with stage 1's final step truncated, the rerun hands stage 1 to the
  trainer (which resumes from the good step before it) and still skips the intact stage 2."""
  import shutil

  from medq_jax import checkpoints

  workdir = str(tmp_path / "run")
  shutil.copytree(killed_and_rerun[0], workdir, symlinks=True)
  step_dir = os.path.join(checkpoints.checkpoint_dir(f"{workdir}/stage1"), "2", "state")
  largest = max(
    (os.path.join(root, name) for root, _, names in os.walk(step_dir) for name in names),
    key=os.path.getsize,
  )
  with open(largest, "r+b") as file:
    file.truncate(os.path.getsize(largest) // 2)
  config = medq_uni.get_config("size=tiny,stages=1-2")
  config.pipeline.stage1_steps, config.pipeline.stage2_steps = 2, 4
  trained = []

  def train_fn(run_config, run_dir, tokenizer_dir, report):
    trained.append((run_dir, run_config.train.steps))
    return {"step": run_config.train.steps}

  pipeline.run_pipeline(config, workdir, "", train_fn=train_fn)
  assert trained == [(f"{workdir}/stage1", 2)]
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith(
    "stage 1 (1/2, restoration pre-training (gen expert)): final step 2 does not verify ("
  ), lines
  assert "step 2" in lines[0] and "does not restore" in lines[0]
  assert lines[1].endswith(
    f"complete at step 4 in {workdir}/stage2, its parameters verified; skipped"
  )


def test_init_from_checkpoint_loads_a_runs_latest_parameters(killed_and_rerun):
  import jax

  from medq_jax import checkpoints
  from medq_jax.train import pretrained
  from medq_jax.train import state as state_lib

  workdir = killed_and_rerun[0]
  config = pipeline.stage_config(medq_uni.get_config("size=tiny,stages=1-2"), 2, workdir, "")
  assert config.init.from_checkpoint == f"{workdir}/stage1"
  setup = state_lib.build_setup(config, jax.random.key(0))
  params, _ = pretrained.load_initial_weights(
    config.init, config.model, setup.params, setup.vae_params, setup.mesh, config.sharding_rules
  )
  expected, step = checkpoints.restore_params(f"{workdir}/stage1", config.model)
  assert step == 2
  leaves = zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(expected))
  assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in leaves)
  # a run of another model fails naming the directory
  other = medq_uni.get_config("size=tiny,scope=all")
  other.init.from_checkpoint = f"{workdir}/stage1"
  with pytest.raises(checkpoints.CheckpointError, match=f"init.from_checkpoint={workdir}/stage1"):
    pretrained.load_initial_weights(other.init, other.model, setup.params, setup.vae_params)
  missing = medq_uni.get_config("size=tiny").init
  missing.from_checkpoint = f"{workdir}/nope"
  with pytest.raises(checkpoints.CheckpointError, match=f"init.from_checkpoint={workdir}/nope"):
    pretrained.load_initial_weights(missing, config.model, setup.params, setup.vae_params)
  missing.from_checkpoint, missing.bagel_ema = f"{workdir}/stage1", "ema.safetensors"
  with pytest.raises(ValueError, match="unset init.bagel_ema"):
    pretrained.load_initial_weights(missing, config.model, setup.params, setup.vae_params)


def test_stage_configs_chain_the_stages():
  config = medq_uni.get_config("size=tiny,stages=0-1-2")
  with config.unlocked():
    config.pipeline.stage1_steps, config.pipeline.stage2_steps = 7, 9
    config.init.bagel_ema = "ema.safetensors"
  one = pipeline.stage_config(config, 1, "/w", "/w/vae/ae.safetensors")
  two = pipeline.stage_config(config, 2, "/w", "/w/vae/ae.safetensors")
  assert (one.train.stage, one.train.steps, one.workdir) == (1, 7, "/w/stage1")
  assert one.init.bagel_ema == "ema.safetensors" and not one.init.from_checkpoint
  assert (two.train.stage, two.train.steps, two.workdir) == (2, 9, "/w/stage2")
  assert two.init.from_checkpoint == "/w/stage1" and not two.init.bagel_ema
  assert one.init.flux_ae == two.init.flux_ae == "/w/vae/ae.safetensors"
  assert config.train.stage == 1 and config.init.bagel_ema  # the pipeline config is untouched
  # stage 2 alone starts from what init names
  alone = medq_uni.get_config("size=tiny,stages=2")
  assert not pipeline.stage_config(alone, 2, "/w", "").init.from_checkpoint
  # pipeline.stage0_steps is vae_train.steps
  config.pipeline.stage0_steps = 11
  assert config.vae_train.steps == 11


@pytest.mark.parametrize("text", ["", "2-1", "1-1", "3", "a-b"])
def test_bad_stages_fail_naming_the_field(text):
  with pytest.raises(ValueError, match="pipeline.stages: expected distinct stages"):
    pipeline.parse_stages(text)
  if text:
    with pytest.raises(ValueError, match="config arg: stages"):
      medq_uni.get_config(f"size=tiny,stages={text}")


def test_stage0_trains_the_vae_unless_init_names_one(tmp_path, monkeypatch, capsys, vae_file):
  """Stage 0 with a stubbed `train_vae` (the real one: tests/test_vae_stage.py)."""
  from medq_jax.train import vae_stage

  calls = []

  def fake_train_vae(config, workdir):
    calls.append((config.vae_train.steps, workdir))
    return {"path": os.path.join(workdir, "vae", "ae.safetensors"), "psnr_mean": 31.5}

  monkeypatch.setattr(vae_stage, "train_vae", fake_train_vae)
  config = medq_uni.get_config("size=tiny,stages=0")
  config.pipeline.stage0_steps = 5
  result = pipeline.run_pipeline(config, str(tmp_path), "unused", train_fn=None)
  assert calls == [(5, str(tmp_path))]
  assert result["final_checkpoint_dir"] == str(tmp_path / "vae" / "ae.safetensors")
  out = capsys.readouterr().out
  assert "stage 0 (1/1, VAE): VAE trained" in out and "31.50 dB" in out
  # init.flux_ae names one: stage 0 loads it, trains nothing; a missing file is named
  config.init.flux_ae = vae_file
  result = pipeline.run_pipeline(config, str(tmp_path), "unused")
  assert len(calls) == 1 and result["final_checkpoint_dir"] == vae_file
  config.init.flux_ae = str(tmp_path / "nope.safetensors")
  with pytest.raises(FileNotFoundError, match="init.flux_ae=.*nope.safetensors: no such file"):
    pipeline.run_pipeline(config, str(tmp_path), "unused")
  # a pipeline config without the stage-0 section says how to get one
  no_vae = medq_uni.get_config("size=tiny,stages=1-2")
  no_vae.pipeline.stages = "0-1-2"
  with pytest.raises(ValueError, match="stages=0-1-2"):
    pipeline.run_pipeline(no_vae, str(tmp_path), "unused")


def test_builtin_vae_resolves_to_the_shipped_file():
  from medq_jax.train import pretrained

  assets = pytest.importorskip("medq_jax.assets")
  config = medq_uni.get_config("size=tiny")
  config.init.flux_ae = "builtin"
  try:
    expected = assets.builtin_vae_path("tiny")
  except FileNotFoundError:
    pytest.skip("the built-in tiny VAE is not shipped yet")
  assert pretrained.flux_ae_path(config.init, config.model) == expected
