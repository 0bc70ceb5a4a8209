"""Likelihood scoring and the predictions writer with a small deterministic BenchModel."""

import numpy as np
import pytest

from medq_jax.bench import model_interface
from medq_jax.bench.generator import generate_items, write_items
from medq_jax.bench.items import load_image, load_mcq_items
from medq_jax.bench.judge_offline import OfflineJudge
from medq_jax.bench.runner import run, score_perception
from medq_jax.bench.schema import as_gray_float


class ResidualNoiseModel:
  """Scores options from a real image statistic: the robust spread (MAD) of the image minus its
  3x3 median, a noise estimate that ignores the few pixels on edges.

  Noisy images favour options that name a problem ("No", "Reject", "Severe", the issue);
  clean ones favour "Yes", "Good", "None", "No obvious degradation".
  """

  def __init__(self, threshold=0.012):
    self.threshold = threshold
    self.calls = 0

  @staticmethod
  def noise(image):
    from scipy.ndimage import median_filter

    gray = as_gray_float(image).astype(np.float64)
    residual = gray - median_filter(gray, size=3)
    return float(1.4826 * np.median(np.abs(residual - np.median(residual))))

  def option_log_likelihoods(self, image, question, options):
    self.calls += 1
    noisy = self.noise(image) > self.threshold
    clean_words = ("yes", "good", "none", "no obvious")
    scores = []
    for option in options:
      text = option.lower()
      clean = any(text == w or text.startswith(w) for w in clean_words)
      if "free of" in question.lower() or "is this image clear" in question.lower():
        clean = text == "yes"
      scores.append(0.0 if clean != noisy else -3.0)
    return np.asarray(scores) - np.log(np.exp(scores).sum())

  def describe(self, image, prompt):
    noisy = self.noise(image) > self.threshold
    return (
      "The image shows severe noise that obscures details. Overall, the quality of this image is reject."
      if noisy
      else "The image is sharp with no noticeable noise. Overall, the quality of this image is good."
    )

  def compare(self, image_a, image_b, prompt):
    better = "first" if self.noise(image_a) <= self.noise(image_b) else "second"
    return f"Overall, the {better} image has higher quality."


def test_choose_option_argmax_and_validation():
  assert model_interface.choose_option(np.array([-2.0, -0.1, -5.0]), ["A", "B", "C"]) == "B"
  assert (
    model_interface.choose_option(np.array([-1.0, -1.0]), ["A", "B"]) == "A"
  )  # ties -> earliest
  with pytest.raises(ValueError, match="2 log-likelihoods for 3 options"):
    model_interface.choose_option(np.zeros(2), ["A", "B", "C"])
  with pytest.raises(ValueError, match="NaN"):
    model_interface.choose_option(np.array([np.nan, 0.0]), ["A", "B"])


def test_model_satisfies_protocol():
  assert isinstance(ResidualNoiseModel(), model_interface.BenchModel)


def test_likelihood_scoring_follows_the_image_statistic(examples, tmp_path):
  paths = write_items(generate_items(examples), str(tmp_path))
  items = load_mcq_items(paths["qa"]).items
  model = ResidualNoiseModel()
  rows = model_interface.predict_items(model, items)
  assert model.calls == len(items) and [r["index"] for r in rows] == [i.index for i in items]
  for item, row in zip(items, rows):
    noisy = model.noise(load_image(item.image)) > model.threshold
    scores = np.asarray(row["option_log_likelihoods"])
    assert row["prediction"] == list(item.options)[int(np.argmax(scores))]
    if item.question.startswith("Is this image free"):
      assert row["prediction"] == ("B" if noisy else "A")
  # the clean images are recognised: every 'none'-level Yes/No answer is right
  track = score_perception(paths["qa"], model=model, out_dir=str(tmp_path), n_resamples=0)
  none_rows = [
    r for r in track.perception_rows if r.group == "degradation_level" and r.value == "none"
  ]
  assert none_rows[0].accuracy > 0.5
  written = load_mcq_items(paths["qa"]).items
  assert len(written) == track.n_items


def test_predictions_file_roundtrip_gives_same_scores(examples, tmp_path):
  paths = write_items(generate_items(examples), str(tmp_path / "items"))
  model = ResidualNoiseModel()
  direct = run(
    "m",
    OfflineJudge(),
    qa=(paths["qa"], None),
    noref=(paths["description"], None),
    paired=(paths["paired"], None),
    model=model,
    out_dir=str(tmp_path / "a"),
    n_resamples=50,
  )
  from_files = run(
    "m",
    OfflineJudge(),
    qa=(paths["qa"], str(tmp_path / "a" / "predictions_perception.jsonl")),
    noref=(paths["description"], str(tmp_path / "a" / "predictions_noref.jsonl")),
    paired=(paths["paired"], str(tmp_path / "a" / "predictions_paired.jsonl")),
    out_dir=str(tmp_path / "b"),
    n_resamples=50,
  )
  assert (
    direct.tracks["perception"].perception_rows == from_files.tracks["perception"].perception_rows
  )
  for kind in ("noref", "paired"):
    assert (
      direct.tracks[kind].reasoning_summaries[0].means
      == from_files.tracks[kind].reasoning_summaries[0].means
    )
  paired = direct.tracks["paired"].reasoning_summaries[0]
  assert paired.quality_accuracy_rate == 1.0  # noise picks the clean image of every pair


class AnsweringNoiseModel(ResidualNoiseModel):
  """Answers in free text as a generating MLLM would: the likelihood choice in various
  phrasings, and every fifth answer unparseable."""

  PHRASES = ("{letter}", "The answer is {letter}.", "{letter}. {text}", "I choose ({letter})")

  def __init__(self):
    super().__init__()
    self.answers = 0

  def answer(self, image, prompt):
    self.answers += 1
    if self.answers % 5 == 0:
      return "The image is hard to judge."
    lines = [line for line in prompt.splitlines() if line[:2] in ("A.", "B.", "C.", "D.")]
    options = [line[3:] for line in lines]
    scores = self.option_log_likelihoods(image, prompt, options)
    index = int(np.argmax(scores))
    phrase = self.PHRASES[self.answers % len(self.PHRASES)]
    return phrase.format(letter="ABCD"[index], text=options[index])


def test_generated_answers_are_scored_and_likelihood_kept(examples, tmp_path):
  """An answering model's text is the scored prediction: the scorer's letter is the recorded
  `answer_letter` (the extraction of the text), unparseable answers count wrong with their
  reason, and the likelihood letter is an extra column of the predictions file."""
  from medq_jax.bench.extraction import extract_option
  from medq_jax.bench.io_files import read_rows

  paths = write_items(generate_items(examples), str(tmp_path))
  items = load_mcq_items(paths["qa"]).items
  model = AnsweringNoiseModel()
  assert isinstance(model, model_interface.AnsweringBenchModel)
  assert not isinstance(ResidualNoiseModel(), model_interface.AnsweringBenchModel)
  track = score_perception(paths["qa"], model=model, out_dir=str(tmp_path), n_resamples=0)
  _, rows = read_rows(track.predictions_path)
  by_index = {row["index"]: row for row in rows}
  assert model.answers == len(items) == len(rows)
  unparseable = 0
  for item, outcome in zip(items, track.perception_outcomes):
    row = by_index[item.index]
    extraction = extract_option(row["prediction"], item.options)
    assert (row["answer_letter"], row["answer_rule"]) == (extraction.letter, extraction.rule)
    assert outcome.letter == row["answer_letter"]
    assert (
      row["likelihood_letter"] == list(item.options)[int(np.argmax(row["option_log_likelihoods"]))]
    )
    if row["answer_letter"] is None:
      unparseable += 1
      assert not outcome.correct
    else:
      assert row["answer_letter"] == row["likelihood_letter"]
  assert unparseable == len(items) // 5
