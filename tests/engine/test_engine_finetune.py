"""finetune=trainer end to end with the real trainer on the tiny model: a 2-step base run, then
two engine iterations that each fine-tune (2 steps) on the accumulated annotations, written as a
dataset the one loader reads back equal to the annotations; iteration 1 is evaluated with
iteration 0's checkpoint and fine-tunes from it; a rerun of a finished fine-tune trains nothing
and reuses its dataset. The persistent compilation cache keeps the three identical train steps
to one compile."""

import json
import os

import jax
import numpy as np
import pytest

from configs import engine as engine_config
from configs import medq_uni
from data_pipeline import loader
from medq_jax.engine import finetune, finetune_data, loop

STEPS = 2


@pytest.fixture(scope="module")
def cache_every_compile():
  """The session's persistent compilation cache (tests/conftest.py) keeps even sub-second
  compiles while this module runs, then the default threshold again (no other test's settings
  change)."""
  key = "jax_persistent_cache_min_compile_time_secs"
  before = getattr(jax.config, key)
  jax.config.update(key, 0.0)
  yield
  jax.config.update(key, before)


@pytest.fixture(scope="module")
def base(cache_every_compile, tiny_data_config_session, tmp_path_factory):
  """(model config, base run dir): tiny stage 2 trained 2 steps on the session dataset."""
  from launch.jobs import run_training

  config = medq_uni.get_config("size=tiny,stage=2")
  with config.unlocked():
    config.data = tiny_data_config_session.copy_and_resolve_references()
    config.train.steps = STEPS
    config.train.batch_size = 8
    config.train.checkpoint_every = STEPS
    config.train.tensorboard = False
    config.init.flux_ae = "builtin"
    config.infer.max_new_tokens = 6  # descriptions of an untrained model: keep decoding short
  run = str(tmp_path_factory.mktemp("base") / "run")
  run_training(config, run)
  return config, run


def _engine(workdir, data_config, model_config, base_run, **overrides):
  from medq_jax.bench.judge_offline import OfflineJudge
  from medq_jax.engine import oracle, pool_embed
  from medq_jax.infer.bench_model import load_from_workdir

  config = engine_config.get_config("runlocal,model=ours,finetune=trainer")
  with config.unlocked():
    config.data = data_config
    config.max_dev_images = 4
    config.tau_sim = 0.0
    config.budget = 3
    config.k_max = 3
    config.max_iterations = 2
    config.patience = 5
    config.review.auto_decision = "accept"
    config.trainer.steps = STEPS
    config.trainer.batch_size = 8
    for key, value in overrides.items():
      config[key] = value
  dev = loop.load_split(data_config, "val", max_images=4)
  pool = loop.load_split(data_config, "train", max_images=12)
  test = loop.load_split(data_config, "bench", max_images=2)
  encoder = pool_embed.VitEncoder.fresh(model_config.model.vit, image_size=32, seed=0)

  def embed_pool(pool_dir):
    items = [pool_embed.Item(i, image, {}) for i, image in pool.images.items()]
    pool_embed.embed(items, encoder, pool_dir, process_index=0)

  load = lambda run_dir: load_from_workdir(run_dir, model_config)
  return loop.Engine(
    config,
    str(workdir),
    load(base_run),
    encoder,
    oracle.OfflineOracle({i.id: i.answer for i in pool.items}, 0.0),
    dev,
    pool,
    test,
    embed_pool=embed_pool,
    finetune=finetune.TrainerFinetune(model_config, base_run, pool, str(workdir), STEPS, 8, 2e-4),
    judge=OfflineJudge(),
    load_model=load,
  )


def test_two_iterations_fine_tune_from_the_previous_checkpoint(
  tmp_path, base, tiny_data_config_session
):
  model_config, base_run = base
  workdir = tmp_path / "engine"
  engine = _engine(workdir, tiny_data_config_session, model_config, base_run)
  state = engine.run()
  assert state.stopped == "max_iterations=2 reached", state.stopped
  assert state.checkpoints == ["iter_0/finetune", "iter_1/finetune"]
  first, second = state.records[0], state.records[1]
  assert first["finetune"]["from"] == base_run and second["finetune"]["from"] == "iter_0/finetune"
  assert first["finetune"]["steps"] == STEPS and np.isfinite(first["finetune"]["loss"])
  # Each run's checkpoint is at STEPS; iteration 1 was evaluated with iteration 0's checkpoint.
  for checkpoint in state.checkpoints:
    assert os.path.isdir(workdir / checkpoint / "checkpoints" / str(STEPS))
  assert first["evaluate"]["checkpoint"] == "" and second["evaluate"]["checkpoint"] == (
    "iter_0/finetune"
  )
  assert engine.model is not engine.base_model
  # The dataset of iteration 1 holds every accumulated annotation, read back by the one loader.
  rows = finetune_data.read_rows(workdir / f for f in state.data_files)
  assert [r["id"] for r in rows] == state.accumulated and rows
  data_dir = workdir / "iter_1" / "finetune_data"
  read = {}
  config = tiny_data_config_session.copy_and_resolve_references()
  with config.unlocked():
    config.name, config.version = finetune_data.NAME, finetune_data.VERSION
  for batch in loader.one_pass(config, "train", 4, data_dir=str(data_dir)):
    for i in range(len(batch["id"])):
      read[str(batch["id"][i])] = (
        str(batch["instruction"][i]),
        str(batch["description"][i]),
        batch["low"][i],
      )
  assert sorted(read) == sorted(r["id"] for r in rows)
  for row in rows:
    instruction, description, low = read[row["id"]]
    assert instruction == row["question"]
    expected = row["options"][row["answer"]] if row["options"] else row["answer"]
    assert description == expected
    np.testing.assert_allclose(low, engine.pool.images[row["image_id"]], atol=1 / 65535)
  # The parameters moved: the fine-tuned model scores an item otherwise than the base model.
  item = next(i for i in engine.dev.items if i.options)
  image = engine.dev.images[item.image_id]
  tuned = loop.option_log_probs(engine.model, image, item)
  start = loop.option_log_probs(engine.base_model, image, item)
  assert not np.allclose(tuned, start)
  stats = json.loads((workdir / "stats.json").read_text())
  assert [row["finetune_steps"] for row in stats] == [STEPS, STEPS]

  # Rerunning a finished fine-tune (as after a kill right after training) trains nothing more
  # and reuses the written dataset.
  again = engine.finetune_fn(loop_state_before(state), str(workdir / "iter_1"))
  assert again["checkpoint"] == "iter_1/finetune" and again["steps"] == STEPS
  meta = json.loads(
    (data_dir / finetune_data.NAME / finetune_data.VERSION / "engine_examples.json").read_text()
  )
  assert meta["ids"] == [r["id"] for r in rows]


def loop_state_before(state):
  """The state as it was when iteration 1's fine-tune started."""
  from medq_jax.engine import loop_state

  before = loop_state.LoopState(**state.__dict__)
  before.checkpoints = state.checkpoints[:1]
  before.iteration = 1
  return before


def test_bad_annotations_are_one_error_naming_them(tmp_path):
  path = tmp_path / "data.jsonl"
  path.write_text('{"id": "a", "image_id": "x:low", "question": "q", "answer": "A"}\n{"id": \n')
  with pytest.raises(ValueError, match=r"data\.jsonl:2: not a JSON line"):
    finetune_data.read_rows([str(path)])
  row = {"id": "a", "image_id": "x:low", "question": "q", "answer": "A"}
  with pytest.raises(ValueError, match=r"annotation 'a': image 'x:low' is not in the pool split"):
    finetune_data.annotation_example(row, {}, {})
  assert finetune_data.label_text({**row, "options": {"A": "Yes", "B": "No"}}) == "Yes"
  assert (
    finetune_data.label_text({**row, "answer": "B", "options": {"A": "Yes", "B": "No"}}) == "No"
  )
  assert finetune_data.label_text({**row, "answer": "free text"}) == "free text"
  with pytest.raises(ValueError, match="no annotation to fine-tune on"):
    finetune_data.write_dataset([{"id": "bad"}], str(tmp_path / "d"), 32)
