"""One chat client for every OpenAI-compatible endpoint: judge, pseudo-labeller, engine oracle.

Built on the `openai` package, which owns HTTP: base URL and key handling, timeouts, and
retries (408, 409, 429, 5xx and connection errors, exponential backoff from 0.5 s up to 8 s,
honouring ``Retry-After``). This module adds what the roles share: one environment
convention (`ChatConfig.from_env`), an error hierarchy, bounded concurrency
(`ChatClient.complete_all`) and an on-disk reply cache (`ReplyCache`) so that a killed run
resumes without asking an answered question again. docs/chat_client.md describes it once.

The API key is sent only in the Authorization header: it is never logged, never in a
``repr``, a cache key, a cache row or an error message.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import openai

from data_pipeline.readers import encode_png_base64

logger = logging.getLogger(__name__)

# role -> (environment variable naming its model, default model or None when it must be set)
ROLE_MODELS = {
  "judge": ("MEDQ_JUDGE_MODEL", "gpt-4o"),  # MedQ-Bench's judge (the paper's)
  "labeller": ("MEDQ_LABELLER_MODEL", None),  # quality-description pseudo-labeller
  "oracle": ("MEDQ_ORACLE_MODEL", None),  # MedQ-Engine's oracle
}
NO_KEY = "EMPTY"  # sent when OPENAI_API_KEY is unset: `openai` needs a key, local servers ignore it

Messages = list[dict[str, Any]]
_T = TypeVar("_T")
_R = TypeVar("_R")


class ChatError(RuntimeError):
  """A chat request failed; the message names the endpoint and the cause."""


class ChatConfigError(ChatError, ValueError):
  """The environment or the settings do not describe a usable endpoint."""


class ChatAuthError(ChatError):
  """The endpoint refused the credentials (HTTP 401/403): no later request can pass; stop."""


class ChatRequestError(ChatError):
  """No reply: retries exhausted (429, 5xx, timeout, connection) or a non-retryable 4xx."""


class ChatReplyError(ChatError):
  """HTTP 200 whose body is not a chat completion with text; the caller decides to re-ask."""


@dataclasses.dataclass(frozen=True)
class ChatConfig:
  """Where and how to ask: one endpoint, one model; the key never shows in the repr."""

  base_url: str  # OpenAI-compatible root, e.g. https://api.openai.com/v1
  model: str
  api_key: str = dataclasses.field(default="", repr=False, compare=False)
  timeout_s: float = 60.0  # per HTTP attempt
  max_retries: int = 5  # `openai`'s retries after the first attempt

  def __post_init__(self):
    if not self.base_url:
      raise ChatConfigError(
        "ChatConfig.base_url is empty: expected an OpenAI-compatible base "
        "URL such as https://api.openai.com/v1 or http://127.0.0.1:8000/v1"
      )
    if not self.model:
      raise ChatConfigError("ChatConfig.model is empty: expected a model name")
    if not self.timeout_s > 0:
      raise ChatConfigError(f"ChatConfig.timeout_s must be > 0 seconds, got {self.timeout_s!r}")
    if int(self.max_retries) != self.max_retries or self.max_retries < 0:
      raise ChatConfigError(
        f"ChatConfig.max_retries must be an integer >= 0, got {self.max_retries!r}"
      )
    # A base URL ending in /chat/completions names the endpoint, not the root `openai` wants.
    root = self.base_url.rstrip("/").removesuffix("/chat/completions")
    object.__setattr__(self, "base_url", root)

  @classmethod
  def from_env(cls, role: str, environ: Mapping[str, str] | None = None, **overrides) -> ChatConfig:
    """OPENAI_BASE_URL, OPENAI_API_KEY and the role's model variable (ROLE_MODELS)."""
    if role not in ROLE_MODELS:
      raise ValueError(f"unknown chat role {role!r}; expected one of {sorted(ROLE_MODELS)}")
    env = os.environ if environ is None else environ
    model_variable, default_model = ROLE_MODELS[role]
    settings = dict(
      base_url=env.get("OPENAI_BASE_URL", "").strip(),
      model=env.get(model_variable, "").strip() or default_model or "",
      api_key=env.get("OPENAI_API_KEY", "").strip(),
    )
    settings.update(overrides)
    missing = [
      name
      for name, field in (("OPENAI_BASE_URL", "base_url"), (model_variable, "model"))
      if not settings[field]
    ]
    if missing:
      raise ChatConfigError(
        f"the {role} chat client needs {' and '.join(missing)} in the environment: "
        f"OPENAI_BASE_URL is an OpenAI-compatible base URL (https://api.openai.com/v1, or "
        f"http://127.0.0.1:8000/v1 for a local server), {model_variable} the model name; "
        f"see docs/chat_client.md"
      )
    return cls(**settings)

  @property
  def endpoint(self) -> str:
    """The URL every request goes to (for messages and reports)."""
    return self.base_url + "/chat/completions"


def cache_key(model: str, messages: Any, params: Mapping[str, Any], salt: str) -> str:
  """sha256 of what determines a reply: model, messages, sampling params and the caller's salt."""
  payload = json.dumps(
    {"model": model, "messages": messages, "params": dict(params), "salt": salt},
    sort_keys=True,
    ensure_ascii=False,
  )
  return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class ReplyCache:
  """Thread-safe SQLite (WAL) store of reply texts by `cache_key`; each put commits at once."""

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self.path = path
    self._lock = threading.Lock()
    self._connection = sqlite3.connect(path, check_same_thread=False, timeout=30)
    self._connection.execute("PRAGMA journal_mode=WAL")
    self._connection.execute(
      "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT, salt TEXT, "
      "messages TEXT, params TEXT, reply TEXT, created REAL DEFAULT (julianday('now')))"
    )
    self._connection.commit()

  def get(self, key: str) -> str | None:
    with self._lock:
      row = self._connection.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]

  def put(
    self, key: str, model: str, messages: Any, params: Mapping[str, Any], salt: str, reply: str
  ) -> None:
    """Stores one reply with what asked for it (never credentials) and commits."""
    row = (
      key,
      model,
      salt,
      json.dumps(messages, ensure_ascii=False),
      json.dumps(dict(params), sort_keys=True),
      reply,
    )
    with self._lock:
      self._connection.execute(
        "INSERT OR REPLACE INTO replies (key, model, salt, messages, "
        "params, reply) VALUES (?, ?, ?, ?, ?, ?)",
        row,
      )
      self._connection.commit()

  def __len__(self) -> int:
    with self._lock:
      return self._connection.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

  def close(self) -> None:
    with self._lock:
      self._connection.close()


def map_concurrently(
  function: Callable[[_T], _R], items: Sequence[_T], concurrency: int
) -> list[_R]:
  """[function(item) for item in items] with at most `concurrency` calls in flight.

  Results keep the input order. After a call fails no further call starts; once the running
  calls finish, the first failure in input order is raised.
  """
  if int(concurrency) != concurrency or concurrency < 1:
    raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
  failed = threading.Event()

  def call(item):
    if failed.is_set():  # an earlier call failed: start nothing new
      raise _NotStarted()
    try:
      return function(item)
    except BaseException:
      failed.set()
      raise

  pool = concurrent.futures.ThreadPoolExecutor(max_workers=int(concurrency))
  try:
    futures = [pool.submit(call, item) for item in items]
    concurrent.futures.wait(futures)
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
  for future in futures:
    error = future.exception()
    if error is not None and not isinstance(error, _NotStarted):
      raise error
  return [future.result() for future in futures]


class _NotStarted(Exception):
  """A call skipped because an earlier one failed (never reaches the caller)."""


def image_content(image) -> dict[str, Any]:
  """Float [H, W] in [0, 1] or uint8 [H, W(, 3)] -> an ``image_url`` message part (PNG data URL)."""
  return {
    "type": "image_url",
    "image_url": {"url": "data:image/png;base64," + encode_png_base64(image)},
  }


class ChatClient:
  """Chat completions from one endpoint and model, with `openai`'s retries and a reply cache."""

  def __init__(self, config: ChatConfig, cache: ReplyCache | None = None):
    self.config = config
    self.cache = cache
    self._count_lock = threading.Lock()
    self._requests_sent = 0
    http_client = openai.DefaultHttpxClient(event_hooks={"request": [self._count_request]})
    self._openai = openai.OpenAI(
      base_url=config.base_url,
      api_key=config.api_key or NO_KEY,
      timeout=config.timeout_s,
      max_retries=int(config.max_retries),
      http_client=http_client,
    )

  def __repr__(self) -> str:
    return (
      f"ChatClient(model={self.config.model!r}, endpoint={self.config.endpoint!r}, "
      f"api_key=<redacted>, cache={getattr(self.cache, 'path', None)!r})"
    )

  @property
  def requests_sent(self) -> int:
    """HTTP requests sent so far, every retry included (cache hits send none)."""
    return self._requests_sent

  def complete(self, messages: Messages, *, salt: str = "", **params) -> str:
    """The reply text to one request, from the cache or the endpoint (then cached).

    Args:
      messages: OpenAI chat messages, e.g. [{"role": "user", "content": "..."}].
      salt: tells apart requests that are otherwise equal (e.g. "round=0/attempt=1").
      **params: further `chat.completions.create` arguments (temperature, max_tokens, seed).

    Raises:
      ChatAuthError: the credentials were refused.
      ChatRequestError: no reply after `openai`'s retries, or a non-retryable HTTP error.
      ChatReplyError: HTTP 200 without choices[0].message.content text (never cached).
    """
    return self.complete_noting_cache(messages, salt=salt, **params)[0]

  def complete_noting_cache(
    self, messages: Messages, *, salt: str = "", **params
  ) -> tuple[str, bool]:
    """`complete`, plus whether the reply came from the cache (one cache lookup either way)."""
    key = cache_key(self.config.model, messages, params, salt)
    if self.cache is not None:
      text = self.cache.get(key)
      if text is not None:
        return text, True
    text = self._request(messages, params)
    if self.cache is not None:
      self.cache.put(key, self.config.model, messages, params, salt, text)
    return text, False

  def complete_all(
    self,
    list_of_messages: Sequence[Messages],
    *,
    concurrency: int,
    salt: str = "",
    return_exceptions: bool = False,
    **params,
  ) -> list:
    """`complete` for each messages list, up to `concurrency` in flight; input order kept.

    With ``return_exceptions`` a failed request's place holds its ChatError (an auth failure
    still stops everything); otherwise the first failure is raised.
    """

    def one(messages):
      try:
        return self.complete(messages, salt=salt, **params)
      except ChatAuthError:
        raise
      except ChatError as error:
        if return_exceptions:
          return error
        raise

    return map_concurrently(one, list_of_messages, concurrency)

  def close(self) -> None:
    self._openai.close()

  def _count_request(self, request) -> None:
    del request
    with self._count_lock:
      self._requests_sent += 1

  def _request(self, messages: Messages, params: Mapping[str, Any]) -> str:
    endpoint, config = self.config.endpoint, self.config
    try:
      completion = self._openai.chat.completions.create(
        model=config.model, messages=messages, **params
      )
    except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
      raise ChatAuthError(
        f"{endpoint} refused the credentials (HTTP {error.status_code}); check OPENAI_API_KEY"
      ) from None
    except openai.APIStatusError as error:
      status = error.status_code
      retried = status in (408, 409, 429) or status >= 500
      how = f"after {config.max_retries} retries" if retried else "(not retryable)"
      cause = f"HTTP {status} {how}: {self._redact(error.message)[:200]!r}"
      raise self._failed(ChatRequestError, cause) from None
    except openai.APITimeoutError:
      cause = f"timed out after {config.timeout_s:g} s per attempt, {config.max_retries} retries"
      raise self._failed(ChatRequestError, cause) from None
    except openai.APIConnectionError as error:
      cause = f"connection failed after {config.max_retries} retries ({error.__cause__!r})"
      raise self._failed(ChatRequestError, self._redact(cause)) from None
    except openai.APIError as error:
      raise self._failed(ChatRequestError, self._redact(str(error))[:200]) from None
    except json.JSONDecodeError as error:
      raise self._failed(ChatReplyError, f"HTTP 200 but the body is not JSON ({error})") from None
    try:
      text = completion.choices[0].message.content
    except (AttributeError, IndexError, KeyError, TypeError):
      text = None
    if not isinstance(text, str):
      raise self._failed(
        ChatReplyError,
        f"HTTP 200 without choices[0].message.content text: "
        f"{self._redact(str(completion))[:200]!r}",
      )
    return text

  def _failed(self, error_class: type[ChatError], cause: str) -> ChatError:
    logger.warning(
      "chat request to %s (model %s) failed: %s", self.config.endpoint, self.config.model, cause
    )
    return error_class(
      f"chat request to {self.config.endpoint} (model {self.config.model!r}) failed: {cause}"
    )

  def _redact(self, text: str) -> str:
    """Server texts may echo the key; it never leaves this object."""
    return text.replace(self.config.api_key, "<redacted>") if self.config.api_key else text
