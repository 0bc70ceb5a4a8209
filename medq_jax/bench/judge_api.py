"""An LLM judge behind any OpenAI-compatible ``/chat/completions`` endpoint.

Configuration comes from the environment (`ApiJudgeConfig.from_env`):
``MEDQ_JUDGE_BASE_URL`` (or ``OPENAI_BASE_URL``), ``MEDQ_JUDGE_MODEL`` (default
``gpt-4o``, the paper's judge) and ``MEDQ_JUDGE_API_KEY`` (or ``OPENAI_API_KEY``).
The key is only ever placed in the Authorization header: it is never logged, never
part of a cache key or cache row, and redacted from ``repr``.

Behaviour: at most ``concurrency`` requests in flight; 429, 5xx, timeouts, connection
errors and malformed 200 replies are retried with exponential backoff (honouring
``Retry-After``); 401/403 stop the run. Each reply is cached before it is used, so
a rerun asks only what was never answered. A reply without a readable score is
asked again (a new attempt, like the reference scorer's three tries).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import random
import threading
import time
from typing import Sequence

import requests

from medq_jax.bench.judge_cache import JudgeCache, cache_key
from medq_jax.bench.judge_types import JudgeRequest, JudgeResponse, parse_judge_score
from medq_jax.bench.prompts import split_roles

logger = logging.getLogger(__name__)
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class JudgeAPIError(RuntimeError):
  """A judge request failed for good (bad request, retries exhausted)."""


class JudgeAuthError(JudgeAPIError):
  """The endpoint refused the credentials: no later request can succeed, so the run stops."""


@dataclasses.dataclass(frozen=True)
class ApiJudgeConfig:
  base_url: str
  model: str = "gpt-4o"
  api_key: str = dataclasses.field(default="", repr=False)
  concurrency: int = 4
  timeout_s: float = 60.0
  max_retries: int = 5
  backoff_initial_s: float = 1.0
  backoff_max_s: float = 30.0
  temperature: float = 0.0
  max_tokens: int = 16
  score_attempts: int = 3
  message_style: str = "single"  # "single": the template as one user message (reference scorer)

  @classmethod
  def from_env(cls, environ=None, **overrides) -> "ApiJudgeConfig":
    env = os.environ if environ is None else environ
    base_url = env.get("MEDQ_JUDGE_BASE_URL") or env.get("OPENAI_BASE_URL") or ""
    if not base_url:
      raise JudgeAPIError("set MEDQ_JUDGE_BASE_URL (or OPENAI_BASE_URL) to an OpenAI-compatible "
                          "base URL, e.g. https://api.openai.com/v1, or use the offline judge")
    return cls(base_url=base_url, model=env.get("MEDQ_JUDGE_MODEL") or cls.model,
               api_key=env.get("MEDQ_JUDGE_API_KEY") or env.get("OPENAI_API_KEY") or "", **overrides)

  @property
  def endpoint(self) -> str:
    url = self.base_url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


class ApiJudge:
  """Judges requests through the chat API, with cache, retries and bounded concurrency."""

  def __init__(self, config: ApiJudgeConfig, cache: JudgeCache | None = None, sleep=time.sleep):
    if config.message_style not in ("single", "split"):
      raise ValueError(f"message_style must be 'single' or 'split', got {config.message_style!r}")
    self.config = config
    self.cache = cache
    self.name = f"api:{config.model}"
    self.description = (f"LLM judge '{config.model}' via an OpenAI-compatible API "
                        f"(paper protocol, appendix A.3 prompts)")
    self._sleep = sleep
    self._local = threading.local()
    self.requests_sent = 0
    self._count_lock = threading.Lock()

  def __repr__(self) -> str:
    return f"ApiJudge(model={self.config.model!r}, endpoint={self.config.endpoint!r}, api_key=<redacted>)"

  # --------------------------------------------------------------------------- public
  def judge_all(self, requests_: Sequence[JudgeRequest]) -> list[JudgeResponse]:
    """Scores every request; order of the result matches the input."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, self.config.concurrency)) as pool:
      return list(pool.map(self.judge_one, requests_))

  def judge_one(self, request: JudgeRequest) -> JudgeResponse:
    messages = self._messages(request.prompt)
    last_text, all_cached = None, True
    for attempt in range(self.config.score_attempts):
      key = cache_key(self.config.model, messages, request.round, attempt, self._params())
      text = self.cache.get(key) if self.cache is not None else None
      if text is None:
        all_cached = False
        try:
          text = self._post(messages)
        except JudgeAuthError:
          raise
        except JudgeAPIError as error:
          return JudgeResponse(request, None, last_text, error=str(error))
        if self.cache is not None:
          self.cache.put(key, self.config.model, messages, text)
      last_text = text
      score = parse_judge_score(text, request.allowed_scores)
      if score is not None:
        return JudgeResponse(request, score, text, cached=all_cached)
    return JudgeResponse(request, None, last_text, error="no valid score in the judge's reply "
                         f"after {self.config.score_attempts} attempt(s)", cached=all_cached)

  # --------------------------------------------------------------------------- internals
  def _params(self) -> dict:
    return {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens}

  def _messages(self, prompt: str) -> list[dict[str, str]]:
    if self.config.message_style == "split":
      return split_roles(prompt)
    return [{"role": "user", "content": prompt}]

  def _session(self) -> requests.Session:
    session = getattr(self._local, "session", None)
    if session is None:
      session = self._local.session = requests.Session()
    return session

  def _post(self, messages) -> str:
    """One chat completion with retries; returns the reply text."""
    headers = {"Content-Type": "application/json"}
    if self.config.api_key:
      headers["Authorization"] = f"Bearer {self.config.api_key}"
    body = {"model": self.config.model, "messages": messages, **self._params()}
    problem, hint_s = "no attempt made", None
    for retry in range(self.config.max_retries + 1):
      if retry:
        self._sleep(self._backoff(retry, hint_s))
        hint_s = None
      with self._count_lock:
        self.requests_sent += 1
      try:
        response = self._session().post(self.config.endpoint, json=body, headers=headers,
                                        timeout=self.config.timeout_s)
      except requests.Timeout:
        problem = f"timeout after {self.config.timeout_s:g} s"
      except requests.ConnectionError as error:
        problem = f"connection error ({type(error).__name__})"
      else:
        status = response.status_code
        if status == 200:
          text = _reply_text(response)
          if text is not None:
            return text
          problem = "malformed reply (no choices[0].message.content)"
        elif status in (401, 403):
          raise JudgeAuthError(f"judge API at {self.config.endpoint} refused the credentials "
                               f"(HTTP {status}); check MEDQ_JUDGE_API_KEY")
        elif status in RETRYABLE_STATUS or status >= 500:
          problem = f"HTTP {status}"
          hint_s = _retry_after_seconds(response)
        else:
          raise JudgeAPIError(f"judge API at {self.config.endpoint} answered HTTP {status}: "
                              f"{response.text[:200]!r}")
      logger.warning("judge request failed (%s); retry %d of %d", problem, retry + 1,
                     self.config.max_retries)
    raise JudgeAPIError(f"judge request failed after {self.config.max_retries} retries: {problem}")

  def _backoff(self, retry: int, hint_s: float | None) -> float:
    """Exponential backoff with jitter, at least the server's Retry-After (capped)."""
    delay = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** (retry - 1))
    if hint_s:
      delay = max(delay, min(hint_s, self.config.backoff_max_s))
    return delay * (0.5 + random.random() / 2)


def _reply_text(response: requests.Response) -> str | None:
  try:
    payload = response.json()
    content = payload["choices"][0]["message"]["content"]
  except (ValueError, KeyError, IndexError, TypeError):
    return None
  return content if isinstance(content, str) else None


def _retry_after_seconds(response: requests.Response) -> float | None:
  value = response.headers.get("Retry-After")
  try:
    return float(value) if value is not None else None
  except ValueError:
    return None
