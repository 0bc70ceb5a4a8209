"""Option extraction: a model's free-text answer -> the option letter it chose.

`extract_option` is our robust extractor. Rules, first that fires wins:

1. empty/whitespace -> unparseable ("empty");
2. reasoning blocks ``<think>...</think>`` are dropped, text NFKC-normalised (full-width
   letters), markdown emphasis removed;
3. the whole answer is one letter: ``B``, ``b``, ``B.``, ``(B)``, ``[B]``, ``B)``;
4. an explicit answer phrase, the last one wins: ``answer is B``, ``Answer: (C)``,
   ``final answer: D``, ``I choose B``, ``the correct option is A``;
5. a leading letter with a separator: ``B. Moderate``, ``C) Reject``, ``D - Noise``,
   ``B Moderate`` (``A`` followed by a word only when that word starts option A's text,
   so the article in "A motion artifact..." is not read as option A);
6. ``Option B`` / ``choice B`` mentions that all agree;
7. Yes/No items: a leading ``Yes``/``No``, or exactly one of the two words;
8. the text of exactly one option (the longest when one contains another);
9. exactly one distinct standalone option letter in the text.

Letters may be lower case where a reader sees a letter (``b)``, ``(c)``, ``[d]``, ``*b*``,
``answer: a``), and answer phrases in other languages count when they name the letter
(``答案：B``, ``la respuesta es C``, ``Antwort: D``). A letter outside the item's options
(``D`` on a three-option item), text naming several letters, "none of the options" and
refusals ("I cannot determine ...") are unanswerable: they count as wrong and are counted
and listed by reason.

`extract_option_vlmevalkit` is VLMEvalKit's ``MedqbenchMCQDataset._extract_option_letter``
rule for rule, quirks included, and `vlmevalkit_correct` its comparison with the answer, so
a report can show both numbers and the items where they disagree.
"""

from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_WHOLE_LETTER = re.compile(r"^\s*[\(\[\{<]?\s*([A-Da-d])\s*[\)\]\}>]?\s*[.:;!]?\s*$")
_LETTER_CS = r"(?:\(\s*([A-Da-d])\s*\)|\[\s*([A-Da-d])\s*\]|([A-D])(?![A-Za-z0-9])|([a-d])(?=\s*[.)\]:;,。]|\s*$))"
_ANSWER_PHRASE = re.compile(
  r"(?i:\b(?:final\s+answer|correct\s+answer|best\s+answer|the\s+answer|answer|"
  r"correct\s+option|correct\s+choice|best\s+option|i\s+(?:would\s+)?(?:choose|select|pick)|"
  r"i(?:'d|\s+would)\s+go\s+with|i\s+go\s+with))"
  r"(?i:\s*(?:is|would\s+be|should\s+be|will\s+be|=|:|-|->)?\s*(?:option|choice|letter)?\s*[:\-]?\s*)"
  + _LETTER_CS
)
_OPTION_MENTION = re.compile(r"(?i:\b(?:option|choice)\s*[:#]?\s*)" + _LETTER_CS)
_LEADING = re.compile(r"^\s*[\(\[]?\s*([A-D])\s*(?:([\)\]\.:,\-–—])|\s+(?=\S))")
# "B and C", "B, C", "B/C": a leading letter joined to a second one
_SECOND_LETTER = re.compile(r"\s*(?:,|/|&|\band\b|\bor\b)\s*[\(\[]?\s*[A-D](?![A-Za-z0-9])")
# a lower-case leading letter only with a separator a reader takes for a list mark: "b) Usable"
_LEADING_LOWER = re.compile(r"^\s*(?:\(\s*([a-d])\s*\)|\[\s*([a-d])\s*\]|([a-d])\s*[\).:])")
# answer phrases of other languages that name the letter: 答案：B, la respuesta es C, Antwort: D
_FOREIGN_PHRASE = re.compile(
  r"(?i:正确答案|答案|选项|选择|回答|答え|正解|정답|respuesta|resposta|r[ée]ponse|antwort|"
  r"risposta|ответ)"
  r"(?i:\s*(?:correcta|correta|correcte|correct[ae]?|richtige|правильный)?\s*"
  r"(?:es|est|ist|[èé]|是|为|為|は|는|:|-|=)?\s*(?:la|le|die|option|opción|opção|选项)?\s*[:\-]?\s*)"
  r"(?:\(\s*([A-Da-d])\s*\)|\[\s*([A-Da-d])\s*\]|([A-Da-d])(?![A-Za-z0-9]))"
)
_REFUSAL = re.compile(
  r"(?i)\b(?:(?:i|we)\s+(?:cannot|can ?not|can't|am unable to|'m unable to|am not able to)|"
  r"(?:cannot|can ?not|can't|unable to|not able to|not possible to|impossible to)\s+(?:be\s+)?"
  r"(?:determine|determined|tell|told|assess|assessed|answer|answered|evaluate|evaluated|judge|"
  r"judged|say|decide|decided)|i(?:'m| am) (?:sorry|not sure|uncertain)|insufficient information|"
  r"as an ai|none of (?:the|these|those)(?: options| choices| answers| above)?)\b"
)
_STANDALONE = re.compile(r"(?<![A-Za-z0-9'])([A-D])(?![A-Za-z0-9'])")


@dataclasses.dataclass(frozen=True)
class Extraction:
  """The chosen letter (None when unparseable) and the rule or failure reason."""

  letter: str | None
  rule: str

  @property
  def parsed(self) -> bool:
    return self.letter is not None


def is_missing_prediction(prediction: Any) -> bool:
  """True for None, NaN, empty/whitespace text and 'nan', 'none', 'null', 'n/a', 'na', '#n/a'."""
  if prediction is None:
    return True
  if isinstance(prediction, float) and math.isnan(prediction):
    return True
  text = str(prediction).strip()
  return not text or text.lower() in ("nan", "none", "null", "n/a", "na", "#n/a")


def normalize_text(prediction: str) -> str:
  text = str(prediction)
  if "</think>" in text.lower():
    text = re.split(r"</think>", text, flags=re.IGNORECASE)[-1]
  text = _THINK.sub(" ", text)
  text = unicodedata.normalize("NFKC", text)
  text = text.replace("*", "").replace("`", "")
  text = re.sub(r"(?<![A-Za-z0-9])_+|_+(?![A-Za-z0-9])", "", text)  # _B_, __B__; not snake_case
  return re.sub(r"\s+", " ", text).strip()


def _simplify(text: str) -> str:
  return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9]+", " ", text.lower())).strip()


def _groups_letter(match: re.Match) -> str:
  return next(g for g in match.groups() if g).upper()


def _checked(letter: str, options: Mapping[str, str], rule: str) -> Extraction:
  if letter not in options:
    return Extraction(None, f"letter {letter} not among options {''.join(sorted(options))}")
  return Extraction(letter, rule)


def _yes_no_words(options: Mapping[str, str]) -> dict[str, str] | None:
  by_word = {_simplify(v): k for k, v in options.items()}
  return by_word if sorted(by_word) == ["no", "yes"] else None


def _yes_no_leading(text: str, options: Mapping[str, str]) -> Extraction | None:
  """A Yes/No item answered by its first word: "No, I cannot see blur" is No, not a refusal."""
  by_word = _yes_no_words(options)
  simple = _simplify(text)
  first = simple.split(" ", 1)[0] if simple else ""
  if by_word and first in by_word:
    return Extraction(by_word[first], "yes/no word")
  return None


def _yes_no_letter(text: str, options: Mapping[str, str]) -> Extraction | None:
  by_word = _yes_no_words(options)
  if not by_word:
    return None
  words = set(_simplify(text).split())
  found = [w for w in ("yes", "no") if w in words]
  if len(found) == 1:
    return Extraction(by_word[found[0]], "yes/no word")
  return None


def _option_text_letter(text: str, options: Mapping[str, str]) -> Extraction | None:
  simple = f" {_simplify(text)} "
  found = {}
  for letter, option in options.items():
    key = _simplify(option)
    if key and f" {key} " in simple:
      found[letter] = key
  if not found:
    return None
  if len(found) > 1:  # keep only options not contained in another found option's text
    found = {
      k: v
      for k, v in found.items()
      if not any(v != other and f" {v} " in f" {other} " for other in found.values())
    }
  if len(found) == 1:
    return Extraction(next(iter(found)), "option text")
  return Extraction(None, f"ambiguous: text of options {''.join(sorted(found))}")


def extract_option(prediction: Any, options: Mapping[str, str]) -> Extraction:
  """Free-text answer + the item's options ({letter: text}) -> `Extraction`."""
  if is_missing_prediction(prediction):
    return Extraction(None, "empty prediction")
  text = normalize_text(prediction)
  if not text:
    return Extraction(None, "empty prediction")
  match = _WHOLE_LETTER.match(text)
  if match:
    return _checked(match.group(1).upper(), options, "single letter")
  phrases = list(_ANSWER_PHRASE.finditer(text))
  if phrases:
    return _checked(_groups_letter(phrases[-1]), options, "answer phrase")
  foreign = list(_FOREIGN_PHRASE.finditer(text))
  if foreign:
    return _checked(_groups_letter(foreign[-1]), options, "answer phrase")
  match = _LEADING.match(text)
  if match and _SECOND_LETTER.match(text[match.start(1) + 1 :]):
    return Extraction(None, "ambiguous: several leading letters")
  if match:
    letter = match.group(1)
    rest = _simplify(text[match.end() :])
    option_a = _simplify(options.get("A", ""))
    if letter != "A" or match.group(2) or (option_a and rest.startswith(option_a)):
      return _checked(letter, options, "leading letter")
  match = _LEADING_LOWER.match(text)
  if match:
    return _checked(_groups_letter(match), options, "leading letter")
  mentions = {_groups_letter(m) for m in _OPTION_MENTION.finditer(text)}
  if len(mentions) == 1:
    return _checked(mentions.pop(), options, "option mention")
  if len(mentions) > 1:
    return Extraction(None, f"ambiguous: mentions options {''.join(sorted(mentions))}")
  found = _yes_no_leading(text, options)
  if found is not None:
    return found
  refusal = _REFUSAL.search(text)
  if refusal:
    return Extraction(None, f"no single option: {refusal.group(0).lower()!r}")
  for finder in (_yes_no_letter, _option_text_letter):
    found = finder(text, options)
    if found is not None:
      return found
  letters = set()
  for m in _STANDALONE.finditer(text):
    if m.group(1) == "A" and re.match(r"\s+(?!(?:or|and|vs|versus|nor)\b)[a-z]", text[m.end() :]):
      continue  # the article "A", as in "A motion artifact"
    letters.add(m.group(1))
  if len(letters) == 1:
    return _checked(letters.pop(), options, "standalone letter")
  if len(letters) > 1:
    return Extraction(None, f"ambiguous: letters {''.join(sorted(letters))}")
  return Extraction(None, "no option found")


# pandas' default missing-value strings (`pandas.read_csv`/`read_excel` ``na_values``): VLMEvalKit
# loads a prediction file with pandas, so these predictions arrive as NaN.
PANDAS_NA_STRINGS = frozenset(
  ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN")
  + ("<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")
)
# VLMEvalKit's four patterns, in its order, each applied to the upper-cased prediction. The
# second is written in lower case in VLMEvalKit, so on upper-cased text it never matches:
# kept as written, so "A: the answer is C" is read as A there too.
_VLMEVALKIT_LEADING = re.compile(r"^([A-D])[.\)\s]")
_VLMEVALKIT_PHRASE = re.compile(r"(?:answer\s+is\s+|option\s+)([A-D])(?:\s|$|[^A-Z])")
_VLMEVALKIT_DASH = re.compile(r"^([A-D])\s*[-:]")
_VLMEVALKIT_ISOLATED = re.compile(r"(?:^|[^A-Z])([A-D])(?:[^A-Z]|$)")


def is_pandas_na(prediction: Any) -> bool:
  """True where VLMEvalKit's pandas loading gives NaN: None, NaN, '' and pandas' NA strings."""
  if prediction is None:
    return True
  if isinstance(prediction, float):
    return math.isnan(prediction)
  return isinstance(prediction, str) and prediction in PANDAS_NA_STRINGS


def extract_option_vlmevalkit(prediction: Any) -> str | None:
  """VLMEvalKit's ``_extract_option_letter``: a letter A-D, else the stripped text; None = NaN.

  Rules in order on ``str(prediction).strip()``: its upper case is one of A-D; ``^X[.)\\s]``;
  the (never matching) lower-case "answer is X / option X"; ``^X\\s*[-:]``; the first isolated
  A-D (no letter A-Z either side); otherwise the text itself, which `vlmevalkit_correct` scores
  wrong. ``prediction`` is the cell as read from the file (strings); pandas' NA strings give None.
  """
  if is_pandas_na(prediction):
    return None
  text = str(prediction).strip()
  upper = text.upper()
  if upper in ("A", "B", "C", "D"):
    return upper
  match = _VLMEVALKIT_LEADING.match(upper) or _VLMEVALKIT_PHRASE.search(upper)
  match = match or _VLMEVALKIT_DASH.search(upper)
  if match:
    return match.group(1)
  isolated = _VLMEVALKIT_ISOLATED.findall(upper)
  if isolated:
    return isolated[0]
  return text


def vlmevalkit_correct(extracted: str | None, answer: str) -> bool:
  """VLMEvalKit's test: ``str(answer).upper() == str(extracted).upper()`` (NaN is 'nan')."""
  return str(answer).upper() == ("nan" if extracted is None else str(extracted)).upper()


def vlmevalkit_letter(extracted: str | None) -> str | None:
  """The option letter VLMEvalKit chose, or None when it kept the raw text (or NaN)."""
  return extracted if extracted in ("A", "B", "C", "D") else None
