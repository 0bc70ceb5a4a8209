"""Pseudo-labeller: an OpenAI-compatible chat endpoint writes the quality descriptions.

Environment: MEDQ_LABELLER_BASE_URL (e.g. http://127.0.0.1:8000/v1), MEDQ_LABELLER_MODEL,
MEDQ_LABELLER_API_KEY (falls back to OPENAI_BASE_URL / OPENAI_API_KEY). Same interface as
`descriptions.TemplateLabeller`: describe(meta, low_image [S, S], seed) -> str.
"""

import base64
import io
import json
import os
import time
import urllib.error
import urllib.request

import numpy as np
from PIL import Image

from data_pipeline import descriptions

PROMPT = (
    "You are a radiologist assessing medical image quality. The attached {modality} image of "
    "the {anatomy} has {severity} degradation of type '{task}'. Write a quality description "
    "covering, in order: (1) modality and anatomical region; (2) degradation type and "
    "severity; (3) technical cause; (4) diagnostic impact. End with exactly this sentence: "
    "'Overall, the quality of this image is {quality_label}.'")


class LabellerError(RuntimeError):
  """The endpoint failed or answered something unusable; the example is skipped with this reason."""


def _png_data_url(image):
  """float [S, S] in [0, 1] -> 'data:image/png;base64,...'."""
  buffer = io.BytesIO()
  Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(buffer, format="PNG")
  return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class ChatLabeller:
  """Calls POST {base_url}/chat/completions; validates that the answer ends with the label."""

  def __init__(self, base_url=None, model=None, api_key=None, timeout_s=60.0, retries=3):
    self.base_url = (base_url or os.environ.get("MEDQ_LABELLER_BASE_URL")
                     or os.environ.get("OPENAI_BASE_URL") or "").rstrip("/")
    self.model = model or os.environ.get("MEDQ_LABELLER_MODEL", "")
    self.api_key = (api_key or os.environ.get("MEDQ_LABELLER_API_KEY")
                    or os.environ.get("OPENAI_API_KEY") or "")
    if not self.base_url or not self.model:
      raise ValueError("labeller=chat needs MEDQ_LABELLER_BASE_URL and MEDQ_LABELLER_MODEL "
                       "in the environment")
    self.timeout_s = float(timeout_s)
    self.retries = int(retries)

  def _post(self, payload):
    request = urllib.request.Request(
        self.base_url + "/chat/completions", data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json",
                 "Authorization": f"Bearer {self.api_key}"}, method="POST")
    last_error = None
    for attempt in range(self.retries):
      try:
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
          return json.loads(response.read().decode())
      except (urllib.error.URLError, TimeoutError, json.JSONDecodeError, OSError) as error:
        last_error = error
        time.sleep(min(2.0 ** attempt * 0.1, 5.0))
    raise LabellerError(f"chat endpoint {self.base_url} failed after {self.retries} tries: "
                        f"{last_error}")

  def describe(self, meta, low_image, seed):
    """Returns the endpoint's description; raises LabellerError if it lacks the final label."""
    payload = {
        "model": self.model, "seed": int(seed) % (2 ** 31), "temperature": 0.7,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": PROMPT.format(**meta)},
            {"type": "image_url", "image_url": {"url": _png_data_url(low_image)}}]}]}
    answer = self._post(payload)
    try:
      text = answer["choices"][0]["message"]["content"].strip()
    except (KeyError, IndexError, TypeError, AttributeError) as error:
      raise LabellerError(f"chat endpoint answer has no choices[0].message.content: "
                          f"{str(answer)[:200]}") from error
    expected = descriptions.OVERALL.format(label=meta["quality_label"])
    if not text.endswith(expected):
      raise LabellerError(f"chat description does not end with {expected!r}: {text[-120:]!r}")
    return text


def make_labeller(config):
  """config.labeller 'template' | 'chat' -> an object with describe(meta, low, seed)."""
  if config.labeller == "chat":
    return ChatLabeller(timeout_s=config.labeller_timeout_s, retries=config.labeller_retries)
  return descriptions.TemplateLabeller()
