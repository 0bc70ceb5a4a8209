"""The annotation oracle (MedQ-Engine §2.3: GPT-4o in the paper): any OpenAI-compatible model
through the project's one chat client, or an offline oracle built from ground-truth labels.

`ChatOracle` asks each request once (the chat client's reply cache makes a resumed run ask only
what was never answered; `salt` separates iterations). A reply is:
  ok       an MCQ reply from which `extract_option` reads one of the item's letters (the answer is
           that letter), or a description with at least one word (the answer is the stripped text);
  invalid  HTTP 200 without usable text, an MCQ reply naming no single option, a description
           without a word ("nonsense": counted, its answer None);
  failed   no reply after the client's retries and timeouts, or an image that cannot be
           encoded as PNG (not sent) (counted, its answer None).
Only refused credentials (ChatAuthError) stop the run: no later request could pass.

`OfflineOracle` answers from the built-in data's labels, wrong on a seeded fraction `error_rate`
of the items (an MCQ: another option letter; a description: another item's label that is text,
not a letter), the same on every call. Every result it returns says it is offline (`offline=True`, `source`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from data_pipeline import chat_client
from medq_jax.bench import extraction

MCQ_INSTRUCTION = "Answer with the option's letter from the given choices directly."
_WORD = re.compile(r"[A-Za-z]{2,}")


@dataclasses.dataclass(frozen=True)
class OracleRequest:
  """One question: `image` float [H, W] in [0, 1] (or uint8), `options` {letter: text} for an
  MCQ, None for a description."""

  id: str
  question: str
  image: Any = None
  options: Mapping[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class OracleAnswer:
  id: str
  text: str | None  # the answer (an MCQ's letter), None unless status == "ok"
  status: str  # ok | invalid | failed
  reason: str = ""


@dataclasses.dataclass(frozen=True)
class OracleResult:
  answers: dict[str, OracleAnswer]
  counts: dict[str, int]  # ok / invalid / failed
  offline: bool
  source: str  # "chat: <model> at <endpoint>" or "offline: ground-truth labels, ..."


def _counts(answers: Mapping[str, OracleAnswer]) -> dict[str, int]:
  counted = collections.Counter(a.status for a in answers.values())
  return {status: counted[status] for status in ("ok", "invalid", "failed")}


def prompt(request: OracleRequest) -> str:
  """The question text sent to the oracle (an MCQ lists its options, then the instruction)."""
  if not request.options:
    return request.question
  lines = [request.question, *(f"{k}. {v}" for k, v in sorted(request.options.items()))]
  return "\n".join([*lines, MCQ_INSTRUCTION])


def read_reply(request: OracleRequest, reply: str) -> OracleAnswer:
  """A reply text -> ok with the answer, or invalid with the reason."""
  if request.options:
    found = extraction.extract_option(reply, request.options)
    if found.letter is None:
      return OracleAnswer(request.id, None, "invalid", f"no single option: {found.rule}")
    return OracleAnswer(request.id, found.letter, "ok")
  text = reply.strip()
  if not _WORD.search(text):
    return OracleAnswer(request.id, None, "invalid", "description without a word")
  return OracleAnswer(request.id, text, "ok")


class ChatOracle:
  """The oracle behind `chat_client.ChatClient` (built by the caller from
  `ChatConfig.from_env("oracle", ...)`, usually with a `ReplyCache`)."""

  def __init__(self, client: chat_client.ChatClient, concurrency: int = 8, **params):
    self.client, self.concurrency = client, concurrency
    self.params = {"temperature": 0.0, **params}

  @property
  def source(self) -> str:
    return f"chat: {self.client.config.model} at {self.client.config.endpoint}"

  def annotate(self, requests: Sequence[OracleRequest], salt: str = "") -> OracleResult:
    _check_ids(requests)
    answers, asked, messages = {}, [], []
    for request in requests:
      content = [{"type": "text", "text": prompt(request)}]
      if request.image is not None:
        try:
          content.insert(0, chat_client.image_content(request.image))
        except (ValueError, TypeError) as error:  # not an image PNG can hold: skip, counted
          reason = f"image not encodable ({type(error).__name__}: {error})"
          answers[request.id] = OracleAnswer(request.id, None, "failed", reason)
          continue
      asked.append(request)
      messages.append([{"role": "user", "content": content}])
    replies = self.client.complete_all(
      messages, concurrency=self.concurrency, salt=salt, return_exceptions=True, **self.params
    )
    for request, reply in zip(asked, replies):
      if isinstance(reply, chat_client.ChatReplyError):
        answers[request.id] = OracleAnswer(request.id, None, "invalid", str(reply))
      elif isinstance(reply, chat_client.ChatError):
        answers[request.id] = OracleAnswer(request.id, None, "failed", str(reply))
      else:
        answers[request.id] = read_reply(request, reply)
    answers = {request.id: answers[request.id] for request in requests}  # input order
    return OracleResult(answers, _counts(answers), offline=False, source=self.source)


def _check_ids(requests: Sequence[OracleRequest]) -> None:
  seen = set()
  for position, request in enumerate(requests):
    if request.id in seen:
      raise ValueError(f"requests[{position}]: id {request.id!r} appears twice")
    seen.add(request.id)


def _unit(item_id: str, seed: int, purpose: str) -> float:
  """A uniform number in [0, 1) fixed by (seed, id, purpose): the same on every run."""
  digest = hashlib.sha256(f"{seed}/{purpose}/{item_id}".encode()).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


class OfflineOracle:
  """Ground-truth labels {id: answer letter or description}, wrong on a seeded `error_rate`."""

  def __init__(self, labels: Mapping[str, str], error_rate: float = 0.0, seed: int = 0):
    if not (np.isfinite(error_rate) and 0.0 <= error_rate <= 1.0):
      raise ValueError(f"error_rate: expected a number in [0, 1], got {error_rate!r}")
    self.labels, self.error_rate, self.seed = dict(labels), float(error_rate), int(seed)
    # a description's wrong answer is another label that is text, not an option letter
    self._descriptions = sorted({v for v in self.labels.values() if _WORD.search(v)})

  @property
  def source(self) -> str:
    return (
      f"offline: ground-truth labels of the built-in data, error_rate={self.error_rate}, "
      f"seed={self.seed} (not a model)"
    )

  def _wrong(self, request: OracleRequest, truth: str) -> str | None:
    pick = _unit(request.id, self.seed, "pick")
    if request.options:
      others = sorted(set(request.options) - {truth})
      return others[int(pick * len(others))] if others else None
    others = [d for d in self._descriptions if d != truth]
    return others[int(pick * len(others))] if others else None

  def annotate(self, requests: Sequence[OracleRequest], salt: str = "") -> OracleResult:
    del salt  # the same answers every time
    _check_ids(requests)
    answers = {}
    for request in requests:
      truth = self.labels.get(request.id)
      if truth is None:
        answers[request.id] = OracleAnswer(request.id, None, "failed", "no ground-truth label")
        continue
      if request.options and truth not in request.options:
        raise ValueError(f"labels[{request.id!r}]: {truth!r} is not one of the item's options")
      text = truth
      if _unit(request.id, self.seed, "err") < self.error_rate:
        wrong = self._wrong(request, truth)
        text = truth if wrong is None else wrong
      answers[request.id] = OracleAnswer(request.id, text, "ok", "offline")
    return OracleResult(answers, _counts(answers), offline=True, source=self.source)
