"""The loop's description near-duplicate filter (Evolve, QA): new description labels whose TF-IDF
cosine to an earlier one (earlier iterations' data or earlier in this one) reaches the threshold
are dropped and recorded; multiple-choice rows and earlier data are untouched."""

import json
import types

import ml_collections
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics.pairwise import cosine_similarity

from medq_jax.engine import loop, loop_state

TEXT_A = "MR image of the brain. Severe noise obscures grey-white matter boundaries; reject."
TEXT_B = "CT of the chest. Mild streak artefacts; fine lung detail is preserved; usable."


def _row(id_, answer, question_type=loop.DESCRIPTION):
  return {"id": id_, "answer": answer, "question_type": question_type, "question": "q"}


def test_near_duplicate_descriptions_are_dropped_and_recorded(tmp_path):
  earlier = tmp_path / "iter_0" / "data.jsonl"
  earlier.parent.mkdir()
  earlier.write_text(json.dumps(_row("old", TEXT_A)) + "\n")
  state = loop_state.LoopState(config={})
  state.data_files = ["iter_0/data.jsonl"]
  engine = types.SimpleNamespace(
    workdir=str(tmp_path),
    config=ml_collections.ConfigDict({"description_dedup_threshold": 0.9}),
  )
  rows = [
    _row("a_again", TEXT_A + " "),  # the earlier description, re-annotated: cosine 1
    _row("b", TEXT_B),
    _row("b_again", TEXT_B.replace("usable", "usable")),  # duplicate within this iteration
    _row("mcq", TEXT_A, question_type="What"),  # not a description: never filtered
  ]
  kept, duplicates = loop.Engine._drop_near_duplicate_descriptions(engine, state, rows)
  assert [r["id"] for r in kept] == ["b", "mcq"]
  assert [(d["id"], d["duplicate_of"]) for d in duplicates] == [
    ("a_again", "old"),
    ("b_again", "b"),
  ]
  # the recorded similarity is scikit-learn's TF-IDF cosine of the two texts
  matrix = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit_transform(
    [TEXT_A, TEXT_A + " ", TEXT_B, TEXT_B]
  )
  assert abs(duplicates[0]["similarity"] - cosine_similarity(matrix[0], matrix[1])[0, 0]) < 1e-6
  # a distinct description passes at the same threshold
  kept, duplicates = loop.Engine._drop_near_duplicate_descriptions(
    engine, state, [_row("b", TEXT_B)]
  )
  assert [r["id"] for r in kept] == ["b"] and duplicates == []
