"""MedQUni as a BenchModel: likelihoods are causal and batch-independent; greedy decoding keeps
positions and splits consistent with a teacher-forced forward."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import medq_uni
from medq_jax import layout as layout_lib
from medq_jax.infer.bench_model import MedQUniBenchModel
from medq_jax.models.medq_uni import MedQUni
from medq_jax.tokenizer import train_bpe_tokenizer

TEXTS = [
  "Is the image noisy?",
  "Yes",
  "No",
  "The CT shows mild noise.",
  "Overall, the quality of this image is usable.",
] * 20


@pytest.fixture(scope="module")
def bench_model(tmp_path_factory):
  config = medq_uni.get_config("size=tiny,stage=2")
  tokenizer = train_bpe_tokenizer(TEXTS, 300, str(tmp_path_factory.mktemp("tok")))
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, 2)
  batch = layout_lib.zeros_batch(spec, 1, 64)
  params = nn.unbox(MedQUni(config.model).init(jax.random.PRNGKey(0), batch)["params"])
  return MedQUniBenchModel(config, params, tokenizer, max_new_tokens=6)


def test_option_likelihoods_are_batch_independent(bench_model):
  image = np.random.default_rng(0).integers(0, 255, (48, 48)).astype(np.uint8)
  options = ["Yes", "No", "The CT shows mild noise."]
  together = bench_model.option_log_likelihoods(image, "Is the image noisy?", options)
  alone = [
    bench_model.option_log_likelihoods(image, "Is the image noisy?", [o])[0] for o in options
  ]
  np.testing.assert_allclose(together, alone, rtol=1e-5)
  assert (together < 0).all()
  other = bench_model.option_log_likelihoods(255 - image, "Is the image noisy?", options)
  assert np.abs(other - together).max() > 1e-6  # the image matters


def test_greedy_decoding_matches_teacher_forcing(bench_model):
  image = np.random.default_rng(1).random((40, 40)).astype(np.float32)
  model = bench_model
  model.max_new_tokens = 6
  ids = model.generate_ids([image], "Describe the quality.")
  assert len(ids) == 6 and isinstance(model.describe(image, "Describe the quality."), str)
  # Teacher-force prompt + generated ids: each generated id is the argmax after its prefix.
  row = model._prefix([image], "Describe the quality.")
  start = len(row.und["token_ids"])
  row.text([model.special["im_start"], *ids], loss=False)
  batch = model._batch(
    [layout_lib.finish_und(row, model.spec.max_und_len, model.special, "t")], [image]
  )
  logits = np.asarray(model._logits(model.params, batch))[0]
  predicted = logits[start : start + len(ids)].argmax(-1)
  np.testing.assert_array_equal(predicted, ids)
