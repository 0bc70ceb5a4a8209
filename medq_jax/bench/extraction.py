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

A letter outside the item's options (``D`` on a three-option item) and text naming
several letters are unparseable. Unparseable answers count as wrong and are counted
by reason. `extract_option_vlmevalkit` reproduces the reference scorer's simpler
rules so reports can show both numbers.
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
_LETTER_CS = r"(?:\(\s*([A-Da-d])\s*\)|\[\s*([A-Da-d])\s*\]|([A-D])(?![A-Za-z0-9])|([a-d])(?=\s*[.)\]:;]|\s*$))"
_ANSWER_PHRASE = re.compile(
  r"(?i:\b(?:final\s+answer|correct\s+answer|best\s+answer|the\s+answer|answer|"
  r"correct\s+option|correct\s+choice|best\s+option|i\s+(?:would\s+)?(?:choose|select|pick)|"
  r"i(?:'d|\s+would)\s+go\s+with|i\s+go\s+with))"
  r"(?i:\s*(?:is|would\s+be|should\s+be|will\s+be|=|:|-|->)?\s*(?:option|choice|letter)?\s*[:\-]?\s*)"
  + _LETTER_CS
)
_OPTION_MENTION = re.compile(r"(?i:\b(?:option|choice)\s*[:#]?\s*)" + _LETTER_CS)
_LEADING = re.compile(r"^\s*[\(\[]?\s*([A-D])\s*(?:([\)\]\.:,\-–—])|\s+(?=\S))")
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
  """True for None, NaN, empty/whitespace text and the strings 'nan'/'none'/'null'."""
  if prediction is None:
    return True
  if isinstance(prediction, float) and math.isnan(prediction):
    return True
  text = str(prediction).strip()
  return not text or text.lower() in ("nan", "none", "null")


def normalize_text(prediction: str) -> str:
  text = str(prediction)
  if "</think>" in text.lower():
    text = re.split(r"</think>", text, flags=re.IGNORECASE)[-1]
  text = _THINK.sub(" ", text)
  text = unicodedata.normalize("NFKC", text)
  text = text.replace("**", "").replace("__", "").replace("`", "")
  return re.sub(r"\s+", " ", text).strip()


def _simplify(text: str) -> str:
  return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9]+", " ", text.lower())).strip()


def _groups_letter(match: re.Match) -> str:
  return next(g for g in match.groups() if g).upper()


def _checked(letter: str, options: Mapping[str, str], rule: str) -> Extraction:
  if letter not in options:
    return Extraction(None, f"letter {letter} not among options {''.join(sorted(options))}")
  return Extraction(letter, rule)


def _yes_no_letter(text: str, options: Mapping[str, str]) -> Extraction | None:
  by_word = {_simplify(v): k for k, v in options.items()}
  if sorted(by_word) != ["no", "yes"]:
    return None
  simple = _simplify(text)
  first = simple.split(" ", 1)[0] if simple else ""
  if first in by_word:
    return Extraction(by_word[first], "yes/no word")
  words = set(simple.split())
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
  match = _LEADING.match(text)
  if match:
    letter = match.group(1)
    rest = _simplify(text[match.end() :])
    option_a = _simplify(options.get("A", ""))
    if letter != "A" or match.group(2) or (option_a and rest.startswith(option_a)):
      return _checked(letter, options, "leading letter")
  mentions = {_groups_letter(m) for m in _OPTION_MENTION.finditer(text)}
  if len(mentions) == 1:
    return _checked(mentions.pop(), options, "option mention")
  if len(mentions) > 1:
    return Extraction(None, f"ambiguous: mentions options {''.join(sorted(mentions))}")
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


def extract_option_vlmevalkit(prediction: Any) -> str | None:
  """The reference scorer's rules (VLMEvalKit ``MedqbenchMCQDataset``), for comparison.

  Exact letter; ``^X[.)\\s]``; ``answer is X``/``option X``; ``^X\\s*[-:]``; else the first
  isolated letter A-D of the upper-cased text. Returns None when nothing matches.
  """
  if is_missing_prediction(prediction):
    return None
  text = str(prediction).strip().upper()
  if text in ("A", "B", "C", "D"):
    return text
  for pattern, search in (
    (r"^([A-D])[.\)\s]", False),
    (r"(?:ANSWER\s+IS\s+|OPTION\s+)([A-D])(?:\s|$|[^A-Z])", True),
    (r"^([A-D])\s*[-:]", False),
    (r"(?:^|[^A-Z])([A-D])(?:[^A-Z]|$)", True),
  ):
    match = (re.search if search else re.match)(pattern, text)
    if match:
      return match.group(1)
  return None
