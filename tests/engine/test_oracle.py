"""The oracle: through the project's chat client against a local OpenAI-compatible server on
127.0.0.1 (ok replies, a timeout, nonsense and malformed replies counted, a resumed run asking
nothing twice), and the offline oracle from ground-truth labels with a seeded error rate."""

import http.server
import json
import threading
import time

import numpy as np
import pytest

from data_pipeline import chat_client
from medq_jax.engine import oracle

OPTIONS = {"A": "Yes", "B": "No"}


class _Server(http.server.ThreadingHTTPServer):
  daemon_threads = True
  block_on_close = False

  def __init__(self):
    super().__init__(("127.0.0.1", 0), _Handler)
    self.lock = threading.Lock()
    self.requests = []

  @property
  def url(self):
    return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(http.server.BaseHTTPRequestHandler):
  """'SLOW' -> 1 s (past the timeout), 'NONSENSE' -> a reply naming no option, 'BROKEN' -> 200
  without choices, 'BLANK' -> '...'; else 'The answer is B.' or a description."""

  def log_message(self, *args):
    del args

  def do_POST(self):  # pylint: disable=invalid-name
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    parts = body["messages"][-1]["content"]
    text = next(p["text"] for p in parts if p["type"] == "text")
    with self.server.lock:
      self.server.requests.append(body)
    if "SLOW" in text:
      time.sleep(1.0)
    if "BROKEN" in text:
      return self._send({"id": "x"})
    reply = "The answer is B." if "Yes\n" in text or "A. Yes" in text else "Mild motion blur."
    if "NONSENSE" in text:
      reply = "purple elephants dancing"
    if "BLANK" in text:
      reply = " ... "
    self._send({"choices": [{"message": {"role": "assistant", "content": reply}}]})

  def _send(self, payload):
    data = json.dumps(payload).encode()
    try:
      self.send_response(200)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
      pass  # the client gave up (timeout)


@pytest.fixture
def server():
  srv = _Server()
  thread = threading.Thread(target=srv.serve_forever, daemon=True)
  thread.start()
  yield srv
  srv.shutdown()
  srv.server_close()


def _client(server, tmp_path):
  config = chat_client.ChatConfig.from_env(
    "oracle",
    environ={"OPENAI_BASE_URL": server.url, "MEDQ_ORACLE_MODEL": "tiny-oracle"},
    timeout_s=0.4,
    max_retries=0,
  )
  return chat_client.ChatClient(config, chat_client.ReplyCache(str(tmp_path / "cache.sqlite")))


def _requests():
  image = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
  return [
    oracle.OracleRequest("q1", "Is there motion?", image, OPTIONS),
    oracle.OracleRequest("d1", "Describe the quality.", image),
    oracle.OracleRequest("q2", "NONSENSE: is there noise?", image, OPTIONS),
    oracle.OracleRequest("d2", "SLOW: describe.", image),
    oracle.OracleRequest("d3", "BROKEN: describe.", image),
    oracle.OracleRequest("d4", "BLANK: describe.", image),
    oracle.OracleRequest("d5", "Describe this one.", np.zeros((4, 4, 7), np.float32)),
  ]


def test_chat_oracle_counts_bad_replies_and_resumes(server, tmp_path):
  client = _client(server, tmp_path)
  result = oracle.ChatOracle(client, concurrency=3).annotate(_requests(), salt="iteration=1")
  got = {i: (a.status, a.text) for i, a in result.answers.items()}
  assert got == {
    "q1": ("ok", "B"),
    "d1": ("ok", "Mild motion blur."),
    "q2": ("invalid", None),
    "d2": ("failed", None),
    "d3": ("invalid", None),
    "d4": ("invalid", None),
    "d5": ("failed", None),  # a 7-channel array is no PNG: never sent
  }
  assert list(result.answers) == [r.id for r in _requests()]
  assert result.answers["d5"].reason.startswith("image not encodable")
  assert not any("Describe this one." in json.dumps(b) for b in server.requests)
  assert result.counts == {"ok": 2, "invalid": 3, "failed": 2}
  assert not result.offline and result.source.startswith("chat: tiny-oracle at http://127.0.0.1")
  assert "tiny-oracle" in result.answers["d2"].reason or "timed out" in result.answers["d2"].reason
  first = server.requests[0]
  assert first["model"] == "tiny-oracle" and first["temperature"] == 0.0
  images = [p for p in first["messages"][0]["content"] if p["type"] == "image_url"]
  assert images and images[0]["image_url"]["url"].startswith("data:image/png;base64,")
  mcq = next(b for b in server.requests if "Is there motion?" in json.dumps(b))
  text = next(p["text"] for p in mcq["messages"][0]["content"] if p["type"] == "text")
  assert text == "Is there motion?\nA. Yes\nB. No\n" + oracle.MCQ_INSTRUCTION
  # A resumed run asks only what had no reply: the timeout and the malformed 200.
  sent = client.requests_sent
  again = oracle.ChatOracle(client, concurrency=3).annotate(_requests(), salt="iteration=1")
  assert client.requests_sent - sent == 2
  assert again.answers == result.answers


def test_auth_failure_stops(tmp_path):
  class _Refuse(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
      del args

    def do_POST(self):  # pylint: disable=invalid-name
      self.rfile.read(int(self.headers["Content-Length"]))
      self.send_response(401)
      self.send_header("Content-Length", "2")
      self.end_headers()
      self.wfile.write(b"{}")

  srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuse)
  threading.Thread(target=srv.serve_forever, daemon=True).start()
  try:
    config = chat_client.ChatConfig(
      f"http://127.0.0.1:{srv.server_address[1]}/v1", "m", max_retries=0
    )
    with pytest.raises(chat_client.ChatAuthError):
      oracle.ChatOracle(chat_client.ChatClient(config)).annotate(_requests()[:1])
  finally:
    srv.shutdown()
    srv.server_close()


def test_offline_oracle_error_rate_and_marking():
  n = 2000
  labels = {f"q{i}": "AB"[i % 2] for i in range(n)}
  labels.update({f"d{i}": f"description {i % 50}" for i in range(n)})
  requests = [oracle.OracleRequest(f"q{i}", "?", None, OPTIONS) for i in range(n)]
  requests += [oracle.OracleRequest(f"d{i}", "?") for i in range(n)]
  perfect = oracle.OfflineOracle(labels).annotate(requests)
  assert all(a.text == labels[i] for i, a in perfect.answers.items())
  noisy = oracle.OfflineOracle(labels, error_rate=0.3, seed=1).annotate(requests)
  assert noisy.offline and "offline" in noisy.source and "error_rate=0.3" in noisy.source
  wrong = [i for i, a in noisy.answers.items() if a.text != labels[i]]
  assert len(wrong) / len(requests) == pytest.approx(0.3, abs=0.03)  # binomial sd ~0.007
  assert all(noisy.answers[i].text in OPTIONS for i in wrong if i.startswith("q"))
  assert all(noisy.answers[i].text.startswith("description ") for i in wrong if i[0] == "d")
  assert noisy.counts == {"ok": 2 * n, "invalid": 0, "failed": 0}
  # the same on every call, different with another seed
  assert oracle.OfflineOracle(labels, 0.3, seed=1).annotate(requests).answers == noisy.answers
  other = oracle.OfflineOracle(labels, 0.3, seed=2).annotate(requests)
  assert other.answers != noisy.answers


def test_offline_oracle_bad_inputs():
  with pytest.raises(ValueError, match="error_rate"):
    oracle.OfflineOracle({}, error_rate=1.5)
  result = oracle.OfflineOracle({"a": "A"}).annotate([oracle.OracleRequest("b", "?")])
  assert result.counts["failed"] == 1 and result.answers["b"].reason == "no ground-truth label"
  with pytest.raises(ValueError, match=r"labels\['a'\]: 'C' is not one of the item's options"):
    oracle.OfflineOracle({"a": "C"}).annotate([oracle.OracleRequest("a", "?", None, OPTIONS)])
  with pytest.raises(ValueError, match=r"requests\[1\]: id 'a' appears twice"):
    oracle.OfflineOracle({"a": "A"}).annotate([oracle.OracleRequest("a", "?")] * 2)
