"""Pseudo-labeller: an OpenAI-compatible chat model writes the quality descriptions.

Talks through `chat_client` (role "labeller": OPENAI_BASE_URL, OPENAI_API_KEY and
MEDQ_LABELLER_MODEL; docs/chat_client.md). Same interface as `descriptions.TemplateLabeller`:
describe(meta, low_image [S, S], seed) -> str.
"""

from data_pipeline import chat_client, descriptions

PROMPT = (
  "You are a radiologist assessing medical image quality. The attached {modality} image of "
  "the {anatomy} has {severity} degradation of type '{task}'. Write a quality description "
  "covering, in order: (1) modality and anatomical region; (2) degradation type and "
  "severity; (3) technical cause; (4) diagnostic impact. End with exactly this sentence: "
  "'Overall, the quality of this image is {quality_label}.'"
)


class LabellerError(RuntimeError):
  """The endpoint failed or answered something unusable; the example is skipped with this reason."""


class ChatLabeller:
  """Asks the chat model for a description; checks it ends with the expected quality label."""

  def __init__(self, chat: chat_client.ChatClient):
    self.chat = chat

  def describe(self, meta, low_image, seed):
    """Returns the model's description of low_image [S, S] in [0, 1].

    Raises:
      LabellerError: no usable reply, or a text that lacks the final overall-quality sentence.
      chat_client.ChatAuthError: the credentials were refused (stops the run).
    """
    messages = [
      {
        "role": "user",
        "content": [
          {"type": "text", "text": PROMPT.format(**meta)},
          chat_client.image_content(low_image),
        ],
      }
    ]
    try:
      text = self.chat.complete(messages, seed=int(seed) % (2**31), temperature=0.7).strip()
    except chat_client.ChatAuthError:
      raise
    except chat_client.ChatError as error:
      raise LabellerError(str(error)) from None
    expected = descriptions.OVERALL.format(label=meta["quality_label"])
    if not text.endswith(expected):
      raise LabellerError(f"chat description does not end with {expected!r}: {text[-120:]!r}")
    return text


def make_labeller(config):
  """config.labeller 'template' | 'chat' -> an object with describe(meta, low, seed)."""
  if config.labeller == "chat":
    chat_config = chat_client.ChatConfig.from_env(
      "labeller",
      timeout_s=float(config.labeller_timeout_s),
      max_retries=int(config.labeller_retries),
    )
    return ChatLabeller(chat_client.ChatClient(chat_config))
  return descriptions.TemplateLabeller()
