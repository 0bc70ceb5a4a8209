"""Generated items: the three question types, consistent answers, TSV round trip."""

import collections

import numpy as np
import pytest

from configs.data import medq_sample
from data_pipeline.degradations import registry
from data_pipeline.demo_examples import demo_examples
from medq_jax.bench.generator import generate_items, task_term, write_items
from medq_jax.bench.items import load_image, load_mcq_items, load_reasoning_items

DEMO_CONFIG = medq_sample.get_config("image_size=64,runlocal")


def test_counts_and_question_types(examples):
  rows = generate_items(examples)
  assert len(rows["qa"]) == len(examples) * 2 * 5
  assert len(rows["description"]) == len(examples) * 2 and len(rows["paired"]) == len(examples)
  per_key = collections.Counter(
    (r["modality"], r["degradation_level"], r["question_type"]) for r in rows["qa"]
  )
  for example in examples:
    for level in ("none", example["severity"]):
      for qtype in ("Yes-or-No", "What", "How"):
        assert per_key[(example["modality"], level, qtype)] > 0
  assert {r["question_scope"] for r in rows["qa"]} == {"general", "modality-specific"}


def test_answers_follow_metadata(examples):
  _check_answers_follow_metadata(examples)


def test_demo_examples_cover_every_registered_task():
  """The data pipeline's demo examples (real scans, registry degradations) make valid items."""
  examples = demo_examples(DEMO_CONFIG, seed=0, severities=("mild", "severe"))
  assert [(e["task"], e["severity"]) for e in examples] == [
    (task, severity) for task in registry.names() for severity in ("mild", "severe")
  ]
  assert {e["quality_label"] for e in examples if e["severity"] == "mild"} == {"good"}
  assert {e["quality_label"] for e in examples if e["severity"] == "severe"} == {"reject"}
  assert [e["simulated"] for e in examples] == [e["modality"] == "PET" for e in examples]
  _check_answers_follow_metadata(examples)


def _check_answers_follow_metadata(examples):
  rows = generate_items(examples)
  by_source = collections.defaultdict(list)
  for row in rows["qa"]:
    by_source[row["source_id"]].append(row)
  for example in examples:
    degraded = by_source[f"{example['id']}:low"]
    clean = by_source[f"{example['id']}:high"]
    answer_text = lambda row: row[row["answer"]]
    assert [answer_text(r) for r in clean] == [
      "Yes",
      "No",
      "No obvious degradation",
      "Good",
      "None",
    ]
    term = task_term(example["task"])
    assert answer_text(degraded[0]) == "No" and answer_text(degraded[1]) == "Yes"
    assert answer_text(degraded[2]).lower() == term
    assert answer_text(degraded[3]) == example["quality_label"].capitalize()
    assert answer_text(degraded[4]) == example["severity"].capitalize()


def test_tsv_roundtrip_images_and_references(examples, tmp_path):
  rows = generate_items(examples, seed=1)
  paths = write_items(rows, str(tmp_path), split="dev")
  assert paths["qa"].endswith("medqbench_QA_dev.tsv")
  items = load_mcq_items(paths["qa"]).items
  assert len(items) == len(rows["qa"])
  short = [r for r in rows["qa"] if len(r["image"]) <= 64]
  assert len(short) > len(rows["qa"]) / 2  # one image, five questions: later rows point back
  by_index = {item.index: item for item in items}
  for example in examples[:2]:
    for key in ("low", "high"):
      row = next(
        r
        for r in rows["qa"]
        if r["source_id"] == f"{example['id']}:{key}" and len(r["image"]) <= 64
      )
      pixels = load_image(by_index[row["index"]].image).astype(np.float32) / 255
      np.testing.assert_allclose(pixels, example[key], atol=1 / 255 + 1e-6)
  paired = load_reasoning_items(paths["paired"], "paired").items
  assert {p.granularity for p in paired} == {"fine", "coarse"}
  for item, example in zip(paired, examples):
    first = load_image(item.images[0]).astype(np.float32) / 255
    degraded_first = np.allclose(first, example["low"], atol=1 / 255 + 1e-6)
    assert ("the second image has higher quality" in item.description) == degraded_first
    assert item.granularity == ("coarse" if example["severity"] == "severe" else "fine")
  noref = load_reasoning_items(paths["description"], "noref").items
  assert sum("quality of this image is good" in i.description for i in noref) == len(examples)


def test_unknown_task_is_explained(examples):
  bad = dict(examples[0], task="xray_scatter")
  with pytest.raises(ValueError, match="unknown task 'xray_scatter'"):
    generate_items([bad])


def test_jsonl_format_holds_the_same_items(examples, tmp_path):
  rows = generate_items(examples)
  tsv = write_items(rows, str(tmp_path / "tsv"))
  jsonl = write_items(rows, str(tmp_path / "jsonl"), fmt="jsonl")
  assert jsonl["qa"].endswith("medqbench_QA_test.jsonl")
  from_tsv, from_jsonl = load_mcq_items(tsv["qa"]).items, load_mcq_items(jsonl["qa"]).items
  strip = lambda item: (
    item.index,
    item.question,
    item.options,
    item.answer,
    item.question_type,
    item.degradation_level,
    item.scope,
    item.image,
  )
  assert [strip(i) for i in from_tsv] == [strip(i) for i in from_jsonl]
  paired = load_reasoning_items(jsonl["paired"], "paired").items
  assert len(paired) == len(examples) and all(len(p.images) == 2 for p in paired)
