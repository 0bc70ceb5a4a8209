"""The MedQ-Engine loop end to end on small synthetic splits (heuristic model, offline oracle, a
thumbnail encoder): one iteration's outputs checked against independent recomputation, routing
at t > 0 against the paper's rule, review decisions from an edited file, bad input (unknown
review ids, an empty pool, an oracle that times out, a corrupt state) leaving the state as it
was.

Run as a script (`python tests/engine/test_engine_loop.py WORKDIR`) it runs the two-iteration
loop of test_engine_loop_resume.py in that workdir (honouring MEDQ_ENGINE_KILL_AFTER).
"""

from __future__ import annotations

import collections
import csv
import http.server
import json
import os
import sys
import threading
import time

import numpy as np
import pytest
from scipy import ndimage, special

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from configs import engine as engine_config
from medq_jax.bench import judge_offline, judge_types
from medq_jax.bench import prompts as bench_prompts
from medq_jax.bench.heuristic_model import HeuristicBenchModel
from medq_jax.engine import loop, loop_state, oracle, pool_embed, routing
from medq_jax.engine.pool_store import PoolError

TASKS = {"CT": "ldct", "MRI": "mri_noise", "PET": "pet_lowcount"}
SEVERITY = ("mild", "moderate", "severe")
NOISE = {"mild": 0.01, "moderate": 0.05, "severe": 0.12}
LABEL = {"mild": "good", "moderate": "usable", "severe": "reject"}


class ThumbnailEncoder:
  """Images [B, 32, 32] -> 4 x 4 block means minus their mean (16-d): a fast, fixed encoder."""

  name, dim = "thumbnail4", 16

  def __call__(self, images):
    images = np.asarray(images, np.float64)
    blocks = images.reshape(len(images), 4, 8, 4, 8).mean(axis=(2, 4)).reshape(len(images), 16)
    return (blocks - blocks.mean(axis=1, keepdims=True) + 1e-3).astype(np.float32)


def _pattern(rng):
  y, x = np.mgrid[0:32, 0:32] / 32.0
  field = sum(
    rng.uniform(0.2, 1.0)
    * np.sin(2 * np.pi * (rng.uniform(0.5, 3) * x + rng.uniform(0.5, 3) * y) + rng.uniform(0, 6.3))
    for _ in range(3)
  )
  field = ndimage.gaussian_filter(field, 1.0)
  return ((field - field.min()) / (np.ptp(field) + 1e-9) * 0.8 + 0.1).astype(np.float32)


def examples(prefix, n, seed, copy_of=None):
  """n synthetic examples; `copy_of`: an image placed as the last example's `high` image."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    modality = ("CT", "MRI", "PET")[i % 3]
    severity = SEVERITY[(i // 3) % 3]
    high = _pattern(rng)
    low = np.clip(high + rng.normal(0, NOISE[severity], high.shape), 0, 1).astype(np.float32)
    if copy_of is not None and i == n - 1:
      high = copy_of.copy()
    out.append(
      dict(
        id=f"{prefix}{i}",
        high=high,
        low=low,
        modality=modality,
        task=TASKS[modality],
        severity=severity,
        quality_label=LABEL[severity],
        anatomy="head",
        description=f"{severity} noise",
      )
    )
  return out


def splits():
  dev_examples = examples("dev", 9, 1)
  dev = loop.split_items(dev_examples)
  pool = loop.split_items(examples("pool", 24, 2, copy_of=dev_examples[0]["high"]))
  test = loop.split_items(examples("test", 3, 3))
  return dev, pool, test


def make_config(**overrides):
  config = engine_config.get_config()
  config.k_max = 6
  config.tau_sim = 0.0
  config.budget = 1000
  config.max_iterations = 1
  config.oracle.error_rate = 0.25
  config.review.auto_decision = "accept"
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def make_engine(workdir, config, oracle_=None, pool=None):
  dev, default_pool, test = splits()
  pool = default_pool if pool is None else pool
  encoder = ThumbnailEncoder()
  if oracle_ is None:
    oracle_ = oracle.OfflineOracle({i.id: i.answer for i in pool.items}, config.oracle.error_rate)

  def embed_pool(pool_dir):
    items = [pool_embed.Item(i, image, {"split": "pool"}) for i, image in pool.images.items()]
    pool_embed.embed(items, encoder, pool_dir, process_index=0)

  return loop.Engine(
    config,
    str(workdir),
    HeuristicBenchModel(),
    encoder,
    oracle_,
    dev,
    pool,
    test,
    embed_pool=embed_pool,
  )


def _oracle_log(workdir):
  with open(os.path.join(workdir, "oracle_calls.jsonl")) as handle:
    return [(row["id"], row["salt"]) for row in map(json.loads, handle)]


def test_one_iteration_end_to_end(tmp_path):
  config = make_config()
  engine = make_engine(tmp_path, config)
  state = engine.run()
  assert state.stopped.startswith("max_iterations") and state.phase == "finetune"
  record = state.records[0]
  assert set(record) == set(loop_state.PHASES)
  # Failures and Eq. 1 recomputed by counting from the saved failed ids.
  failed = set(record["evaluate"]["failed"])
  assert 0 < len(failed) < len(engine.dev.items)
  counts = collections.Counter()
  hits = collections.Counter()
  for item in engine.dev.items:
    for key in (
      f"modality={item.modality}",
      f"question_type={item.question_type}",
      f"degradation_level={item.degradation_level}",
    ):
      counts[key] += 1
      hits[key] += item.id in failed
  assert record["evaluate"]["errors"] == pytest.approx({k: hits[k] / counts[k] for k in counts})
  # Greedy dev accuracy recomputed from the model directly (MCQs), description scores from the
  # offline judge's four dimension scores (summed), the dev score over both.
  model = HeuristicBenchModel()
  mcqs = [i for i in engine.dev.items if i.options]
  greedy = {
    i.id: sorted(i.options)[
      int(
        np.argmax(
          model.option_log_likelihoods(
            engine.dev.images[i.image_id], i.question, [i.options[k] for k in sorted(i.options)]
          )
        )
      )
    ]
    == i.answer
    for i in mcqs
  }
  assert record["evaluate"]["accuracy"] == pytest.approx(np.mean(list(greedy.values())))
  descriptions = [i for i in engine.dev.items if not i.options]
  assert len(descriptions) == len(engine.dev.images) and len(mcqs) == 5 * len(descriptions)
  for item in descriptions:
    text = model.describe(engine.dev.images[item.image_id], item.question)
    overall = sum(
      judge_offline.score_request(judge_types.JudgeRequest("0", "noref", dim, 0, text, item.answer))
      for dim in bench_prompts.DIMENSIONS
    )
    assert record["evaluate"]["description_scores"][item.id] == overall
    greedy[item.id] = overall >= config.description_pass
    assert (item.id in failed) == (overall < config.description_pass)  # deterministic: R equal
  assert state.dev_accuracy == [pytest.approx(np.mean([greedy[i.id] for i in engine.dev.items]))]
  assert record["evaluate"]["score"] == state.dev_accuracy[0]
  # tau_sim 0 and a budget above the pool: every pool image is drawn once.
  selected = [image for image, _ in record["sample"]["selected"]]
  assert sorted(selected) == sorted(engine.pool.images)
  # Iteration 0: everything reviewed, auto-accepted -> the oracle's answers.
  samples = record["annotate"]["samples"]
  assert {s["route"] for s in samples} == {"review"}
  with open(tmp_path / "iter_0" / "review.csv", newline="") as handle:
    assert sorted(row["id"] for row in csv.DictReader(handle)) == sorted(s["id"] for s in samples)
  # The pool's copy of a dev image is dropped against dev; the rest of the accumulated labels
  # are the offline oracle's answers, wrong on about error_rate of them.
  assert record["dedup"]["against"]["pool23:high"][0] == "dev"
  assert record["dedup"]["overlap_after"] == 0
  with open(tmp_path / record["accumulate"]["file"]) as handle:
    rows = [json.loads(line) for line in handle]
  assert rows and not any(r["image_id"] == "pool23:high" for r in rows)
  kept = set(record["dedup"]["kept_images"])
  # near-duplicate description labels (the built-in descriptions are templated) are dropped
  # and recorded; every other kept sample is accumulated
  duplicates = {d["id"] for d in record["accumulate"]["description_duplicates"]}
  assert all(d.split("#")[0] in kept for d in duplicates)
  assert {r["id"] for r in rows} == {
    s["id"] for s in samples if s["image_id"] in kept and s["id"] not in duplicates
  }
  truth = {i.id: i.answer for i in engine.pool.items}
  answers = (
    oracle.OfflineOracle(truth, 0.25)
    .annotate([oracle.OracleRequest(i.id, i.question, None, i.options) for i in engine.pool.items])
    .answers
  )
  assert all(r["answer"] == answers[r["id"]].text for r in rows)
  wrong = np.mean([r["answer"] != truth[r["id"]] for r in rows])
  assert 0.1 < wrong < 0.4
  assert state.accumulated == [r["id"] for r in rows]
  # Each sampled question asked once; statistics files agree with the state.
  log = _oracle_log(tmp_path)
  assert sorted(i for i, _ in log) == sorted(s["id"] for s in samples)
  with open(tmp_path / "stats.json") as handle:
    stats = json.load(handle)
  assert stats[0]["review_rate"] == 1.0 and stats[0]["accept_rate"] == 1.0
  assert stats[0]["selected"] == len(engine.pool.images)
  assert stats[0]["accumulated"] == len(rows)
  assert stats[0]["deduplicated"] == len(record["dedup"]["within"]) + len(
    record["dedup"]["against"]
  )


def test_routes_after_iteration_zero_follow_the_rule(tmp_path):
  config = make_config(budget=10, max_iterations=2, patience=5, tau_h=0.5)
  engine = make_engine(tmp_path, config)
  state = engine.run()
  assert len(state.records) == 2 and state.phase == "finetune"
  first = {s["image_id"] for s in state.records[0]["annotate"]["samples"]}
  second = state.records[1]["annotate"]["samples"]
  assert second and not first & {s["image_id"] for s in second}  # no image annotated twice
  items = {i.id: i for i in engine.pool.items}
  model = HeuristicBenchModel()
  for s in second:
    item = items[s["id"]]
    if not item.options:  # a description: the heuristic model gives no token log-probs
      image = engine.pool.images[item.image_id]
      assert s["self_answer"] == model.describe(image, item.question)
      assert s["entropy"] is None and s["route"] == "review"
      if s["oracle_answer"] is not None:
        assert s["delta"] == pytest.approx(routing.token_f1(s["self_answer"], s["oracle_answer"]))
      continue
    letters = sorted(item.options)
    logp = special.log_softmax(
      model.option_log_likelihoods(
        engine.pool.images[item.image_id], item.question, [item.options[k] for k in letters]
      )
    )
    best = int(np.argmax(logp))
    assert s["self_answer"] == letters[best]
    assert s["entropy"] == pytest.approx(-logp[best], rel=1e-5)
    assert s["delta"] == float(s["oracle_answer"] == letters[best])
    if s["entropy"] >= 0.5:
      expected = "adopt_oracle"
    elif s["delta"] < 0.5:
      expected = "review"
    else:
      expected = "adopt_self"
    assert s["route"] == expected
  assert {s["route"] for s in second} >= {"adopt_oracle", "adopt_self"}


def test_review_decisions_from_the_edited_file(tmp_path):
  config = make_config(**{"review.auto_decision": "", "budget": 4})
  engine = make_engine(tmp_path, config)
  state = engine.run()
  assert engine.waiting and "review.csv" in engine.waiting
  assert state.phase == "review_export" and not state.stopped
  path = tmp_path / "iter_0" / "review.csv"
  with open(path, newline="") as handle:
    rows = list(csv.DictReader(handle))
  fields = list(rows[0])
  # Bad input: an unknown id -> one error naming the file; the state file is untouched.
  before = (tmp_path / "state.json").read_bytes()
  bad = [*rows, {**rows[0], "id": "nope#q0", "decision": "Accept"}]
  _write_csv(path, fields, bad)
  with pytest.raises(ValueError, match=r"review\.csv:\d+: unknown id 'nope#q0'"):
    make_engine(tmp_path, config).run()
  assert (tmp_path / "state.json").read_bytes() == before
  # Edit the first, reject the second, accept the rest.
  rows[0].update(decision="Edit", edited_text="C")
  rows[1].update(decision="reject")
  for row in rows[2:]:
    row["decision"] = "Accept"
  _write_csv(path, fields, rows)
  state = make_engine(tmp_path, config).run()
  assert state.stopped.startswith("max_iterations")
  decisions = state.records[0]["review"]["decisions"]
  assert decisions[rows[0]["id"]] == {"decision": "edit", "edited_text": "C"}
  labels = {}
  with open(tmp_path / state.records[0]["accumulate"]["file"]) as handle:
    labels = {r["id"]: r["answer"] for r in map(json.loads, handle)}
  assert labels[rows[0]["id"]] == "C" and rows[1]["id"] not in labels
  for row in rows[2:]:
    assert labels.get(row["id"], row["oracle_answer"]) == row["oracle_answer"]
  with open(tmp_path / "stats.json") as handle:
    stats = json.load(handle)[0]
  n = len(rows)
  assert stats["edit_rate"] == pytest.approx(1 / n) and stats["reject_rate"] == pytest.approx(1 / n)


def _write_csv(path, fields, rows):
  with open(path, "w", newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


def test_empty_pool_is_one_error_and_the_state_is_kept(tmp_path):
  config = make_config()
  empty = loop.Split({}, [])
  engine = make_engine(tmp_path, config, pool=empty)
  with pytest.raises(PoolError, match="pool"):
    engine.run()
  state = loop_state.load(str(tmp_path / "state.json"))
  assert state.phase == "cluster" and "retrieve" not in state.records[0]


class _SlowServer(http.server.ThreadingHTTPServer):
  daemon_threads, block_on_close = True, False


class _Handler(http.server.BaseHTTPRequestHandler):
  """'How severe' questions -> 1 s (past the client's timeout); other MCQs -> 'A',
  descriptions -> a short description."""

  def log_message(self, *args):
    del args

  def do_POST(self):  # pylint: disable=invalid-name
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    text = next(p["text"] for p in body["messages"][-1]["content"] if p["type"] == "text")
    if "How severe" in text:
      time.sleep(1.0)
    reply = "A" if oracle.MCQ_INSTRUCTION in text else "Mild noise. Overall, the quality is usable."
    data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
    try:
      self.send_response(200)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
      pass


def test_oracle_timeouts_are_counted_and_skipped(tmp_path):
  from data_pipeline import chat_client

  server = _SlowServer(("127.0.0.1", 0), _Handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    chat = chat_client.ChatConfig.from_env(
      "oracle",
      environ={
        "OPENAI_BASE_URL": f"http://127.0.0.1:{server.server_address[1]}/v1",
        "MEDQ_ORACLE_MODEL": "local",
      },
      timeout_s=0.3,
      max_retries=0,
    )
    client = chat_client.ChatClient(chat, chat_client.ReplyCache(str(tmp_path / "c.sqlite")))
    config = make_config(budget=3, **{"oracle.kind": "api"})
    state = make_engine(tmp_path / "run", config, oracle.ChatOracle(client, 4)).run()
  finally:
    server.shutdown()
    server.server_close()
  record = state.records[0]
  slow = record["annotate"]["samples"]
  timed_out = [s for s in slow if s["oracle_status"] == "failed"]
  questions = {i.id: i.question for i in make_engine(tmp_path / "x", config).pool.items}
  assert timed_out and all("How severe" in questions[s["id"]] for s in timed_out)
  assert record["annotate"]["oracle_counts"]["failed"] == len(timed_out)
  assert record["annotate"]["oracle_counts"]["ok"] == len(slow) - len(timed_out)
  # Accepted without an oracle answer: nothing to learn from, not accumulated.
  assert not set(state.accumulated) & {s["id"] for s in timed_out}
  assert set(state.accumulated) and "chat: local" in record["annotate"]["oracle_source"]


def test_corrupt_or_unknown_state_is_one_error_naming_the_file(tmp_path):
  path = tmp_path / "state.json"
  path.write_text('{"schema": "medq-engine-state", "version": 1, "iteration": ')
  with pytest.raises(loop_state.StateError, match=r"state\.json: not a valid JSON"):
    make_engine(tmp_path, make_config()).run()
  path.write_text(json.dumps({"schema": "medq-engine-state", "version": 99}))
  with pytest.raises(loop_state.StateError, match=r"state\.json: state version 99"):
    loop_state.load(str(path))
  path.write_text(json.dumps({"schema": "other"}))
  with pytest.raises(loop_state.StateError, match="not a medq-engine-state file"):
    loop_state.load(str(path))
  state = loop_state.LoopState(iteration=2, phase="dedup", accumulated=["a"])
  loop_state.save(state, str(path))
  assert loop_state.load(str(path)) == state
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp_")]


def test_resume_with_other_settings_is_refused(tmp_path):
  make_engine(tmp_path, make_config(budget=2)).run()
  with pytest.raises(loop_state.StateError, match=r"other settings \['budget'\]"):
    make_engine(tmp_path, make_config(budget=3)).run()


def resume_config():
  """The two-iteration loop of the resume test (tests/engine/test_engine_loop_resume.py)."""
  return make_config(budget=6, max_iterations=2, patience=5)


if __name__ == "__main__":
  make_engine(sys.argv[1], resume_config()).run()


def test_finetune_without_a_step_halts_and_a_rerun_goes_on(tmp_path):
  engine = make_engine(tmp_path, make_config(budget=3, finetune="trainer"))
  state = engine.run()
  assert "built without a fine-tuning step" in engine.halted and not state.stopped
  assert state.phase == "accumulate" and state.accumulated
  engine = make_engine(tmp_path, make_config(budget=3, max_iterations=2, patience=5))
  state = engine.run()
  assert not engine.halted and len(state.records) == 2
  assert state.stopped == "max_iterations=2 reached"
  assert len(state.accumulated) == len(set(state.accumulated)) > 0
