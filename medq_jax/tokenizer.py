"""Tokenizers through transformers' `PreTrainedTokenizerFast`.

CPU-sized configs use a byte-level BPE trained offline with `tokenizers` on the instruction and
description texts and saved beside the data; `unimedvl_7b` uses the Qwen2.5 tokenizer files that
come with the checkpoint. Both expose the same special tokens.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from transformers import PreTrainedTokenizerFast

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
PAD = "<|endoftext|>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END, VISION_START, VISION_END)


def train_bpe_tokenizer(
  texts: Iterable[str], vocab_size: int, out_dir: str
) -> PreTrainedTokenizerFast:
  """Trains a byte-level BPE on `texts`, saves it to `out_dir` (tokenizer.json + config) and
  returns it. Special tokens get the first ids, so ids are stable across corpora."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=list(SPECIAL_TOKENS),
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tokenizer.train_from_iterator(texts, trainer=trainer)
  fast = _wrap(PreTrainedTokenizerFast(tokenizer_object=tokenizer))
  os.makedirs(out_dir, exist_ok=True)
  fast.save_pretrained(out_dir)
  return fast


def _wrap(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
  missing = [
    t
    for t in SPECIAL_TOKENS[1:]
    if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)
  ]
  if missing:
    tokenizer.add_special_tokens({"additional_special_tokens": missing})
  if tokenizer.pad_token is None:
    tokenizer.pad_token = PAD
  return tokenizer


def load_tokenizer(path: str) -> PreTrainedTokenizerFast:
  """Loads a tokenizer directory (ours, or Qwen2.5's from a checkpoint) with the special tokens."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: tokenizer directory does not exist")
  if not os.path.exists(os.path.join(path, "tokenizer.json")):
    raise FileNotFoundError(f"{path}: expected a tokenizer.json (a PreTrainedTokenizerFast dir)")
  return _wrap(PreTrainedTokenizerFast.from_pretrained(path))


def special_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
  """{'im_start': id, 'im_end': id, 'vision_start': id, 'vision_end': id, 'pad': id}."""
  names = dict(
    pad=PAD, im_start=IM_START, im_end=IM_END, vision_start=VISION_START, vision_end=VISION_END
  )
  return {k: tokenizer.convert_tokens_to_ids(v) for k, v in names.items()}
