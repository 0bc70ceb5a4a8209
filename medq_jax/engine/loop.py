"""The MedQ-Engine closed loop (§2): evaluate -> cluster -> retrieve -> sample -> annotate ->
review -> dedup -> accumulate -> fine-tune, iterated until the dev score plateaus.

Items are MedQ-Bench perception MCQs and description items built from the built-in dataset's
images (`bench.generator.perception_rows`: five MCQs per image, and one no-reference
description item, with modality, question type and degradation level as the capability
metadata). The model is any `BenchModel` (the heuristic one or ours): an MCQ's option
distribution is the softmax of its option log-likelihoods; the R evaluation runs sample from it
at `temperature`, the self answer is the greedy option, and the trajectory entropy (Eq. 3) of
that one-option answer is its negative log-probability. A description is the model's
`describe` text, scored by the MedQ-Bench reasoning scorer with the configured judge; its
entropy is the mean token negative log-likelihood of the text under our model.

Each phase reads the previous phases' outputs from the state, does its work, and saves the
state (`loop_state`): a run killed anywhere resumes at the first phase not saved. The oracle is
called only in `annotate`, whose answers are saved with it; a kill inside `annotate` repeats
it (the chat client's reply cache then answers without new requests). Review decisions are read
from the exported `review.csv`/`review.jsonl` (or decided by `auto_decision`) and saved.
Every phase's error leaves the saved state as it was.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from data_pipeline import atomic_files
from medq_jax.bench import generator, prompts, reasoning
from medq_jax.bench.schema import ReasoningItem
from medq_jax.engine import (
  clustering,
  dedup,
  failures,
  loop_state,
  retrieval,
  review_queue,
  routing,
  sampling,
)
from medq_jax.engine import (
  oracle as oracle_lib,
)
from medq_jax.engine.pool_store import PoolStore

KILL_ENV = "MEDQ_ENGINE_KILL_AFTER"  # "<iteration>:<phase>": SIGKILL after saving it (tests)
STATS_FIELDS = (
  "iteration",
  "dev_score",
  "dev_accuracy",
  "dev_sampled_accuracy",
  "dev_description_score",
  "failures",
  "clusters",
  "retrieved",
  "selected",
  "samples",
  "oracle_ok",
  "oracle_invalid",
  "oracle_failed",
  "review_rate",
  "adopt_oracle_rate",
  "adopt_self_rate",
  "accept_rate",
  "edit_rate",
  "reject_rate",
  "deduplicated",
  "accumulated",
  "finetune_steps",
  "finetune_loss",
  "decisions_source",
)


class WaitingForReview(Exception):
  """The review queue has undecided samples; the message names the file to fill in."""


DESCRIPTION = "Description"  # the question type (capability) of description items


@dataclasses.dataclass(frozen=True)
class Item:
  """One item about one image (`image_id` = `<example id>:<high|low>`): a perception MCQ
  (`options` {letter: text}, `answer` a letter) or a description (`options` empty,
  `question_type` "Description", `answer` the golden description)."""

  id: str
  image_id: str
  question: str
  options: dict[str, str]
  answer: str
  modality: str
  question_type: str
  degradation_level: str

  @property
  def is_description(self) -> bool:
    return not self.options


@dataclasses.dataclass
class Split:
  """A split's images {image_id: float [H, W]}, their items, and each example's other fields
  {example id: {field: value}} (what a fine-tuning example is rebuilt from)."""

  images: dict[str, np.ndarray]
  items: list[Item]
  examples: dict[str, dict] = dataclasses.field(default_factory=dict)


def split_items(examples, seed: int = 0, max_images: int = 0, descriptions: bool = True) -> Split:
  """Examples of the precomputed dataset -> their images, five perception MCQs per image and,
  with `descriptions`, one description item per image (MedQ-Bench's no-reference item: the
  example's golden description for `low`, the templated clean one for `high`)."""
  images, items, fields = {}, [], {}
  for example in examples:
    fields[example["id"]] = {k: v for k, v in example.items() if k not in ("high", "low")}
    for key, level in (("high", "none"), ("low", example["severity"])):
      if max_images and len(images) >= max_images:
        return Split(images, items, fields)
      image_id = f"{example['id']}:{key}"
      images[image_id] = np.asarray(example[key], np.float32)
      for q, row in enumerate(generator.perception_rows(example, level, seed)):
        options = {letter: row[letter] for letter in "ABCD" if row[letter]}
        items.append(
          Item(
            f"{image_id}#q{q}",
            image_id,
            row["question"],
            options,
            row["answer"],
            row["modality"],
            row["question_type"],
            row["degradation_level"],
          )
        )
      if descriptions:
        reference = example["description"] if key == "low" else generator.clean_description(example)
        items.append(
          Item(
            f"{image_id}#d",
            image_id,
            prompts.NOREF_REASONING_PROMPT,
            {},
            reference,
            example["modality"],
            DESCRIPTION,
            level,
          )
        )
  return Split(images, items, fields)


def load_split(
  data_config, split: str, seed: int = 0, max_images: int = 0, descriptions: bool = True
) -> Split:
  """One split of the precomputed dataset, read once with `data_pipeline.loader.one_pass`."""
  from data_pipeline import loader  # pylint: disable=g-import-not-at-top

  def examples():
    for batch in loader.one_pass(data_config, split, batch_size=16):
      for i in range(len(batch["id"])):
        yield {
          key: (str(value[i]) if value.dtype.kind in "US" else value[i])
          for key, value in batch.items()
        }

  return split_items(examples(), seed, max_images, descriptions)


def option_log_probs(model, image: np.ndarray, item: Item) -> np.ndarray:
  """log P(option | image, question), normalised over the item's options (float64, finite)."""
  letters = sorted(item.options)
  scores = np.asarray(
    model.option_log_likelihoods(image, item.question, [item.options[k] for k in letters]),
    np.float64,
  ).reshape(-1)
  if scores.shape != (len(letters),) or not np.isfinite(scores).all():
    raise ValueError(f"model: item {item.id!r}: expected {len(letters)} finite log-likelihoods")
  return scores - np.logaddexp.reduce(scores)


def description_entropy(model, image: np.ndarray, item: Item, text: str) -> float:
  """Eq. 3 for a generated description: minus the mean log-probability of its tokens (and the
  end token) under the model, from `option_log_likelihoods` with the text as the one option.
  NaN when the model has no tokenizer (the heuristic model): routing then sends it to review."""
  encode = getattr(getattr(model, "tokenizer", None), "encode", None)
  if encode is None or not text:
    return float("nan")
  total = float(
    np.asarray(model.option_log_likelihoods(image, item.question, [text])).reshape(-1)[0]
  )
  tokens = len(encode(text, add_special_tokens=False)) + 1  # its tokens and <|im_end|>
  return float(routing.entropies([[min(total / tokens, 0.0)]])[0])


def describe_runs(model, image: np.ndarray, prompt: str, runs: int, seed: int) -> list[str]:
  """R descriptions: `model.describe_samples(image, prompt, runs, seed)` when the model samples
  descriptions, else its one deterministic description R times."""
  sampler = getattr(model, "describe_samples", None)
  if sampler is not None:
    return [str(t) for t in sampler(image, prompt, runs, seed)]
  return [str(model.describe(image, prompt))] * runs


def judge_descriptions(judge, items: Sequence[Item], texts: Sequence[str]) -> list[float]:
  """MedQ-Bench no-reference scores (Overall, the sum of the four dimension means, 0-8) of
  `texts[i]` as the description of `items[i]`, through the bench's reasoning scorer and
  `judge`. A dimension the judge could not score counts 0."""
  bench_items = [
    ReasoningItem(str(n), "noref", item.answer, item.question, item.modality)
    for n, item in enumerate(items)
  ]
  predictions = {str(n): text for n, text in enumerate(texts)}
  requests, _ = reasoning.build_requests(bench_items, predictions)
  scores, _ = reasoning.collect_item_scores(bench_items, judge.judge_all(requests))
  return [float(sum(v or 0.0 for v in s.scores.values())) for s in scores]


def _capability_keys(item: Item, cross: bool) -> list[str]:
  values = [f"{f}={getattr(item, f)}" for f in failures.CAPABILITY_FIELDS]
  return ["|".join(values)] if cross else values


def _questions_for(pool_items: Mapping[str, Item], image_id: str, capability: str) -> list[Item]:
  """The questions asked about a pool image drawn for `capability`: those of its question type
  when the capability names one, else all of them (modality and degradation level describe the
  image, which retrieval chose by similarity; a real pool's images carry no such labels)."""
  ids = [f"{image_id}#q{q}" for q in range(5)] + [f"{image_id}#d"]
  items = [pool_items[i] for i in ids if i in pool_items]
  wanted = dict(part.split("=", 1) for part in capability.split("|")).get("question_type")
  return [i for i in items if wanted is None or i.question_type == wanted]


def _meta(item: Item) -> dict[str, str]:
  return {f: getattr(item, f) for f in failures.CAPABILITY_FIELDS}


def _png(image: np.ndarray, path: str) -> None:
  buffer = io.BytesIO()
  Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(buffer, "PNG")
  if not os.path.exists(path):
    atomic_files.atomic_write_bytes(path, buffer.getvalue())


class LoggedOracle:
  """An oracle that appends every requested id to a JSONL log (fsynced) before asking: an
  audit of what was asked, and how the tests check that a resume asks nothing twice."""

  def __init__(self, oracle, log_path: str):
    self.oracle, self.log_path = oracle, log_path

  def annotate(self, requests, salt: str = ""):
    os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
    with open(self.log_path, "a", encoding="utf-8") as handle:
      for request in requests:
        handle.write(json.dumps({"id": request.id, "salt": salt}) + "\n")
      handle.flush()
      os.fsync(handle.fileno())
    return self.oracle.annotate(requests, salt=salt)


class Engine:
  """The loop over one workdir. `model`: a BenchModel; `encoder`: images [B, H, W] -> [B, D]
  (`pool_embed.Encoder`, embeds the pool and the dev failures); `oracle`: `annotate(requests,
  salt)` (`oracle.OfflineOracle` / `ChatOracle`); dev / pool / test: `Split`s.

  finetune(state, iteration_dir) -> {"checkpoint": run dir relative to the workdir, ...}: the
  fine-tuning step (`engine.finetune.TrainerFinetune`); load_model(run dir) -> BenchModel: how
  the model of the latest fine-tuned checkpoint is loaded for the next evaluation; judge: the
  MedQ-Bench reasoning judge scoring description items (default: the offline rule judge)."""

  def __init__(
    self,
    config,
    workdir: str,
    model,
    encoder,
    oracle,
    dev: Split,
    pool: Split,
    test: Split,
    embed_pool: Callable[[str], Any] | None = None,
    finetune: Callable[[loop_state.LoopState, str], dict] | None = None,
    judge=None,
    load_model: Callable[[str], Any] | None = None,
  ):
    self.config, self.workdir, self.model, self.encoder = config, workdir, model, encoder
    self.base_model, self.load_model, self._model_checkpoint = model, load_model, ""
    if judge is None:
      from medq_jax.bench.judge_offline import OfflineJudge  # pylint: disable=g-import-not-at-top

      judge = OfflineJudge()
    self.judge = judge
    self.oracle = LoggedOracle(oracle, os.path.join(workdir, "oracle_calls.jsonl"))
    self.dev, self.pool, self.test = dev, pool, test
    self.pool_items = {item.id: item for item in pool.items}
    self.embed_pool = embed_pool
    self.finetune_fn = finetune
    self.state_path = os.path.join(workdir, "state.json")
    self.pool_dir = os.path.join(workdir, "pool")
    self.waiting = ""  # set by run() when it stopped at an undecided review queue
    self.halted = ""  # set by run() when finetune="trainer" has no fine-tuning step to run

  # --- state -------------------------------------------------------------------------------
  def _save(self, state: loop_state.LoopState, phase: str | None = None) -> None:
    if phase is not None:
      state.phase = phase
    loop_state.save(state, self.state_path)
    kill = os.environ.get(KILL_ENV, "")
    if phase is not None and kill == f"{state.iteration}:{phase}":
      os.kill(os.getpid(), signal.SIGKILL)

  def _iter_dir(self, state) -> str:
    return os.path.join(self.workdir, f"iter_{state.iteration}")

  def open_state(self) -> loop_state.LoopState:
    state = loop_state.load(self.state_path)
    fingerprint = _fingerprint(self.config)
    if state is None:
      os.makedirs(self.workdir, exist_ok=True)
      state = loop_state.LoopState(config=fingerprint)
      self._save(state)
    elif state.config != fingerprint:
      changed = sorted(
        k for k in set(fingerprint) | set(state.config) if fingerprint.get(k) != state.config.get(k)
      )
      raise loop_state.StateError(
        f"{self.state_path}: the run was started with other settings {changed} "
        "(resume with the same config, or use a new workdir)"
      )
    return state

  def model_for(self, state):
    """The model of the latest fine-tuned checkpoint in `state` (loaded once), else the base."""
    checkpoint = state.checkpoints[-1] if state.checkpoints else ""
    if checkpoint != self._model_checkpoint:
      if self.load_model is None:
        raise ValueError(
          f"{self.state_path}: the run holds fine-tuned checkpoint {checkpoint!r}, but no "
          "load_model was given to load it"
        )
      self.model = (
        self.load_model(os.path.join(self.workdir, checkpoint)) if checkpoint else (self.base_model)
      )
      self._model_checkpoint = checkpoint
    return self.model

  # --- phases ------------------------------------------------------------------------------
  def evaluate(self, state) -> dict:
    """R sampled runs on dev -> failures (error rate > gamma) and e_k (Eq. 1). An MCQ run is
    correct when its sampled option is the answer; a description run when the judge's
    MedQ-Bench Overall (0-8) is at least `description_pass`. The dev score (the plateau test's)
    is the share of dev items the greedy answer / description gets right."""
    c = self.config
    model = self.model_for(state)
    rng = np.random.default_rng([c.seed, state.iteration, 1])
    items = self.dev.items
    correct = np.zeros((c.runs, len(items)), bool)
    greedy, answers = np.zeros(len(items), bool), {}
    described: list[tuple[int, list[str]]] = []
    for n, item in enumerate(items):
      image = self.dev.images[item.image_id]
      if item.is_description:
        seed = int(rng.integers(2**31))
        texts = describe_runs(model, image, item.question, c.runs, seed)
        # the dev score's description is the greedy one; the R runs are sampled
        described.append((n, [str(model.describe(image, item.question)), *texts]))
        continue
      logp = option_log_probs(model, image, item)
      letters = sorted(item.options)
      probs = np.exp(logp / c.temperature - np.logaddexp.reduce(logp / c.temperature))
      draws = rng.choice(len(letters), size=c.runs, p=probs)
      correct[:, n] = [letters[d] == item.answer for d in draws]
      answers[item.id] = letters[int(np.argmax(logp))]
      greedy[n] = answers[item.id] == item.answer
    description_scores = {}
    if described:
      flat_items = [items[n] for n, texts in described for _ in texts]
      scores = judge_descriptions(self.judge, flat_items, [t for _, ts in described for t in ts])
      at = 0
      for n, texts in described:
        row = scores[at : at + len(texts)]
        at += len(texts)
        description_scores[items[n].id] = row[0]
        answers[items[n].id] = texts[0]
        greedy[n] = row[0] >= c.description_pass
        correct[:, n] = np.asarray(row[1:]) >= c.description_pass
    result = failures.evaluate(
      correct, [_meta(i) for i in items], c.gamma, cross=c.cross_capabilities
    )
    mcq = [n for n, i in enumerate(items) if not i.is_description]
    return {
      "score": float(greedy.mean()),
      "accuracy": float(greedy[mcq].mean()) if mcq else None,
      "sampled_accuracy": float(correct[:, mcq].mean()) if mcq else None,
      "description_score": (
        float(np.mean(list(description_scores.values()))) if description_scores else None
      ),
      "description_scores": description_scores,
      "failed": [i.id for i, f in zip(items, result.failed) if f],
      "answers": answers,
      "errors": result.errors,
      "checkpoint": state.checkpoints[-1] if state.checkpoints else "",
    }

  def cluster(self, state, evaluation: dict) -> dict:
    """Failure features (image + question-answer text) -> Ward clusters -> anchors."""
    c = self.config
    by_id = {i.id: i for i in self.dev.items}
    failed = [by_id[i] for i in evaluation["failed"]]
    if not failed:
      return {"n_clusters": 0, "labels": [], "anchors": "", "note": "no persistent failures"}
    visual = self.encoder(np.stack([self.dev.images[i.image_id] for i in failed]))
    texts = [
      f"{i.question} {i.options.get(evaluation['answers'][i.id], '')}".strip()
      if not i.is_description
      else f"{i.question_type} {evaluation['answers'][i.id]}"
      for i in failed
    ]
    text = clustering.text_embedding(texts, dim=c.text_dim, seed=c.seed)
    features = clustering.failure_features(visual, text, c.visual_weight, c.text_weight)
    result = clustering.cluster(features, visual.shape[1], (c.k_min, c.k_max), seed=c.seed)
    path = os.path.join(self._iter_dir(state), "anchors.npy")
    buffer = io.BytesIO()
    np.save(buffer, result.anchors.astype(np.float32))
    atomic_files.atomic_write_bytes(path, buffer.getvalue())
    return {
      "n_clusters": int(result.n_clusters),
      "labels": result.labels.tolist(),
      "silhouettes": {str(k): v for k, v in result.silhouettes.items()},
      "anchors": os.path.relpath(path, self.workdir),
      "note": result.note,
    }

  def retrieve(self, state, evaluation: dict, clusters: dict) -> dict:
    """Each anchor's pool hits (cosine > tau_sim, top-k) become candidates of the capabilities
    its cluster's failures have; ids already annotated in earlier iterations are left out."""
    c = self.config
    if not clusters["n_clusters"]:
      return {"candidates": {}, "hits": 0}
    anchors = np.load(os.path.join(self.workdir, clusters["anchors"]))
    found = retrieval.retrieve(anchors, PoolStore(self.pool_dir), k=c.top_k, tau_sim=c.tau_sim)
    by_id = {i.id: i for i in self.dev.items}
    seen = {s["image_id"] for r in state.records[: state.iteration] for s in _samples(r)}
    candidates: dict[str, list[str]] = {}
    for label, item_id in zip(clusters["labels"], evaluation["failed"]):
      for capability in _capability_keys(by_id[item_id], c.cross_capabilities):
        ids = candidates.setdefault(capability, [])
        ids.extend(h.id for h in found.hits[label] if h.id not in seen and h.id not in ids)
    return {
      "candidates": {k: v for k, v in sorted(candidates.items()) if v},
      "hits": int(sum(len(h) for h in found.hits)),
    }

  def sample(self, state, evaluation: dict, retrieved: dict) -> dict:
    """Adaptive sampling: budget B over capabilities by w_k ∝ e_k^alpha, no id twice."""
    c = self.config
    drawn = sampling.sample(
      retrieved["candidates"],
      evaluation["errors"],
      c.alpha,
      c.budget,
      seed=c.seed * 1000 + state.iteration,
    )
    return {"selected": [list(pair) for pair in drawn.selected], "note": drawn.note}

  def annotate(self, state, sampled: dict) -> dict:
    """Self answers and entropies from the model, oracle answers, agreement and routes."""
    c = self.config
    chosen = []
    for image_id, capability in sampled["selected"]:
      chosen.extend(_questions_for(self.pool_items, image_id, capability))
    chosen = list({i.id: i for i in chosen}.values())
    requests = [
      oracle_lib.OracleRequest(i.id, i.question, self.pool.images[i.image_id], i.options)
      for i in chosen
    ]
    result = self.oracle.annotate(requests, salt=f"iteration={state.iteration}")
    model = self.model_for(state)
    samples, entropy, delta = [], [], []
    for item in chosen:
      image = self.pool.images[item.image_id]
      answer = result.answers[item.id]
      if item.is_description:
        self_answer = str(model.describe(image, item.question))
        h = description_entropy(model, image, item, self_answer)
        d = routing.agreement(self_answer, answer.text, None)
      else:
        logp = option_log_probs(model, image, item)
        letters = sorted(item.options)
        best = int(np.argmax(logp))
        self_answer = letters[best]
        h = float(routing.entropies([[min(logp[best], 0.0)]])[0])
        d = routing.agreement(self_answer, answer.text, item.options)
      entropy.append(h)
      delta.append(d)
      samples.append(
        {
          "id": item.id,
          "image_id": item.image_id,
          "self_answer": self_answer,
          "entropy": None if np.isnan(h) else h,
          "oracle_answer": answer.text,
          "oracle_status": answer.status,
          "oracle_reason": answer.reason,
          "delta": d,
        }
      )
    routes = routing.route_all(entropy, delta, state.iteration, c.tau_h, c.tau_ann)
    for sample, route in zip(samples, routes):
      sample["route"] = str(route)
    return {
      "samples": samples,
      "oracle_counts": result.counts,
      "oracle_source": result.source,
      "oracle_offline": result.offline,
    }

  def review_export(self, state, annotated: dict) -> dict:
    """The review queue (JSONL and CSV, images as PNG) of the samples routed to review."""
    directory = self._iter_dir(state)
    queue = []
    for s in annotated["samples"]:
      if s["route"] != routing.Route.REVIEW:
        continue
      item = self.pool_items[s["id"]]
      image_path = os.path.join(directory, "images", item.image_id.replace("/", "_") + ".png")
      _png(self.pool.images[item.image_id], image_path)
      question = oracle_lib.prompt(
        oracle_lib.OracleRequest(item.id, item.question, None, item.options)
      )
      queue.append(
        review_queue.ReviewItem(
          item.id,
          os.path.abspath(image_path),
          question,
          s["self_answer"] or "",
          s["oracle_answer"] or "",
        )
      )
    paths = {"jsonl": os.path.join(directory, "review.jsonl")}
    paths["csv"] = os.path.join(directory, "review.csv")
    review_queue.export_jsonl(queue, paths["jsonl"])
    review_queue.export_csv(queue, paths["csv"])
    return {
      "ids": [q.id for q in queue],
      "files": {k: os.path.relpath(v, self.workdir) for k, v in paths.items()},
    }

  def review(self, state, exported: dict) -> dict:
    """Decisions for every queued sample: `auto_decision`, else imported from the edited CSV
    (or JSONL); WaitingForReview while any is pending."""
    ids = exported["ids"]
    auto = self.config.review.auto_decision.strip().lower()
    if auto:
      if auto not in ("accept", "reject"):
        raise ValueError(
          f"config.review.auto_decision: expected '', accept or reject, got {auto!r}"
        )
      return {
        "decisions": {i: {"decision": auto, "edited_text": ""} for i in ids},
        "source": f"auto:{auto}",
      }
    decided: dict[str, review_queue.Decision] = {}
    for kind in ("csv", "jsonl"):
      path = os.path.join(self.workdir, exported["files"][kind])
      new = review_queue.import_decisions(path, ids)
      if new and decided:
        raise ValueError(f"{path}: decisions in both review.csv and review.jsonl; fill in one")
      decided = review_queue.merge(decided, new)
    pending = [i for i in ids if i not in decided]
    if pending:
      raise WaitingForReview(
        f"{len(pending)} of {len(ids)} reviewed samples undecided: fill the decision column "
        f"(Accept / Edit / Reject) of {os.path.join(self.workdir, exported['files']['csv'])} "
        "and rerun (or set config.review.auto_decision)"
      )
    return {
      "decisions": {
        i: {"decision": d.decision, "edited_text": d.edited_text}
        for i, d in sorted(decided.items())
      },
      "source": "file",
    }

  def dedup(self, state, annotated: dict, reviewed: dict) -> dict:
    """pHash dedup of the new images within themselves and against dev and test."""
    decisions = reviewed["decisions"]
    keep_images = []
    for s in annotated["samples"]:
      rejected = decisions.get(s["id"], {}).get("decision") == "reject"
      if not rejected and s["image_id"] not in keep_images:
        keep_images.append(s["image_id"])
    hashes = {i: dedup.phash(self.pool.images[i]) for i in keep_images}
    refs = {
      "dev": {i: dedup.phash(im) for i, im in self.dev.images.items()},
      "test": {i: dedup.phash(im) for i, im in self.test.images.items()},
    }
    earlier = {i: dedup.phash(self.pool.images[i.split("#")[0]]) for i in state.accumulated}
    if earlier:
      refs["accumulated"] = earlier
    result = dedup.dedup_images(hashes, refs, self.config.dedup_max_distance)
    return {
      "kept_images": result.kept,
      "within": result.within,
      "against": {k: list(v) for k, v in result.against.items()},
      "overlap_before": result.overlap_before,
      "overlap_after": result.overlap_after,
    }

  def accumulate(self, state, annotated: dict, reviewed: dict, deduped: dict) -> dict:
    """Final labels (route, or the reviewer's decision) of the kept samples -> data file."""
    kept_images = set(deduped["kept_images"])
    rows = []
    for s in annotated["samples"]:
      if s["image_id"] not in kept_images:
        continue
      item = self.pool_items[s["id"]]
      if s["route"] == routing.Route.ADOPT_ORACLE:
        label, source = s["oracle_answer"], "oracle"
      elif s["route"] == routing.Route.ADOPT_SELF:
        label, source = s["self_answer"], "self"
      else:
        d = reviewed["decisions"][s["id"]]
        queue_item = review_queue.ReviewItem(
          item.id, "", "", s["self_answer"] or "", s["oracle_answer"] or ""
        )
        label = review_queue.final_label(
          queue_item, review_queue.Decision(item.id, d["decision"], d["edited_text"])
        )
        source = f"review:{d['decision']}"
      if not label:
        continue  # rejected, or accepted with no oracle answer: nothing to learn from
      rows.append(
        {
          "id": item.id,
          "image_id": item.image_id,
          "question": item.question,
          "options": item.options,
          "answer": label,
          "source": source,
          **_meta(item),
        }
      )
    rows, duplicates = self._drop_near_duplicate_descriptions(state, rows)
    path = os.path.join(self._iter_dir(state), "data.jsonl")
    loop_state.atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return {
      "ids": [r["id"] for r in rows],
      "file": os.path.relpath(path, self.workdir),
      "description_duplicates": duplicates,
    }

  def _drop_near_duplicate_descriptions(self, state, rows: list[dict]):
    """The TF-IDF near-duplicate filter on description labels: a new description whose cosine
    to an earlier one (accumulated in earlier iterations, or kept earlier in this one) is at
    least `description_dedup_threshold` is dropped. Returns (kept rows, [{id, duplicate_of,
    similarity}])."""
    earlier = []  # (id, text) of descriptions accumulated by earlier iterations
    for rel in state.data_files:
      with open(os.path.join(self.workdir, rel)) as handle:
        for line in handle:
          row = json.loads(line)
          if row.get("question_type") == DESCRIPTION:
            earlier.append((row["id"], row["answer"]))
    new = [i for i, r in enumerate(rows) if r.get("question_type") == DESCRIPTION]
    if not new:
      return rows, []
    texts = [t for _, t in earlier] + [rows[i]["answer"] for i in new]
    ids = [i for i, _ in earlier] + [rows[i]["id"] for i in new]
    threshold = self.config.get("description_dedup_threshold", dedup.TEXT_THRESHOLD)
    result = dedup.dedup_descriptions(texts, float(threshold))
    duplicates, dropped_rows = [], set()
    for index, (of, similarity) in sorted(result.dropped.items()):
      if index >= len(earlier):  # earlier iterations' data stays as it was accumulated
        dropped_rows.add(new[index - len(earlier)])
        duplicates.append({"id": ids[index], "duplicate_of": ids[of], "similarity": similarity})
    return [r for i, r in enumerate(rows) if i not in dropped_rows], duplicates

  def finetune(self, state) -> dict:
    """The stage-2 fine-tuning on the accumulated data (`finetune=trainer`), starting from the
    previous iteration's checkpoint; its run directory becomes the next evaluation's model."""
    if self.config.finetune == "none":
      return {"checkpoint": "", "note": "finetune=none: the model is not changed"}
    if self.finetune_fn is None:
      raise NotImplementedError(
        f"finetune={self.config.finetune!r}: this engine was built without a fine-tuning step "
        "(launch/engine.py builds one for model=ours); run with config.finetune=none"
      )
    return self.finetune_fn(state, self._iter_dir(state))

  # --- the loop ----------------------------------------------------------------------------
  def prepare_pool(self, state) -> None:
    """Embeds the pool once (resumable: `pool_embed` skips ids already stored)."""
    if state.pool.get("ready"):
      return
    if self.embed_pool is not None:
      self.embed_pool(self.pool_dir)
    store = PoolStore(self.pool_dir) if os.path.isdir(self.pool_dir) else None
    state.pool = {"ready": True, "dir": "pool", "size": len(store) if store else 0}
    self._save(state)

  def run(self) -> loop_state.LoopState:
    """Runs (or resumes) the loop until it stops: plateau, max_iterations, waiting for review,
    or a fine-tune this engine cannot run. Returns the saved state."""
    self.waiting = self.halted = ""
    state = self.open_state()
    c = self.config
    if state.stopped.startswith("max_iterations") and state.iteration + 1 < c.max_iterations:
      state.stopped = ""  # resumed with a larger max_iterations: go on
    if state.stopped:
      return state
    self.prepare_pool(state)
    while not state.stopped:
      record = state.record()
      phase = _next_phase(state)
      if phase is None:  # iteration complete
        self._write_stats(state)
        if state.iteration + 1 >= c.max_iterations:
          state.stopped = f"max_iterations={c.max_iterations} reached"
          self._save(state)
          break
        state.iteration += 1
        state.phase = ""
        self._save(state)
        continue
      try:
        output = self._phase(state, phase, record)
      except WaitingForReview as waiting:
        self.waiting = str(waiting)
        logging.warning("%s", waiting)
        self._write_stats(state)
        break
      except NotImplementedError as error:  # not saved as stopped: rerun with another setting
        self.halted = str(error)
        logging.error("%s", error)
        self._write_stats(state)
        break
      record[phase] = output
      if phase == "evaluate":
        state.dev_accuracy.append(output["score"])
        if _plateau(state.dev_accuracy, c.patience, c.min_delta):
          state.stopped = (
            f"plateau: dev score {state.dev_accuracy[-1]:.4f} not above the best of the "
            f"{c.patience} iteration(s) before by more than {c.min_delta}"
          )
      elif phase == "accumulate":
        state.accumulated.extend(output["ids"])
        state.data_files.append(output["file"])
      elif phase == "finetune" and output["checkpoint"]:
        state.checkpoints.append(output["checkpoint"])
      self._save(state, phase)
      if state.stopped:
        self._write_stats(state)
    return state

  def _phase(self, state, phase: str, record: dict) -> dict:
    if phase == "evaluate":
      return self.evaluate(state)
    if phase == "cluster":
      return self.cluster(state, record["evaluate"])
    if phase == "retrieve":
      return self.retrieve(state, record["evaluate"], record["cluster"])
    if phase == "sample":
      return self.sample(state, record["evaluate"], record["retrieve"])
    if phase == "annotate":
      return self.annotate(state, record["sample"])
    if phase == "review_export":
      return self.review_export(state, record["annotate"])
    if phase == "review":
      return self.review(state, record["review_export"])
    if phase == "dedup":
      return self.dedup(state, record["annotate"], record["review"])
    if phase == "accumulate":
      return self.accumulate(state, record["annotate"], record["review"], record["dedup"])
    return self.finetune(state)

  # --- statistics --------------------------------------------------------------------------
  def statistics(self, state) -> list[dict]:
    """One row per iteration (columns `STATS_FIELDS`); None where a phase has not run."""
    rows = []
    for t, record in enumerate(state.records):
      row = dict.fromkeys(STATS_FIELDS)
      row["iteration"] = t
      if "evaluate" in record:
        e = record["evaluate"]
        row.update(
          dev_score=e["score"],
          dev_accuracy=e["accuracy"],
          dev_sampled_accuracy=e["sampled_accuracy"],
          dev_description_score=e["description_score"],
          failures=len(e["failed"]),
        )
      if "cluster" in record:
        row["clusters"] = record["cluster"]["n_clusters"]
      if "retrieve" in record:
        row["retrieved"] = len({i for v in record["retrieve"]["candidates"].values() for i in v})
      if "sample" in record:
        row["selected"] = len(record["sample"]["selected"])
      if "annotate" in record:
        a = record["annotate"]
        row["samples"] = len(a["samples"])
        row.update({f"oracle_{k}": v for k, v in a["oracle_counts"].items()})
        routes = {s["id"]: routing.Route(s["route"]) for s in a["samples"]}
        decisions = {
          i: d["decision"] for i, d in record.get("review", {}).get("decisions", {}).items()
        }
        stats = routing.iteration_stats(routes, decisions)
        for key in (
          "review_rate",
          "adopt_oracle_rate",
          "adopt_self_rate",
          "accept_rate",
          "edit_rate",
          "reject_rate",
        ):
          row[key] = stats[key]
      if "review" in record:
        row["decisions_source"] = record["review"]["source"]
      if "dedup" in record:
        d = record["dedup"]
        row["deduplicated"] = len(d["within"]) + len(d["against"])
      if "accumulate" in record:
        row["accumulated"] = len(record["accumulate"]["ids"])
      if record.get("finetune", {}).get("checkpoint"):
        row["finetune_steps"] = record["finetune"].get("steps")
        row["finetune_loss"] = record["finetune"].get("loss")
      rows.append(row)
    return rows

  def _write_stats(self, state) -> list[dict]:
    rows = self.statistics(state)
    loop_state.atomic_write_text(
      os.path.join(self.workdir, "stats.json"), json.dumps(rows, indent=1) + "\n"
    )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=STATS_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    loop_state.atomic_write_text(os.path.join(self.workdir, "stats.csv"), buffer.getvalue())
    return rows


def _samples(record: Mapping) -> Sequence[dict]:
  return record.get("annotate", {}).get("samples", [])


def _next_phase(state) -> str | None:
  if not state.phase:
    return loop_state.PHASES[0]
  index = loop_state.PHASES.index(state.phase)
  return loop_state.PHASES[index + 1] if index + 1 < len(loop_state.PHASES) else None


def _plateau(history: Sequence[float], patience: int, min_delta: float) -> bool:
  """True when the last `patience` values all fail to beat the best before them by min_delta."""
  if patience < 1 or len(history) <= patience:
    return False
  best_before = max(history[:-patience])
  return all(value <= best_before + min_delta for value in history[-patience:])


# Settings a resumed run may change: how to review, when to stop, how to reach the oracle.
RESUMABLE_KEYS = (
  "review",
  "finetune",
  "max_iterations",
  "patience",
  "min_delta",
  "workdir",
  "oracle.timeout_s",
  "oracle.max_retries",
  "oracle.concurrency",
  "judge.timeout_s",
  "judge.max_retries",
  "judge.concurrency",
  "model_workdir",
  "experiment",
)


def _fingerprint(config) -> dict:
  """The settings a resumed run must share with the run it resumes (JSON-able)."""
  raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  raw = json.loads(json.dumps(raw, sort_keys=True, default=str))
  for key in RESUMABLE_KEYS:
    *parents, leaf = key.split(".")
    node = raw
    for parent in parents:
      node = node.get(parent, {})
    node.pop(leaf, None)
  return raw
