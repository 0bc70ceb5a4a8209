"""Bad input: every problem names the file, row and field; nothing is dropped silently."""

import base64

import numpy as np
import pytest

from medq_jax.bench import perception, reasoning
from medq_jax.bench.io_files import write_rows
from medq_jax.bench.items import load_image, load_mcq_items, load_reasoning_items
from medq_jax.bench.judge_offline import OfflineJudge
from medq_jax.bench.predictions import read_predictions
from medq_jax.bench.runner import score_perception
from medq_jax.bench.schema import BenchInputError


def _qa(index, answer="A", **extra):
  row = {
    "index": index,
    "question": "Is the image clear?",
    "A": "Yes",
    "B": "No",
    "answer": answer,
    "modality": "CT",
  }
  row.update(extra)
  return row


def test_missing_required_column_names_file_and_column(write_qa):
  path = write_qa([_qa("1")], columns=["index", "image", "question", "A", "B", "modality"])
  with pytest.raises(BenchInputError, match=r"qa\.tsv: missing required column\(s\) \['answer'\]"):
    load_mcq_items(path)


def test_undecodable_base64_names_row_and_field(write_qa):
  path = write_qa([_qa("1"), _qa("2", image="!!!not-base64!!!" * 8)])
  with pytest.raises(BenchInputError) as error:
    load_mcq_items(path)
  message = str(error.value)
  assert "qa.tsv: row 2 (index '2'), field 'image': not valid base64" in message


def test_base64_that_is_not_an_image(write_qa):
  text = base64.b64encode(b"hello world, definitely not a PNG file" * 3).decode()
  with pytest.raises(
    BenchInputError, match=r"row 1 \(index '7'\), field 'image': base64 decodes to .* not a PNG"
  ):
    load_mcq_items(write_qa([_qa("7", image=text)]))


def test_unknown_answer_letter_and_empty_option(write_qa):
  path = write_qa([_qa("1", answer="E"), _qa("2", answer="C"), _qa("3", answer="b")])
  with pytest.raises(BenchInputError) as error:
    load_mcq_items(path)
  message = str(error.value)
  assert "2 problem(s)" in message
  assert "row 1 (index '1'), field 'answer': unknown answer 'E' (expected A-D or 0-3)" in message
  assert "row 2 (index '2'), field 'answer': answer C names an empty option" in message


def test_duplicated_indices_in_items(write_qa):
  with pytest.raises(
    BenchInputError,
    match=r"row 2 \(index '1'\), field 'index': duplicated index "
    r"\(first seen at row 1\)",
  ):
    load_mcq_items(write_qa([_qa("1"), _qa("1")]))


def test_exclude_mode_counts_every_bad_row(write_qa):
  path = write_qa([_qa("1"), _qa("1"), _qa("2", answer="Z"), _qa("3", image="@@@" * 30), _qa("4")])
  loaded = load_mcq_items(path, on_error="exclude")
  assert [item.index for item in loaded.items] == ["1", "4"]
  assert sorted(e.reason for e in loaded.exclusions) == [
    "bad input: answer",
    "bad input: image",
    "bad input: index",
  ]
  assert all("qa.tsv: row" in e.detail for e in loaded.exclusions)


def test_short_image_value_points_to_another_row(write_qa, phantom):
  path = write_qa([_qa("10"), _qa("11", image="10"), _qa("12", image="99")])
  with pytest.raises(
    BenchInputError, match=r"index '12'\), field 'image': short value '99' .* names no row"
  ):
    load_mcq_items(path)
  items = load_mcq_items(path, on_error="exclude").items
  first, second = (load_image(item.image) for item in items)
  np.testing.assert_array_equal(first, second)
  assert first.shape == phantom.shape


def test_numeric_answers_map_to_letters(write_qa):
  items = load_mcq_items(write_qa([_qa("1", answer="0"), _qa("2", answer="1")])).items
  assert [item.answer for item in items] == ["A", "B"]


def test_predictions_file_problems(tmp_path):
  path = str(tmp_path / "pred.tsv")
  write_rows(path, [{"index": "1", "prediction": "A"}, {"index": "1", "prediction": "B"}])
  with pytest.raises(
    BenchInputError, match=r"pred\.tsv: row 2 \(index '1'\), field 'index': duplicated index"
  ):
    read_predictions(path)
  predictions, exclusions = read_predictions(path, on_error="exclude")
  assert predictions == {} and exclusions[0].reason == "duplicated prediction index"
  missing = str(tmp_path / "nopred.csv")
  write_rows(missing, [{"index": "1", "answer": "A"}])
  with pytest.raises(
    BenchInputError, match=r"nopred\.csv: missing required column\(s\) \['prediction'\]"
  ):
    read_predictions(missing)


def test_empty_predictions_are_counted(write_qa, tmp_path):
  items_path = write_qa([_qa("1"), _qa("2"), _qa("3")])
  predictions_path = str(tmp_path / "pred.jsonl")
  write_rows(
    predictions_path,
    [
      {"index": "1", "prediction": ""},
      {"index": "2", "prediction": "Yes"},
      {"index": "99", "prediction": "A"},
    ],
  )
  track = score_perception(items_path, predictions_path, n_resamples=0)
  reasons = sorted(e.reason for e in track.exclusions)
  assert reasons == [
    "missing prediction (counted wrong)",
    "prediction for unknown index",
    "unparseable answer (counted wrong)",
  ]
  overall = track.perception_rows[0]
  assert (overall.n, overall.correct, overall.unparseable, overall.missing) == (3, 1, 1, 1)
  assert perception.unparseable_reasons(track.perception_outcomes) == {
    "empty prediction": 1,
    "missing prediction": 1,
  }


def test_reasoning_file_checks(tmp_path, phantom):
  from data_pipeline.readers import encode_png_base64

  image = encode_png_base64(phantom)
  path = str(tmp_path / "paired.tsv")
  write_rows(
    path,
    [
      {
        "index": "1",
        "image_a": image,
        "image_b": image,
        "description": "x. Overall, the first image has higher quality.",
      },
      {"index": "2", "image_a": image, "image_b": "", "description": "y"},
      {"index": "3", "image_a": image, "image_b": image, "description": ""},
      {"index": "4", "image_a": image, "image_b": "QUJD", "description": "z"},
    ],
  )
  with pytest.raises(BenchInputError) as error:  # a malformed image fails the load
    load_reasoning_items(path, "paired")
  message = str(error.value)
  assert "1 problem(s)" in message and "row 4 (index '4'), field 'image'" in message
  # absent images and golden texts are skipped and counted, whatever on_error
  loaded = load_reasoning_items(path, "paired", on_error="exclude")
  assert [item.index for item in loaded.items] == ["1"]
  assert [(e.index, e.reason) for e in loaded.exclusions] == [
    ("2", "missing image (skipped)"),
    ("3", "missing description (skipped)"),
    ("4", "bad input: image"),
  ]
  assert "row 2 (index '2'), field 'image': no image_b" in loaded.exclusions[0].detail
  no_images = str(tmp_path / "bad.tsv")
  write_rows(no_images, [{"index": "1", "description": "d"}])
  with pytest.raises(BenchInputError, match="paired items need columns 'image_a' and 'image_b'"):
    load_reasoning_items(no_images, "paired")


def test_empty_reasoning_prediction_scores_zero_and_is_listed(tmp_path, phantom):
  from data_pipeline.readers import encode_png_base64

  path = str(tmp_path / "desc.tsv")
  golden = "The image shows severe noise. Overall, the quality of this image is reject."
  write_rows(
    path,
    [
      {"index": str(i), "image": encode_png_base64(phantom), "description": golden}
      for i in range(3)
    ],
  )
  items = load_reasoning_items(path, "noref").items
  predictions = {"0": golden, "1": "   "}
  scores, exclusions, responses = reasoning.score_reasoning(items, predictions, OfflineJudge())
  assert len(responses) == 4  # only item 0 reaches the judge
  assert scores[1].scores == dict.fromkeys(scores[1].scores, 0.0) and scores[1].empty_prediction
  assert scores[2].empty_prediction
  assert sorted(e.reason for e in exclusions) == [
    "empty prediction (scored 0 on every dimension)",
    "missing prediction (scored 0 on every dimension)",
  ]


def test_paired_images_from_image_path_list(tmp_path, phantom, camera):
  from PIL import Image

  for name, image in (("a.png", phantom), ("b.png", camera)):
    Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / name)
  path = str(tmp_path / "paired.tsv")
  write_rows(
    path,
    [
      {
        "index": "1",
        "image_path": "['a.png', 'b.png']",
        "description": "d",
        "granularity": "Fine-grained",
      },
      {"index": "2", "image_path": "['a.png', 'missing.png']", "description": "d"},
    ],
  )
  with pytest.raises(
    BenchInputError,
    match=r"row 2 \(index '2'\), field 'image': image file .*missing\.png not found",
  ):
    load_reasoning_items(path, "paired")
  [item] = load_reasoning_items(path, "paired", on_error="exclude").items
  assert item.granularity == "fine"
  np.testing.assert_allclose(load_image(item.images[1]) / 255.0, camera, atol=1 / 255 + 1e-6)
