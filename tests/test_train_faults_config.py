"""Config and shape errors are one line each before anything is built or compiled; the run record
fixes the schedule's horizon and the Grain worker count when a run starts."""

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from configs import medq_uni
from medq_jax import checkpoints
from medq_jax.train import checkpoint as checkpoint_lib
from medq_jax.train import config_checks, loop, run_record
from medq_jax.train import state as state_lib


def _config(arg="size=tiny,stage=1,mesh=1x-1x1", **train):
  config = medq_uni.get_config(arg)
  with config.unlocked():
    for key, value in train.items():
      config.train[key] = value
  return config


@pytest.mark.parametrize(
  "train, message",
  [
    (dict(checkpoint_every=0), r"^train.checkpoint_every=0: expected an integer >= 1$"),
    (dict(steps=-1), r"^train.steps=-1: expected an integer >= 0$"),
    (dict(log_every=0), r"^train.log_every=0: expected an integer >= 1$"),
    (dict(max_consecutive_nonfinite=0), r"train.max_consecutive_nonfinite=0"),
    (dict(learning_rate=-2e-5), r"^train.learning_rate=-2e-05: expected a finite number > 0$"),
    (dict(learning_rate=float("nan")), r"^train.learning_rate=nan: expected a finite number"),
    (dict(grad_clip_norm=0.0), r"^train.grad_clip_norm=0.0: expected a finite number > 0$"),
    (dict(weight_decay=-0.1), r"^train.weight_decay=-0.1: expected a finite number >= 0$"),
    (dict(warmup_steps=-1), r"^train.warmup_steps=-1: expected an integer >= 0$"),
    (
      dict(batch_size=6),  # 8 CPU devices, mesh 1x-1x1: data x fsdp = 8
      r"^train.batch_size=6 is not divisible by the data-parallel size 8 \(mesh data=1 x fsdp=8\)",
    ),
  ],
)
def test_bad_numbers_are_one_line_before_anything_is_built(tmp_path, monkeypatch, train, message):
  monkeypatch.setattr(
    state_lib, "build_setup", lambda *a, **k: pytest.fail("built before checking")
  )
  with pytest.raises(config_checks.ConfigError, match=message) as error:
    loop.train(_config(**train), str(tmp_path), "unused")
  assert "\n" not in str(error.value)


@pytest.mark.parametrize(
  "shape, message",
  [
    ((2, 2), r"mesh.shape=\(2, 2\): expected 3 sizes"),
    ((3, -1, 1), r"8 devices not divisible by 3"),
    (("a", 1, 1), r"expected \(data, fsdp, tensor\) integers"),
    ((1, -1, -1), r"at most one -1"),
  ],
)
def test_bad_mesh_shapes(shape, message):
  config = _config()
  config.mesh.shape = shape
  with pytest.raises(config_checks.ConfigError, match=message):
    config_checks.check_mesh_and_batch(config)


def test_unparsable_mesh_arg_is_named():
  with pytest.raises(ValueError, match="mesh"):
    medq_uni.get_config("size=tiny,mesh=2x2")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, placed_params):
  """A workdir holding one checkpoint (step 3) of the tiny stage-1 model, with checksums."""
  config = _config()
  params, _ = placed_params(config, 0)
  state = state_lib.create_train_state(params, state_lib.make_optimizer(config.train))
  workdir = str(tmp_path_factory.mktemp("tiny_run"))
  manager = checkpoint_lib.make_manager(checkpoints.checkpoint_dir(workdir))
  checkpoints.write_checksums(str(manager.directory), 3, state)
  manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
  manager.wait_until_finished()
  manager.close()
  return workdir


@pytest.mark.parametrize("arg", ["size=small,stage=1", "size=tiny,stage=1,scope=all"])
def test_checkpoint_of_another_size_or_scope_is_one_line(tiny_run, tmp_path, arg, monkeypatch):
  monkeypatch.setattr(
    state_lib, "build_setup", lambda *a, **k: pytest.fail("built before checking")
  )
  other = _config(arg)
  other.mesh.shape = (1, -1, 1)
  with pytest.raises(config_checks.ConfigError, match=r"^resume from .*does not fit config.model"):
    loop.train(other, tiny_run, "unused")
  other.init.from_checkpoint = tiny_run
  with pytest.raises(config_checks.ConfigError, match=r"^init.from_checkpoint: .*does not fit"):
    loop.train(other, str(tmp_path / "fresh"), "unused")


@pytest.mark.parametrize(
  "arg, train, message",
  [
    (
      "size=tiny,stage=1,mesh=1x-1x1",
      dict(ema_decay=0.999),
      r"^resume from .* \(step 3\): the checkpoint holds no parameter EMA, "
      r"train.ema_decay=0.999 asks for one; resume with train.ema_decay=0",
    ),
    (
      "size=tiny,stage=1,mesh=1x-1x1",
      dict(model_param_dtype="bfloat16"),
      r"^resume from .* \(step 3\): the checkpoint stores the parameters in float32, this "
      r"config in bfloat16 \(\d+ arrays, e\.g\. [\w/]+\); their checksums",
    ),
    (
      "size=tiny,stage=2,mesh=1x-1x1",  # the stage-1 run resumed as stage 2: und trains too
      {},
      r"^resume from .* \(step 3\): the checkpoint's optimizer state \(\d+ arrays\) is not "
      r"this config's \(\d+\): another set of trainable parameters \(train.stage=2",
    ),
  ],
)
def test_resume_with_another_train_state_is_one_line(tiny_run, arg, train, message, monkeypatch):
  """An EMA or a set of trainable parameters other than the checkpoint's is named before
  anything is built; Orbax would refuse every step with a page on tree structures, which the
  fallback reported as unusable checkpoints."""
  monkeypatch.setattr(
    state_lib, "build_setup", lambda *a, **k: pytest.fail("built before checking")
  )
  config = _config(arg, **{k: v for k, v in train.items() if not k.startswith("model_")})
  if "model_param_dtype" in train:
    config.model.param_dtype = train["model_param_dtype"]
  with pytest.raises(config_checks.ConfigError, match=message) as error:
    loop.train(config, tiny_run, "unused")
  assert "\n" not in str(error.value)
  config_checks.check_training(_config(), tiny_run)  # the settings it started with resume


def test_from_checkpoint_without_checkpoints_is_named(tmp_path):
  config = _config()
  config.init.from_checkpoint = str(tmp_path / "nothing")
  with pytest.raises(config_checks.ConfigError, match="init.from_checkpoint=.*no checkpoints"):
    config_checks.check_training(config, str(tmp_path / "run"))


def test_schedule_horizon_is_fixed_when_the_run_starts(tmp_path):
  workdir = str(tmp_path)
  started = run_record.settle(_config(steps=10), workdir, resuming=False)
  assert started.train.schedule_steps == 10
  resumed = run_record.settle(_config(steps=30), workdir, resuming=True)
  assert resumed.train.schedule_steps == 10  # not re-stretched
  stretched = run_record.settle(_config(steps=30, restretch_schedule=True), workdir, True)
  assert stretched.train.schedule_steps == 30
  assert run_record.settle(_config(steps=50), workdir, True).train.schedule_steps == 30


def _updates(train_config, count):
  """The AdamW update of a unit gradient after `count` steps: proportional to the LR."""
  tx = state_lib.make_optimizer(train_config)
  params = {"decoder": {"w": np.ones((3,), np.float32)}}
  opt_state = tx.init(params)
  grads = {"decoder": {"w": np.ones((3,), np.float32)}}
  for _ in range(count + 1):
    updates, opt_state = tx.update(grads, opt_state, params)
  return float(np.asarray(updates["decoder"]["w"])[0])


def test_optimizer_follows_the_stored_horizon():
  base = _config(steps=10, stage=2).train
  longer = _config(steps=40, stage=2, schedule_steps=10).train
  restretched = _config(steps=40, stage=2).train
  for count in (3, 6):
    assert _updates(longer, count) == _updates(base, count)
    assert _updates(restretched, count) != _updates(base, count)
  schedule = optax.warmup_cosine_decay_schedule(0.0, base.learning_rate, 2, 10)
  assert _updates(base, 6) == pytest.approx(-float(schedule(6)), rel=1e-3)


def test_other_worker_count_on_resume_says_what_to_do(tmp_path):
  config = _config()
  config.data.loader_workers = 2
  run_record.settle(config, str(tmp_path), resuming=False)
  config.data.loader_workers = 0
  with pytest.raises(
    run_record.RunRecordError, match=r"resume with --config.data.loader_workers=2 \(got 0\)"
  ):
    run_record.settle(config, str(tmp_path), resuming=True)


def test_fingerprint_changes_with_any_single_bit():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((5, 7)).astype(np.float32)
  base = checkpoints.fingerprints({"x": x})["x"]
  bits = x.view(np.uint32)
  for index in (0, 17, 34):
    for bit in (0, 13, 31):
      flipped = bits.copy()
      flipped.flat[index] ^= np.uint32(1 << bit)
      assert checkpoints.fingerprints({"x": flipped.view(np.float32)})["x"] != base
  swapped = x.copy()
  swapped[0, 0], swapped[0, 1] = x[0, 1], x[0, 0]
  assert checkpoints.fingerprints({"x": swapped})["x"] != base
  sharded = jax.device_put(x, jax.devices()[0])
  assert checkpoints.fingerprints({"x": sharded})["x"] == base
