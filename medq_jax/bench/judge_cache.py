"""On-disk cache of judge replies, keyed by (judge model, prompt, round, attempt).

SQLite in WAL mode: every reply is committed as soon as it arrives, so a run that is
killed midway resumes without asking any answered question again. Only the model
name, a hash key, the messages and the reply are stored: never credentials.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from typing import Any


def cache_key(model: str, messages: Any, round_index: int, attempt: int, params: dict) -> str:
  payload = json.dumps({"model": model, "messages": messages, "round": round_index,
                        "attempt": attempt, "params": params}, sort_keys=True, ensure_ascii=False)
  return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgeCache:
  """Thread-safe get/put of reply texts by key."""

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self.path = path
    self._lock = threading.Lock()
    self._connection = sqlite3.connect(path, check_same_thread=False, timeout=30)
    self._connection.execute("PRAGMA journal_mode=WAL")
    self._connection.execute(
        "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT, messages TEXT, "
        "reply TEXT, created REAL DEFAULT (julianday('now')))")
    self._connection.commit()

  def get(self, key: str) -> str | None:
    with self._lock:
      row = self._connection.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]

  def put(self, key: str, model: str, messages: Any, reply: str) -> None:
    with self._lock:
      self._connection.execute("INSERT OR REPLACE INTO replies (key, model, messages, reply) "
                               "VALUES (?, ?, ?, ?)",
                               (key, model, json.dumps(messages, ensure_ascii=False), reply))
      self._connection.commit()

  def __len__(self) -> int:
    with self._lock:
      return self._connection.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

  def close(self) -> None:
    with self._lock:
      self._connection.close()
