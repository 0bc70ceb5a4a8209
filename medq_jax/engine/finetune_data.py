"""The engine's accumulated annotations as a dataset the trainer's one loader reads: contract
examples (`data_pipeline.example`) written as TFDS ArrayRecord shards with TFDS metadata, the
format the precompute writes (`data_pipeline.tfds_format`), so `data_pipeline.loader` reads them
like the built-in data.

One annotation (a row of `iter_<t>/data.jsonl`) becomes one example about its pool image:
`low` is the image the question was asked about (the example's degraded image, or its reference
for a `:high` image), `high` the example's reference (the restoration target of the stage-2
objective), `instruction` the question and `description` the label: for an MCQ the text of the
option the label names (the description slot is where our model scores options), for a
description item the description itself. The other fields come from the pool example.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence

from array_record.python import array_record_module

from data_pipeline import atomic_files, tfds_format
from data_pipeline import example as example_lib
from medq_jax.bench.extraction import extract_option

NAME = "medq_engine_annotations"  # the TFDS dataset name of the written split
VERSION = "1.0.0"
SPLIT = "train"
_FINGERPRINT = "engine_examples.json"


def read_rows(paths: Iterable[str]) -> list[dict]:
  """The rows of the accumulated `data.jsonl` files, in order; a bad line is one ValueError
  naming the file and line."""
  rows = []
  for path in paths:
    with open(path, encoding="utf-8") as handle:
      for number, line in enumerate(handle, 1):
        try:
          row = json.loads(line)
        except json.JSONDecodeError as error:
          raise ValueError(f"{path}:{number}: not a JSON line ({error})") from None
        missing = [k for k in ("id", "image_id", "question", "answer") if k not in row]
        if missing:
          raise ValueError(f"{path}:{number}: row lacks {missing}")
        rows.append(row)
  return rows


def label_text(row: Mapping) -> str:
  """The description-slot text of an annotation: the option the MCQ label names (a letter, or
  a reviewer's text naming one), else the label verbatim (descriptions, free-text edits)."""
  options = row.get("options") or {}
  if options:
    letter = extract_option(row["answer"], options).letter
    if letter is not None:
      return options[letter]
  return str(row["answer"])


def annotation_example(row: Mapping, images: Mapping, examples: Mapping) -> dict:
  """One contract example from an annotation row and the pool split's images and example
  fields (`loop.Split.images`, `.examples`)."""
  image_id = row["image_id"]
  example_id, _, key = image_id.rpartition(":")
  if image_id not in images or example_id not in examples:
    raise ValueError(f"annotation {row['id']!r}: image {image_id!r} is not in the pool split")
  fields = examples[example_id]
  high = images.get(f"{example_id}:high", images[image_id])
  provenance = {
    "engine_annotation": row["id"],
    "source": row.get("source", ""),
    "image": key,
    "example": json.loads(fields["provenance"]) if "provenance" in fields else {},
  }
  example = {name: fields[name] for name in example_lib.FIELD_NAMES if name in fields}
  example.update(
    id=row["id"],
    split=SPLIT,
    low=images[image_id],
    high=high,
    instruction=row["question"],
    description=label_text(row),
    provenance=json.dumps(provenance, sort_keys=True),
  )
  return example


def _fingerprint(examples: Sequence[dict]) -> str:
  digest = hashlib.sha256()
  for example in examples:
    digest.update(
      json.dumps([example["id"], example["instruction"], example["description"]]).encode()
    )
    for name in example_lib.IMAGE_FIELDS:
      digest.update(example[name].tobytes())
  return digest.hexdigest()


def write_dataset(
  examples: Sequence[dict], data_dir: str, image_size: int, shard_size: int = 256
) -> dict:
  """Writes `examples` as the `train` split of `NAME` under `data_dir` (TFDS layout). An
  example that breaks the contract is skipped with a logged reason; none left is a ValueError.

  The dataset is written into a temporary directory and renamed into place, so a kill leaves
  none or all of it; the same examples again reuse it (a fingerprint of ids, texts and pixels).
  Returns {"directory", "examples", "skipped": [(id, reason)], "reused"}."""
  directory = tfds_format.dataset_dir(data_dir, NAME, VERSION)
  valid, skipped = [], []
  for example in examples:
    try:
      valid.append(example_lib.validate_example(example, image_size))
    except ValueError as error:
      logging.warning("fine-tuning data: skipped %s: %s", example.get("id"), error)
      skipped.append((str(example.get("id")), str(error)))
  if not valid:
    raise ValueError(f"{data_dir}: no annotation to fine-tune on (skipped: {skipped[:3]})")
  fingerprint = _fingerprint(valid)
  marker = os.path.join(directory, _FINGERPRINT)
  if os.path.exists(marker):
    with open(marker, encoding="utf-8") as handle:
      if json.load(handle).get("fingerprint") == fingerprint:
        return {"directory": directory, "examples": len(valid), "skipped": skipped, "reused": True}
    shutil.rmtree(directory)  # other examples: rebuilt
  staging = directory + ".writing"
  shutil.rmtree(staging, ignore_errors=True)  # what a killed writer left
  os.makedirs(staging)
  features = tfds_format.features(image_size)
  shards = [valid[i : i + shard_size] for i in range(0, len(valid), shard_size)]
  for number, shard in enumerate(shards):
    path = tfds_format.shard_path(staging, NAME, SPLIT, number, len(shards))
    writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
    for example in shard:
      writer.write(features.serialize_example(tfds_format.to_stored(example)))
    writer.close()
  tfds_format.write_tfds_metadata(
    staging,
    NAME,
    image_size,
    {SPLIT: [len(shard) for shard in shards]},
    description="MedQ-Engine accumulated annotations (medq_jax/engine/finetune_data.py)",
  )
  atomic_files.atomic_write_text(
    os.path.join(staging, _FINGERPRINT),
    json.dumps({"fingerprint": fingerprint, "ids": [e["id"] for e in valid]}),
  )
  os.makedirs(os.path.dirname(directory), exist_ok=True)
  os.replace(staging, directory)
  atomic_files.fsync_dir(os.path.dirname(directory))
  return {"directory": directory, "examples": len(valid), "skipped": skipped, "reused": False}
