"""What an entry point prepares before it calls the library: the precomputed dataset and the
tokenizer. Process 0 prepares them; every other process waits at a barrier until they exist, so
no host reads a half-written dataset or trains on a tokenizer another host is still writing."""

from __future__ import annotations

import json
import logging
import os

import jax

from data_pipeline import atomic_files, precompute, tfds_format
from data_pipeline import loader as data_loader
from launch import distributed
from medq_jax import checkpoints
from medq_jax import tokenizer as tokenizer_lib


def ensure_dataset(data_config) -> str:
  """Runs the precompute (resumable) when the dataset is not there yet; returns its directory."""
  directory = tfds_format.dataset_dir(data_config.data_dir, data_config.name, data_config.version)
  if not os.path.exists(os.path.join(directory, "dataset_info.json")):
    logging.info("no precomputed dataset at %s: running the precompute", directory)
    precompute.run_precompute(data_config, progress=True)
  return directory


def training_texts(data_config) -> list[str]:
  """Every instruction and description of the train split, read through the data loader."""
  batches = data_loader.one_pass(data_config, "train", 64)
  texts = []
  for batch in batches:
    texts += [str(t) for t in batch["instruction"]] + [str(t) for t in batch["description"]]
  if not texts:
    raise ValueError(
      f"{data_config.data_dir}: the train split has no examples to train a tokenizer on"
    )
  return texts


# Beside a tokenizer this module trained: what it was trained for, checked when it is reused.
TOKENIZER_SOURCE_FILE = "medq_tokenizer_source.json"


def tokenizer_source(config) -> dict:
  """What a run's own tokenizer is trained for: the dataset (name, version) and vocabulary size."""
  return {
    "dataset": f"{config.data.name}/{config.data.version}",
    "vocab_size": int(config.layout.tokenizer_vocab_size),
  }


def check_tokenizer_source(out_dir: str, want: dict) -> None:
  """Raises ValueError when the tokenizer in `out_dir` was trained for something else than `want`
  (another dataset or vocabulary size: every text would tokenize differently, and the layout
  would skip or truncate what the model sees). A tokenizer without the file is taken as is."""
  path = os.path.join(out_dir, TOKENIZER_SOURCE_FILE)
  saved = atomic_files.read_json(path, "unreadable", hint="remove it or the directory")
  if saved is not None and saved != want:
    raise ValueError(
      f"{out_dir}: this run's tokenizer was trained for {saved}, but the config asks for {want} "
      f"({path}); use another --workdir, remove {out_dir} to train a new one, or name a "
      "tokenizer with --config.layout.tokenizer_dir"
    )


def ensure_tokenizer(config, workdir: str) -> str:
  """Returns the tokenizer directory: `config.layout.tokenizer_dir` when given (checked now, so a
  wrong path fails before any compile), else a byte-level BPE trained once on the train split's
  texts and saved under `workdir/tokenizer`, with what it was trained for beside it (a rerun that
  finds a tokenizer trained for another dataset or vocabulary size stops, naming both)."""
  out_dir = checkpoints.run_tokenizer_dir(workdir, config.layout)
  if config.layout.tokenizer_dir:
    tokenizer_lib.load_tokenizer(out_dir)
    return out_dir
  source = tokenizer_source(config)
  if os.path.exists(os.path.join(out_dir, "tokenizer.json")):
    check_tokenizer_source(out_dir, source)
    return out_dir
  logging.info(
    "training a %d-token BPE tokenizer into %s", config.layout.tokenizer_vocab_size, out_dir
  )
  tokenizer_lib.train_bpe_tokenizer(
    training_texts(config.data), config.layout.tokenizer_vocab_size, out_dir
  )
  with open(os.path.join(out_dir, TOKENIZER_SOURCE_FILE), "w") as handle:
    json.dump(source, handle)
  return out_dir


def prepare_training(config, workdir: str) -> str:
  """Dataset and tokenizer for a training run, prepared by process 0 while the others wait.
  Returns the tokenizer directory (the same path on every process)."""
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    ensure_dataset(config.data)
    tokenizer_dir = ensure_tokenizer(config, workdir)
  distributed.barrier("prepare_training")
  if jax.process_index() != 0:
    tokenizer_dir = checkpoints.run_tokenizer_dir(workdir, config.layout)
    tokenizer_lib.load_tokenizer(tokenizer_dir)  # present now; fail here, naming it, if not
  return tokenizer_dir
