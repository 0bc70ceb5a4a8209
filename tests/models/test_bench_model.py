"""MedQUni as a BenchModel on the assess-then-restore engine: answers and descriptions are the
engine's generated text, the answer letter is the scorer's extraction of it, option
log-likelihoods equal a forward of the training packer's row (layout.pack_example, the loss
mask on the description) and do not depend on the batch, and a run directory loads with its VAE
or fails naming the missing one."""

import functools

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from medq_jax import checkpoints
from medq_jax import layout as layout_lib
from medq_jax.bench import model_interface
from medq_jax.bench.extraction import extract_option
from medq_jax.bench.prompts import NOREF_REASONING_PROMPT, perception_prompt
from medq_jax.bench.schema import McqItem
from medq_jax.infer.assess_restore import InferenceSettings, assess
from medq_jax.infer.bench_model import MedQUniBenchModel, load_from_workdir
from medq_jax.infer.decoding import DecodeSettings
from medq_jax.models.medq_uni import MedQUni
from medq_jax.tokenizer import train_bpe_tokenizer
from tests.infer.infer_testlib import TEXTS, tiny_setup

QUESTION = "Is this image free of noise?"
OPTIONS = {"A": "Yes", "B": "No", "C": "The CT shows mild noise.", "D": "Reject"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  return tiny_setup(tmp_path_factory.mktemp("tok"), seed=1)


@pytest.fixture(scope="module")
def bench_model(setup):
  config, params, vae_params, tokenizer, _ = setup
  settings = InferenceSettings(decode=DecodeSettings(max_new_tokens=8))
  return MedQUniBenchModel(config, params, vae_params, tokenizer, settings, answer_max_new_tokens=5)


def _image(seed):
  return np.random.default_rng(seed).integers(0, 255, (48, 48)).astype(np.uint8)


@functools.cache
def _forward(bench_model):
  model = MedQUni(bench_model.config.model)
  return jax.jit(lambda params, batch: model.apply({"params": params}, batch)["logits"])


def _packer_log_likelihood(bench_model, image, question, option):
  """log P(option, <|im_end|>) from the training packer's row: its description loss mask and
  targets, the VAE condition of its low image, any target latents (later splits are invisible
  to the description)."""
  engine = bench_model.engine()
  grey = image.astype(np.float32) / 255.0
  example = dict(id="ref", low=grey, high=grey, instruction=question, description=option)
  row = layout_lib.pack_example(example, bench_model.tokenizer, engine.spec, engine.special)
  batch = layout_lib.collate([row])
  tokens = np.asarray(engine._encode(bench_model.vae_params, batch.pop("vae_images")[:, 0]))
  rng = np.random.default_rng(0)
  target = rng.normal(size=tokens.shape).astype(np.float32)
  batch["gen_latents"] = np.concatenate([tokens, target], axis=1)
  batch["gen_timesteps"] = np.where(batch["gen_noised"], 0.5, 0.0).astype(np.float32)
  logits = _forward(bench_model)(bench_model.params, batch)
  log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1), np.float64)[0]
  mask = batch["und_loss_mask"][0] > 0
  assert mask.sum() == len(bench_model.tokenizer.encode(option, add_special_tokens=False)) + 1
  targets = batch["und_targets"][0][mask]
  return float(log_probs[mask][np.arange(mask.sum()), targets].sum())


def test_option_likelihoods_equal_the_packer_forward_and_are_batch_independent(bench_model):
  image, options = _image(0), list(OPTIONS.values())
  prompt = perception_prompt(QUESTION, OPTIONS)
  together = bench_model.option_log_likelihoods(image, prompt, options)
  reference = [_packer_log_likelihood(bench_model, image, prompt, o) for o in options]
  np.testing.assert_allclose(together, reference, rtol=1e-5)
  alone = [bench_model.option_log_likelihoods(image, prompt, [o])[0] for o in options]
  np.testing.assert_allclose(together, alone, rtol=1e-5)
  assert (together < 0).all()
  other = bench_model.option_log_likelihoods(255 - image, prompt, options)
  assert np.abs(other - together).max() > 1e-6  # the image matters


def test_answers_and_descriptions_are_the_engines_text(bench_model):
  image = _image(1)
  item = McqItem(index="7", question=QUESTION, options=OPTIONS, answer="B")
  row = model_interface.predict_mcq(bench_model, item, image=image)
  prompt = perception_prompt(QUESTION, OPTIONS)
  grey = image[None].astype(np.float32) / 255.0
  text = assess(bench_model.engine(5), grey, [prompt])[0]
  assert row["prediction"] == text and isinstance(text, str)
  extraction = extract_option(text, OPTIONS)
  assert (row["answer_letter"], row["answer_rule"]) == (extraction.letter, extraction.rule)
  scores = row["option_log_likelihoods"]
  assert row["likelihood_letter"] == "ABCD"[int(np.argmax(scores))] and len(scores) == 4
  assert isinstance(bench_model, model_interface.AnsweringBenchModel)
  description = bench_model.describe(image, NOREF_REASONING_PROMPT)
  assert description == assess(bench_model.engine(8), grey, [NOREF_REASONING_PROMPT])[0]


def test_images_context_with_one_image_is_describes(bench_model):
  """The several-image context (own prefill + the engine's decoding loop) reduces, for one
  image, to the engine's context, token for token; two images decode too."""
  image = _image(2)
  ids_engine = bench_model.engine()(image[None] / 255.0, ["Describe it."], restore=False)
  one = bench_model.generate_for_images([image], "Describe it.")
  assert one == ids_engine.descriptions[0]
  assert isinstance(bench_model.compare(image, _image(3), "Which is better?"), str)


def test_load_from_workdir_needs_the_vae(setup, tmp_path):
  from medq_jax.convert import core
  from medq_jax.convert.flux_vae import flux_vae_rules

  config, params, vae_params, _, _ = setup
  workdir = tmp_path / "run"
  manager = ocp.CheckpointManager(
    checkpoints.checkpoint_dir(str(workdir)),
    options=ocp.CheckpointManagerOptions(create=True),
  )
  manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params})))
  manager.wait_until_finished()
  manager.close()
  tokenizer = train_bpe_tokenizer(TEXTS, 300, str(workdir / "tokenizer"))
  with pytest.raises(FileNotFoundError, match="no VAE: set init.flux_ae"):
    load_from_workdir(str(workdir), config)
  (vae_path,) = core.save_safetensors(
    core.export_params(vae_params, flux_vae_rules()), str(tmp_path / "ae.safetensors")
  )
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.init.flux_ae = vae_path
  loaded = load_from_workdir(str(workdir), config)
  settings = InferenceSettings(decode=DecodeSettings(max_new_tokens=4))
  direct = MedQUniBenchModel(config, params, vae_params, tokenizer, settings)
  loaded.max_new_tokens = 4
  image = _image(4)
  assert loaded.describe(image, "Describe it.") == direct.describe(image, "Describe it.")


def test_describe_samples_draws_distinct_reproducible_runs(bench_model):
  """MedQ-Engine's R sampled description runs: a batch decoded at temperature > 0 gives
  different texts across runs (a random tiny model at temperature 5 is close to uniform), the
  same seed the same texts, another seed other texts; greedy `describe` is unchanged."""
  image = _image(2)
  greedy = bench_model.describe(image, NOREF_REASONING_PROMPT)
  runs = bench_model.describe_samples(image, NOREF_REASONING_PROMPT, 4, seed=3, temperature=5.0)
  assert len(runs) == 4 and len(set(runs)) > 1
  again = bench_model.describe_samples(image, NOREF_REASONING_PROMPT, 4, seed=3, temperature=5.0)
  assert again == runs
  other = bench_model.describe_samples(image, NOREF_REASONING_PROMPT, 4, seed=4, temperature=5.0)
  assert other != runs
  assert bench_model.describe(image, NOREF_REASONING_PROMPT) == greedy
  with pytest.raises(ValueError, match="temperature"):
    bench_model.describe_samples(image, NOREF_REASONING_PROMPT, 2, seed=0, temperature=0.0)
