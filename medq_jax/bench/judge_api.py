"""The MedQ-Bench LLM judge behind any OpenAI-compatible endpoint (`data_pipeline.chat_client`).

The chat client owns the environment (OPENAI_BASE_URL, OPENAI_API_KEY, MEDQ_JUDGE_MODEL with
default ``gpt-4o``, the paper's judge), retries, timeouts and the reply cache; see
docs/chat_client.md. This module adds the judging: the appendix A.3 prompt as messages, and
re-asking (a new attempt, like the reference scorer's three tries) when a reply has no readable
score or is malformed. A bad key stops the run; any other failed request becomes an error in
that request's `JudgeResponse`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from data_pipeline.chat_client import (
  ChatAuthError,
  ChatClient,
  ChatConfig,
  ChatError,
  ChatReplyError,
  ReplyCache,
  map_concurrently,
)
from medq_jax.bench.judge_types import JudgeRequest, JudgeResponse
from medq_jax.bench.prompts import split_roles

logger = logging.getLogger(__name__)
MESSAGE_STYLES = ("single", "split")  # single: the template as one user message (reference scorer)


class ApiJudge:
  """Scores judge requests through a `ChatClient`, up to `concurrency` requests at a time."""

  def __init__(
    self,
    chat: ChatClient,
    *,
    concurrency: int = 4,
    message_style: str = "single",
    score_attempts: int = 3,
    temperature: float = 0.0,
    max_tokens: int = 16,
  ):
    if message_style not in MESSAGE_STYLES:
      raise ValueError(f"message_style must be one of {MESSAGE_STYLES}, got {message_style!r}")
    if score_attempts < 1:
      raise ValueError(f"score_attempts must be >= 1, got {score_attempts!r}")
    self.chat = chat
    self.concurrency = concurrency
    self.message_style = message_style
    self.score_attempts = score_attempts
    self.params = {"temperature": temperature, "max_tokens": max_tokens}
    self.name = f"api:{chat.config.model}"
    self.description = (
      f"LLM judge '{chat.config.model}' via an OpenAI-compatible API "
      f"(paper protocol, appendix A.3 prompts)"
    )

  def __repr__(self) -> str:
    return (
      f"ApiJudge(model={self.chat.config.model!r}, endpoint={self.chat.config.endpoint!r}, "
      f"concurrency={self.concurrency}, message_style={self.message_style!r}, "
      f"api_key=<redacted>)"
    )

  @property
  def requests_sent(self) -> int:
    """HTTP requests sent to the endpoint, retries included (cached answers send none)."""
    return self.chat.requests_sent

  def judge_all(self, requests: Sequence[JudgeRequest]) -> list[JudgeResponse]:
    """Scores every request; the result keeps the input order. Raises ChatAuthError."""
    return map_concurrently(self.judge_one, requests, self.concurrency)

  def judge_one(self, request: JudgeRequest) -> JudgeResponse:
    """Asks until a reply holds a score, at most `score_attempts` times."""
    messages = self._messages(request.prompt)
    last_text, all_cached, problem = None, True, "no valid score in the judge's reply"
    for attempt in range(self.score_attempts):
      salt = f"round={request.round}/attempt={attempt}"
      try:
        text, cached = self.chat.complete_noting_cache(messages, salt=salt, **self.params)
      except ChatAuthError:
        raise
      except ChatReplyError as error:  # a malformed 200: ask again as the next attempt
        all_cached, problem = False, str(error)
        continue
      except ChatError as error:
        return JudgeResponse(request, None, last_text, error=str(error))
      all_cached = all_cached and cached
      last_text = text
      problem = "no valid score in the judge's reply"
      score = request.parse(text)
      if score is not None:
        return JudgeResponse(request, score, text, cached=all_cached)
    return JudgeResponse(
      request,
      None,
      last_text,
      cached=all_cached,
      error=f"{problem} after {self.score_attempts} attempt(s)",
    )

  def _messages(self, prompt: str) -> list[dict[str, str]]:
    if self.message_style == "split":
      return split_roles(prompt)
    return [{"role": "user", "content": prompt}]


def make_api_judge(
  *, concurrency: int, timeout_s: float, max_retries: int, message_style: str, cache_path: str
) -> ApiJudge:
  """The judge an entry point uses: endpoint and model from the environment, replies cached."""
  config = ChatConfig.from_env("judge", timeout_s=timeout_s, max_retries=max_retries)
  judge = ApiJudge(
    ChatClient(config, ReplyCache(cache_path)), concurrency=concurrency, message_style=message_style
  )
  logger.info("judge: %r, cache %s", judge, cache_path)  # the repr leaves the key out
  return judge
