"""The chat pseudo-labeller and the shared chat client against a local server on 127.0.0.1.

The server speaks OpenAI's /chat/completions: it records every request, fails on demand
(500 with Retry-After, 401) and counts the requests it has in flight.
"""

import base64
import http.server
import io
import json
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from data_pipeline import chat_client, pseudo_labeller
from dp_testlib import load_config

SECRET = "sk-labeller-SECRET-77aa10-never-log-me"
_META = {
  "modality": "MRI",
  "anatomy": "brain",
  "task": "mri_motion",
  "severity": "severe",
  "quality_label": "reject",
}
_GOOD = (
  "MRI of the brain. Severe motion ghosting. Patient moved. Lesions are obscured. "
  "Overall, the quality of this image is reject."
)


class _Server(http.server.ThreadingHTTPServer):
  daemon_threads = True
  block_on_close = False

  def __init__(self):
    super().__init__(("127.0.0.1", 0), _Handler)
    self.lock = threading.Lock()
    self.requests = []
    self.answer = _GOOD
    self.in_flight = 0
    self.max_in_flight = 0

  @property
  def url(self):
    return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(http.server.BaseHTTPRequestHandler):
  """Text 'FAIL' -> 500 (Retry-After 0.01 s), 'AUTH' -> 401, 'WAIT' -> 0.2 s, else the answer."""

  def log_message(self, *args):
    del args

  def do_POST(self):  # pylint: disable=invalid-name
    server = self.server
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    content = body["messages"][-1]["content"]
    text = content if isinstance(content, str) else content[0]["text"]
    with server.lock:
      server.requests.append(
        {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
      )
      server.in_flight += 1
      server.max_in_flight = max(server.max_in_flight, server.in_flight)
    if "FAIL" in text:
      reply = 500, {"error": "boom"}, [("Retry-After", "0.01")]
    elif "AUTH" in text:
      reply = 401, {"error": {"message": "bad key"}}, ()
    else:
      if "WAIT" in text:
        time.sleep(0.2)
      answer = server.answer if "ECHO" not in text else f"echo {text}"
      reply = 200, {"choices": [{"message": {"role": "assistant", "content": answer}}]}, ()
    # Out of flight before the reply is written: the client may send its next request as soon as
    # it reads this one, before this thread would get back to a `finally`.
    with server.lock:
      server.in_flight -= 1
    self._send(*reply)

  def _send(self, status, payload, headers=()):
    data = json.dumps(payload).encode()
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    for key, value in headers:
      self.send_header(key, value)
    self.end_headers()
    self.wfile.write(data)


@pytest.fixture
def server(monkeypatch):
  srv = _Server()
  thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
  thread.start()
  monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
  monkeypatch.setenv("OPENAI_API_KEY", SECRET)
  monkeypatch.setenv("MEDQ_LABELLER_MODEL", "labeller-model")
  yield srv
  srv.shutdown()
  srv.server_close()
  thread.join(timeout=5)


def _chat_labeller(retries=1):
  config = load_config()
  config.labeller = "chat"
  config.labeller_timeout_s = 5.0
  config.labeller_retries = retries
  return pseudo_labeller.make_labeller(config)


def _client(server, cache=None, **settings):
  config = chat_client.ChatConfig(
    base_url=server.url,
    model="m",
    api_key=SECRET,
    **{"timeout_s": 5.0, "max_retries": 1, **settings},
  )
  return chat_client.ChatClient(config, cache)


def test_chat_labeller_uses_endpoint_and_validates_label(server):
  labeller = _chat_labeller()
  image = np.linspace(0.0, 1.0, 16 * 24, dtype=np.float32).reshape(16, 24)
  assert labeller.describe(_META, image, seed=3) == _GOOD
  request = server.requests[-1]
  assert request["path"] == "/v1/chat/completions"
  assert request["auth"] == f"Bearer {SECRET}"
  body = request["body"]
  assert body["model"] == "labeller-model" and body["seed"] == 3 and body["temperature"] == 0.7
  text_part, image_part = body["messages"][0]["content"]
  assert "severe" in text_part["text"] and "reject" in text_part["text"]
  url = image_part["image_url"]["url"]
  assert url.startswith("data:image/png;base64,")
  with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as png:
    assert png.format == "PNG"
    decoded = np.asarray(png)
  np.testing.assert_array_equal(decoded, np.round(image * 255).astype(np.uint8))  # lossless 8-bit
  server.answer = "Looks fine. Overall, the quality of this image is good."
  with pytest.raises(pseudo_labeller.LabellerError, match="reject"):
    labeller.describe(_META, image, seed=3)


def test_chat_labeller_endpoint_failures(server):
  image = np.zeros((16, 16), np.float32)
  failing = dict(_META, anatomy="FAIL")
  with pytest.raises(pseudo_labeller.LabellerError, match="HTTP 500 after 2 retries") as error:
    _chat_labeller(retries=2).describe(failing, image, seed=0)
  assert server.url + "/chat/completions" in str(error.value) and SECRET not in str(error.value)
  assert len(server.requests) == 3  # labeller_retries is openai's max_retries
  with pytest.raises(chat_client.ChatAuthError, match="refused the credentials"):
    _chat_labeller().describe(dict(_META, anatomy="AUTH"), image, seed=0)  # stops, not skipped
  assert len(server.requests) == 4


def test_environment_convention(monkeypatch):
  monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
  monkeypatch.setenv("MEDQ_LABELLER_MODEL", "labeller-model")
  with pytest.raises(ValueError, match="needs OPENAI_BASE_URL in the environment"):
    _chat_labeller()
  environ = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1/", "OPENAI_API_KEY": SECRET}
  with pytest.raises(chat_client.ChatConfigError, match="needs MEDQ_LABELLER_MODEL"):
    chat_client.ChatConfig.from_env("labeller", environ)
  oracle = chat_client.ChatConfig.from_env("oracle", dict(environ, MEDQ_ORACLE_MODEL="o-1"))
  assert (oracle.model, oracle.base_url, oracle.api_key) == ("o-1", "http://127.0.0.1:9/v1", SECRET)
  assert oracle.endpoint == "http://127.0.0.1:9/v1/chat/completions"
  assert SECRET not in repr(oracle) and SECRET not in repr(chat_client.ChatClient(oracle))
  with pytest.raises(ValueError, match="unknown chat role 'engine'"):
    chat_client.ChatConfig.from_env("engine", environ)
  with pytest.raises(chat_client.ChatConfigError, match="max_retries"):
    chat_client.ChatConfig(base_url="http://h/v1", model="m", max_retries=-1)


def test_complete_all_bounds_concurrency_keeps_order_and_reports_failures(server):
  client = _client(server)
  prompts = [f"ECHO WAIT {i}" for i in range(8)]
  replies = client.complete_all([[{"role": "user", "content": p}] for p in prompts], concurrency=3)
  assert replies == [f"echo {p}" for p in prompts]
  assert server.max_in_flight == 3 and client.requests_sent == 8
  mixed = [[{"role": "user", "content": text}] for text in ("ECHO a", "FAIL b", "ECHO c")]
  results = client.complete_all(mixed, concurrency=2, return_exceptions=True)
  assert results[0] == "echo ECHO a" and results[2] == "echo ECHO c"
  assert isinstance(results[1], chat_client.ChatRequestError) and "HTTP 500" in str(results[1])
  with pytest.raises(chat_client.ChatRequestError, match="HTTP 500"):
    client.complete_all(mixed, concurrency=1)


def test_cache_resumes_without_requests_and_holds_no_key(server, tmp_path):
  path = str(tmp_path / "replies.sqlite")
  messages = [
    [
      {
        "role": "user",
        "content": [{"type": "text", "text": f"ECHO {i}"}, chat_client.image_content(np.eye(8))],
      }
    ]
    for i in range(4)
  ]
  first = _client(server, chat_client.ReplyCache(path))
  replies = first.complete_all(messages, concurrency=2, salt="round=0", temperature=0.0)
  assert first.requests_sent == 4 and len(first.cache) == 4
  first.cache.close()
  resumed = _client(server, chat_client.ReplyCache(path))
  assert resumed.complete_all(messages, concurrency=2, salt="round=0", temperature=0.0) == replies
  assert resumed.requests_sent == 0  # a rerun asks nothing already answered
  resumed.complete(messages[0], salt="round=1", temperature=0.0)  # another salt is another question
  resumed.complete(messages[0], salt="round=0", temperature=0.5)  # and so are other params
  assert resumed.requests_sent == 2
  resumed.cache.close()
  assert os.path.getsize(path) > 0
  for name in os.listdir(tmp_path):  # the database and its WAL files
    with open(tmp_path / name, "rb") as handle:
      assert SECRET.encode() not in handle.read(), name


def test_precompute_item_stops_on_refused_key_and_skips_other_failures(server):
  """In the precompute's Grain map a 401 stops the run (every item would fail alike), while an
  endpoint that keeps failing for one item skips that item with the reason."""
  import json as json_lib

  from data_pipeline import make_example

  config = load_config()
  config.labeller, config.labeller_timeout_s, config.labeller_retries = "chat", 5.0, 0
  image = np.linspace(0.0, 1.0, 32 * 32, dtype=np.float32).reshape(32, 32)
  raw = dict(
    image=image,
    key="test:slice",
    patient_id="p0",
    modality="MRI",
    anatomy="brain",
    provenance={"source": "test"},
    simulated=False,
    paired_low=None,
  )
  raws = [dict(raw, anatomy="AUTH"), dict(raw, anatomy="FAIL")]
  maker = make_example.ExampleMaker(json_lib.dumps(config.to_dict()), raws)
  item = dict(id="x:0", task="mri_noise", severity="mild", split="train", shard=0)
  with pytest.raises(chat_client.ChatAuthError):
    maker.map(dict(item, raw_index=0))
  result = maker.map(dict(item, raw_index=1))
  assert result["record"] is None and "HTTP 500" in result["reason"]
