"""Descriptions: five aspects, label consistent with severity, varied wording; chat labeller."""

import http.server
import json
import threading

import numpy as np
import pytest

from data_pipeline import descriptions
from data_pipeline import pseudo_labeller
from dp_testlib import load_config

_META = {"modality": "MRI", "anatomy": "brain", "task": "mri_motion"}


def _aspects_found(text, meta):
  """Which of the five aspects an independent reading of the text finds."""
  sentences = text.split(". ")
  causes = descriptions.CAUSES[meta["task"]]
  return {
      "modality_anatomy": any(name in sentences[0] for name in
                              descriptions.MODALITY_NAMES[meta["modality"]])
                          and meta["anatomy"] in sentences[0],
      "degradation_severity": any(word in text for word in
                                  descriptions.SEVERITY_WORDS[meta["severity"]])
                              and any(name in text for name in
                                      descriptions.DEGRADATION_NAMES[meta["task"]]),
      "cause": any(cause in text for cause in causes),
      "impact": any(impact.split("{target}")[0] in text
                    for impact in descriptions.IMPACTS[meta["severity"]]),
      "overall": text.endswith(f"Overall, the quality of this image is {meta['quality_label']}."),
  }


@pytest.mark.parametrize("severity,label", [("mild", "good"), ("moderate", "usable"),
                                            ("severe", "reject")])
def test_description_has_five_aspects_and_label_from_severity(severity, label):
  config = load_config()
  assert descriptions.quality_label(severity, config) == label
  meta = dict(_META, severity=severity, quality_label=descriptions.quality_label(severity, config))
  for seed in range(20):
    text = descriptions.template_description(meta, seed)
    found = _aspects_found(text, meta)
    assert all(found.values()), (found, text)
    other_labels = {"good", "usable", "reject"} - {label}
    assert not any(text.endswith(f"is {other}.") for other in other_labels)


def test_wording_varies_with_seed_and_is_reproducible():
  meta = dict(_META, severity="moderate", quality_label="usable")
  texts = {descriptions.template_description(meta, seed) for seed in range(30)}
  assert len(texts) >= 10
  assert descriptions.template_description(meta, 5) == descriptions.template_description(meta, 5)
  assert len({descriptions.instruction(seed) for seed in range(30)}) >= 3


class _Handler(http.server.BaseHTTPRequestHandler):
  """A tiny OpenAI-compatible /chat/completions endpoint."""
  requests = []
  answer = ""

  def do_POST(self):  # pylint: disable=invalid-name
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    type(self).requests.append({"path": self.path, "auth": self.headers["Authorization"],
                                "body": body})
    payload = json.dumps({"choices": [{"message": {"role": "assistant",
                                                   "content": type(self).answer}}]}).encode()
    self.send_response(200)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(payload)))
    self.end_headers()
    self.wfile.write(payload)

  def log_message(self, *args):
    del args


@pytest.fixture
def chat_server(monkeypatch):
  server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  _Handler.requests = []
  monkeypatch.setenv("MEDQ_LABELLER_BASE_URL", f"http://127.0.0.1:{server.server_port}/v1")
  monkeypatch.setenv("MEDQ_LABELLER_MODEL", "test-model")
  monkeypatch.setenv("MEDQ_LABELLER_API_KEY", "sk-test")
  yield _Handler
  server.shutdown()
  server.server_close()


def test_chat_labeller_uses_endpoint_and_validates_label(chat_server):
  config = load_config()
  config.labeller = "chat"
  labeller = pseudo_labeller.make_labeller(config)
  meta = dict(_META, severity="severe", quality_label="reject")
  chat_server.answer = ("MRI of the brain. Severe motion ghosting. Patient moved. Lesions are "
                        "obscured. Overall, the quality of this image is reject.")
  text = labeller.describe(meta, np.zeros((16, 16), np.float32), seed=3)
  assert text == chat_server.answer
  request = chat_server.requests[-1]
  assert request["path"] == "/v1/chat/completions"
  assert request["auth"] == "Bearer sk-test"
  assert request["body"]["model"] == "test-model"
  content = request["body"]["messages"][0]["content"]
  assert "severe" in content[0]["text"] and content[1]["image_url"]["url"].startswith(
      "data:image/png;base64,")
  chat_server.answer = "Looks fine. Overall, the quality of this image is good."
  with pytest.raises(pseudo_labeller.LabellerError, match="reject"):
    labeller.describe(meta, np.zeros((16, 16), np.float32), seed=3)


def test_chat_labeller_needs_environment(monkeypatch):
  monkeypatch.delenv("MEDQ_LABELLER_BASE_URL", raising=False)
  monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
  with pytest.raises(ValueError, match="MEDQ_LABELLER_BASE_URL"):
    pseudo_labeller.ChatLabeller()
