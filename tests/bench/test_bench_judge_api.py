"""The API judge, through the `openai`-based chat client, against a local server on 127.0.0.1.

The server answers good, malformed, 429, 500, 503, slow, unscorable and 401 replies, counts
the requests it has in flight, and can hold requests so that a scoring run can be killed
midway and resumed.
"""

import collections
import hashlib
import http.server
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from data_pipeline.chat_client import (
  ChatAuthError,
  ChatClient,
  ChatConfig,
  ChatConfigError,
  ReplyCache,
)
from medq_jax.bench import reasoning
from medq_jax.bench.judge_api import ApiJudge, make_api_judge
from medq_jax.bench.judge_types import JudgeRequest
from medq_jax.bench.report import write_report
from medq_jax.bench.runner import BenchResults, TrackResult
from medq_jax.bench.schema import ReasoningItem

SECRET = "sk-test-SECRET-4c1d2e9f-never-log-me"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RETRY_AFTER_429_S = 0.3


class FakeJudgeServer(http.server.ThreadingHTTPServer):
  daemon_threads = True
  block_on_close = False

  def __init__(self):
    super().__init__(("127.0.0.1", 0), _Handler)
    self.lock = threading.Lock()
    self.seen = collections.Counter()  # request-body digest -> requests received
    self.answered = collections.Counter()  # request-body digest -> valid 200 replies sent
    self.arrivals = collections.defaultdict(list)  # prompt case -> arrival times
    self.authorizations = set()
    self.in_flight = 0
    self.max_in_flight = 0
    self.hold_after = None  # answer this many, then hold the rest
    self.release = threading.Event()
    self.held = 0

  @property
  def url(self):
    return f"http://127.0.0.1:{self.server_address[1]}/v1"

  def handle_error(self, request, client_address):
    pass  # the client hung up on a slow or held reply: expected here


class _Handler(http.server.BaseHTTPRequestHandler):
  timeout = 10  # bounded socket reads

  def log_message(self, *args):  # keep test output quiet
    pass

  def _leave_flight(self):
    """Once per request, before its reply is written: the client may send its next request as
    soon as it reads this one, before this thread would get back to a `finally`."""
    if self.flying:
      self.flying = False
      with self.server.lock:
        self.server.in_flight -= 1

  def _send(self, status, body, headers=()):
    payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    self._leave_flight()
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(payload)))
    for key, value in headers:
      self.send_header(key, value)
    self.end_headers()
    self.wfile.write(payload)

  def do_POST(self):
    server = self.server
    with server.lock:
      server.in_flight += 1
      server.max_in_flight = max(server.max_in_flight, server.in_flight)
    self.flying = True
    try:
      self._answer(server)
    finally:
      self._leave_flight()  # a request dropped unanswered

  def _answer(self, server):
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    prompt = body["messages"][-1]["content"]
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    with server.lock:
      server.seen[digest] += 1
      attempt = server.seen[digest]
      for case in re.findall(r"CASE-[A-Z0-9-]+", prompt):
        server.arrivals[case].append(time.monotonic())
      server.authorizations.add(self.headers.get("Authorization"))
      hold = server.hold_after is not None and sum(server.answered.values()) >= server.hold_after
      if hold:
        server.held += 1
    if hold:
      server.release.wait(timeout=20)  # bounded; then drop the connection unanswered
      return
    if self.path != "/v1/chat/completions":
      return self._send(404, {"error": "not found"})
    quick_retry = [("Retry-After", "0.05")]
    if "CASE-429" in prompt and attempt == 1:
      return self._send(429, {"error": "rate limited"}, [("Retry-After", str(RETRY_AFTER_429_S))])
    if "CASE-500" in prompt and attempt <= 2:
      return self._send(500, {"error": "boom"}, quick_retry)
    if "CASE-DOWN" in prompt:
      return self._send(503, {"error": "down"}, quick_retry)
    if "CASE-MALFORMED" in prompt and attempt == 1:
      return self._send(200, "{not json at all")
    if "CASE-NOCHOICES" in prompt and attempt == 1:
      return self._send(200, {"id": "x", "choices": []})
    if "CASE-SLOW" in prompt and attempt == 1:
      time.sleep(1.0)
    if "CASE-WAIT" in prompt:
      time.sleep(0.2)
    if "CASE-AUTH" in prompt:
      return self._send(401, {"error": {"message": "bad key"}})
    content = "I would rather not say." if "CASE-NOSCORE" in prompt else "Score: 2"
    with server.lock:
      server.answered[digest] += 1
    self._send(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})


@pytest.fixture
def server():
  srv = FakeJudgeServer()
  thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
  thread.start()
  yield srv
  srv.release.set()
  srv.shutdown()
  srv.server_close()
  thread.join(timeout=5)


def _judge(server, cache_path, model="judge-x", concurrency=3, **config):
  settings = dict(base_url=server.url, model=model, api_key=SECRET, timeout_s=0.4, max_retries=3)
  settings.update(config)
  return ApiJudge(
    ChatClient(ChatConfig(**settings), ReplyCache(cache_path)), concurrency=concurrency
  )


def _request(case, dimension="completeness", kind="noref"):
  return JudgeRequest(case, kind, dimension, 0, f"model output {case}", "golden reference")


def test_good_malformed_429_500_slow_and_unscorable_replies(server, tmp_path):
  judge = _judge(server, str(tmp_path / "cache.sqlite"))
  cases = [
    "CASE-GOOD",
    "CASE-429",
    "CASE-500",
    "CASE-MALFORMED",
    "CASE-NOCHOICES",
    "CASE-SLOW",
    "CASE-NOSCORE",
    "CASE-DOWN",
  ]
  responses = {r.request.item_index: r for r in judge.judge_all([_request(c) for c in cases])}
  for case in (
    "CASE-GOOD",
    "CASE-429",
    "CASE-500",
    "CASE-MALFORMED",
    "CASE-NOCHOICES",
    "CASE-SLOW",
  ):
    assert responses[case].score == 2.0, (case, responses[case])
  assert responses["CASE-NOSCORE"].score is None
  assert "no valid score" in responses["CASE-NOSCORE"].error
  assert responses["CASE-NOSCORE"].text == "I would rather not say."
  down = responses["CASE-DOWN"]
  assert down.score is None and "HTTP 503 after 3 retries" in down.error
  assert server.url + "/chat/completions" in down.error
  # requests per case: GOOD 1, 429 2, 500 3, MALFORMED 2 and NOCHOICES 2 (re-asked as the next
  # attempt), SLOW 2 (timeout, retry), NOSCORE 3 attempts, DOWN 1 + 3 retries
  assert sum(server.seen.values()) == 1 + 2 + 3 + 2 + 2 + 2 + 3 + 4
  assert judge.requests_sent == sum(server.seen.values())
  first, second = server.arrivals["CASE-429"]
  assert second - first >= RETRY_AFTER_429_S  # Retry-After honoured
  assert server.authorizations == {f"Bearer {SECRET}"}


def test_concurrency_is_bounded_and_order_kept(server, tmp_path):
  judge = _judge(server, str(tmp_path / "cache.sqlite"), concurrency=3)
  cases = [f"CASE-WAIT-{i}" for i in range(9)]
  responses = judge.judge_all([_request(c) for c in cases])
  assert [r.request.item_index for r in responses] == cases
  assert all(r.score == 2.0 for r in responses)
  assert server.max_in_flight == 3


def test_cached_replies_are_not_asked_again(server, tmp_path):
  cache_path = str(tmp_path / "cache.sqlite")
  requests_ = [
    _request(f"CASE-GOOD-{i}", dimension)
    for i in range(3)
    for dimension in ("completeness", "consistency")
  ]
  first = _judge(server, cache_path).judge_all(requests_)
  asked = sum(server.seen.values())
  assert asked == 6 and not any(r.cached for r in first)
  resumed = _judge(server, cache_path)
  second = resumed.judge_all(requests_)
  assert resumed.requests_sent == 0 and sum(server.seen.values()) == asked
  assert all(r.cached for r in second) and [r.score for r in second] == [r.score for r in first]
  other_model = _judge(server, cache_path, model="judge-y").judge_all(requests_[:1])
  assert sum(server.seen.values()) == asked + 1 and not other_model[0].cached


def test_bad_credentials_stop_the_run(server, tmp_path):
  judge = _judge(server, str(tmp_path / "c.sqlite"), concurrency=1)
  with pytest.raises(ChatAuthError, match="refused the credentials") as error:
    judge.judge_all([_request("CASE-AUTH"), _request("CASE-GOOD-1"), _request("CASE-GOOD-2")])
  assert SECRET not in str(error.value)
  assert sum(server.seen.values()) == 1  # not retried, and nothing after it was sent


def test_factory_from_env_and_key_never_written(server, tmp_path, caplog, capsys, monkeypatch):
  monkeypatch.setenv("OPENAI_BASE_URL", server.url)
  monkeypatch.setenv("OPENAI_API_KEY", SECRET)
  monkeypatch.setenv("MEDQ_JUDGE_MODEL", "judge-z")
  caplog.set_level(logging.DEBUG)
  judge = make_api_judge(
    concurrency=2,
    timeout_s=0.4,
    max_retries=2,
    message_style="split",
    cache_path=str(tmp_path / "out" / "judge_cache.sqlite"),
  )
  config = judge.chat.config
  assert config.endpoint == server.url + "/chat/completions" and config.model == "judge-z"
  assert judge.message_style == "split" and judge.concurrency == 2
  assert SECRET not in repr(judge) + repr(config) + repr(judge.chat)
  items = [
    ReasoningItem(
      str(i), "noref", "The image shows severe noise. Overall, the quality of this image is reject."
    )
    for i in range(3)
  ]
  predictions = {"0": "CASE-GOOD", "1": "CASE-500 then fine", "2": "CASE-SLOW"}
  scores, exclusions, _ = reasoning.score_reasoning(items, predictions, judge)
  assert all(value == 2.0 for item in scores for value in item.scores.values())
  logging.getLogger("test").info("judge %r config %r", judge, config)
  track = TrackResult(
    "noref",
    "items.tsv",
    "pred.tsv",
    3,
    exclusions,
    reasoning_scores=scores,
    reasoning_summaries=reasoning.summaries(scores, "noref", 50),
    reasoning_modality=reasoning.modality_summaries(scores, "noref", 50),
  )
  results = BenchResults(
    "m", judge.name, judge.description, {"noref": track}, {"config": repr(config)}
  )
  write_report(results, str(tmp_path / "out"))
  judge.chat.cache.close()
  captured = capsys.readouterr()
  assert any(record.name.startswith("openai") for record in caplog.records)  # retries logged...
  assert SECRET not in caplog.text + captured.out + captured.err  # ...without the key
  files = [os.path.join(root, name) for root, _, names in os.walk(tmp_path) for name in names]
  assert any(f.endswith("judge_cache.sqlite") for f in files)
  assert any(f.endswith("report.md") for f in files)
  for path in files:
    with open(path, "rb") as handle:
      assert SECRET.encode() not in handle.read(), path


def test_missing_environment_is_explained():
  with pytest.raises(ChatConfigError, match="needs OPENAI_BASE_URL in the environment"):
    ChatConfig.from_env("judge", {})
  assert ChatConfig.from_env("judge", {"OPENAI_BASE_URL": "http://h/v1"}).model == "gpt-4o"


CLIENT = textwrap.dedent("""
    import json, sys
    from medq_jax.bench import reasoning
    from medq_jax.bench.judge_api import make_api_judge
    from medq_jax.bench.schema import ReasoningItem
    cache_path, out_path = sys.argv[1], sys.argv[2]
    items = [ReasoningItem(str(i), "paired", f"golden {i}. Overall, the first image has higher quality.")
             for i in range(6)]
    predictions = {str(i): f"prediction {i}" for i in range(6)}
    judge = make_api_judge(concurrency=2, timeout_s=30, max_retries=1, message_style="single",
                           cache_path=cache_path)
    scores, _, responses = reasoning.score_reasoning(items, predictions, judge)
    json.dump({"scores": [s.scores for s in scores], "cached": sum(r.cached for r in responses),
               "sent": judge.requests_sent}, open(out_path, "w"))
""")


def test_killed_run_resumes_without_repeating_a_request(server, tmp_path):
  script = tmp_path / "client.py"
  script.write_text(CLIENT)
  cache_path, out_path = str(tmp_path / "cache.sqlite"), str(tmp_path / "out.json")
  env = dict(
    os.environ,
    OPENAI_BASE_URL=server.url,
    OPENAI_API_KEY=SECRET,
    MEDQ_JUDGE_MODEL="judge-k",
    PYTHONPATH=REPO,
  )
  server.hold_after = 5
  process = subprocess.Popen(
    [sys.executable, str(script), cache_path, out_path],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
  )
  try:
    deadline = time.monotonic() + 60
    while True:  # wait: 5 answered, the cache holds all 5, and a further request is held
      assert time.monotonic() < deadline, "client never reached the held state"
      assert process.poll() is None, process.stdout.read().decode()
      cached = 0
      if os.path.exists(cache_path):
        try:
          with sqlite3.connect(cache_path, timeout=1) as connection:
            cached = connection.execute("SELECT COUNT(*) FROM replies").fetchone()[0]
        except sqlite3.OperationalError:
          cached = 0
      if sum(server.answered.values()) == 5 and cached == 5 and server.held >= 1:
        break
      time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait(timeout=10)
  first_run = set(server.answered)
  assert not os.path.exists(out_path)
  server.hold_after = None
  server.release.set()
  rerun = subprocess.run(
    [sys.executable, str(script), cache_path, out_path], env=env, capture_output=True, timeout=120
  )
  assert rerun.returncode == 0, rerun.stderr.decode()
  with open(out_path) as handle:
    result = json.load(handle)
  assert result["cached"] == 5 and result["sent"] == 6 * 4 - 5
  assert all(value == 2.0 for scores in result["scores"] for value in scores.values())
  assert len(server.answered) == 6 * 4  # every question answered...
  assert set(server.answered.values()) == {1}  # ...exactly once across both runs
  assert first_run <= set(server.answered)
  with sqlite3.connect(cache_path) as connection:
    columns = [row[1] for row in connection.execute("PRAGMA table_info(replies)")]
  assert "api_key" not in columns
