r"""MedQ-Engine closed-loop config (big_vision style): the paper's defaults (§2, §3.1) and the
built-in data as dev, pool and test.

Usage:
  medq-engine --config=configs/engine.py:runlocal --workdir=runs/engine
  medq-engine --config=configs/engine.py:oracle=api,model=ours \
      --config.model_workdir=runs/medq_uni_tiny_stage2 --workdir=runs/engine_ours
  medq-engine --config=configs/engine.py --config.review.auto_decision=accept --workdir=runs/e

Options of the config arg: oracle (offline|api, default offline), model (heuristic|ours, default
heuristic), finetune (none|trainer, default none; trainer needs model=ours), runlocal (32 px
data, a small budget, k_max 8: a smoke run in about a minute), sample_efficiency (the
experiment's settings: runlocal, model=ours, finetune=trainer, the builtin VAE, perception
items only, auto-accept, one iteration, 3 epochs per fine-tune).
"""

from __future__ import annotations

import math

import ml_collections

from configs import bench, common
from configs.data import medq_sample

ORACLES = ("offline", "api")
MODELS = ("heuristic", "ours")
FINETUNE = ("none", "trainer")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(
    arg,
    oracle="offline",
    model="heuristic",
    runlocal=False,
    finetune="none",
    sample_efficiency=False,
  )
  if arg.sample_efficiency:  # launch/engine_sample_efficiency.py: tiny model, built-in data
    arg.runlocal, arg.model, arg.finetune = True, "ours", "trainer"
  if arg.oracle not in ORACLES:
    raise ValueError(f"config arg: oracle must be one of {ORACLES}, got {arg.oracle!r}")
  if arg.model not in MODELS:
    raise ValueError(f"config arg: model must be one of {MODELS}, got {arg.model!r}")
  if arg.finetune not in FINETUNE:
    raise ValueError(f"config arg: finetune must be one of {FINETUNE}, got {arg.finetune!r}")
  config = ml_collections.ConfigDict()
  config.workdir = "runs/engine"  # Loop state, pool, review queues, statistics.
  config.seed = 0

  # Sources: splits of the precomputed built-in dataset (configs/data/medq_sample.py), read
  # with data_pipeline.loader.one_pass; each example's `high` and `low` images become
  # MedQ-Bench perception MCQs (medq_jax.bench.generator.perception_rows), whose metadata
  # (modality, question_type, degradation_level) are the capability vector.
  config.data = medq_sample.get_config("runlocal" if arg.runlocal else None)
  config.dev_split = "val"  # Evaluated R times per iteration.
  config.pool_split = "train"  # The unlabelled image pool (labels used only by the offline oracle).
  config.test_split = "bench"  # Held out: only deduplicated against.
  config.max_dev_images = 0  # 0: all; else the first N images of the dev split (smoke runs).
  # Description items (§2.2: perception and description tasks): one MedQ-Bench no-reference item
  # per image, its reference the example's golden description (the clean template for `high`).
  # A description run counts as correct when the judge's Overall (the sum of the four dimension
  # scores, 0-8) is at least description_pass: 6 = on average 1.5 of 2 per dimension, i.e. more
  # than partly right on every one.
  config.description_items = True
  config.description_pass = 6.0
  # The MedQ-Bench reasoning judge scoring descriptions (configs/bench.py): offline = the rule
  # judge (not an LLM; says so), api = an OpenAI-compatible model through the chat client.
  config.judge = bench.judge_config("offline")

  # The model under evaluation. heuristic: medq_jax/bench/heuristic_model.py (fast, no weights,
  # cannot be fine-tuned); ours: medq_jax/infer/bench_model.py loaded from `model_workdir`
  # with the model config `model_config` (configs/medq_uni.py:<arg>).
  config.model = arg.model
  config.model_workdir = ""
  config.model_config = "size=tiny,stage=2"
  config.model_flux_ae = ""  # init.flux_ae of the model: a file, "builtin", "" = the run's vae/
  # Sampling temperature of the R evaluation runs: over the options' log-likelihoods (MCQ) and
  # of the description decoding (model=ours: `describe_samples`); the routed self answer and the
  # dev score use the greedy option / description.
  config.temperature = 1.0

  # Evaluate (§2.2): R sampled runs; persistent failure when the error rate over R > gamma.
  config.runs = 5  # R (paper)
  config.gamma = 0.6  # (paper)
  config.cross_capabilities = False  # Multi-hot capability dims (True: one-hot combinations).
  # Clustering: k chosen by silhouette in [k_min, k_max]; text embedding size; part weights.
  config.k_min = 2
  config.k_max = 8 if arg.runlocal else 20
  config.text_dim = 64
  config.visual_weight = 1.0
  config.text_weight = 1.0

  # Explore (§2.3). Pool images embedded with our ViT (a fresh seeded init unless
  # `encoder_workdir` names a medq-train run; the same encoder embeds the dev failures).
  config.encoder_workdir = ""
  config.encoder_image_size = 32  # For the fresh ViT (a multiple of its patch size).
  config.tau_sim = 0.75  # Retrieval cosine threshold (paper).
  config.top_k = 1000  # Per prototype, before the threshold.
  config.budget = 40 if arg.runlocal else 2000  # B, pool images drawn per iteration (paper).
  # alpha = 1: weights proportional to e_k, the paper's w_k ∝ e_k with no sharpening; alpha > 1
  # concentrates the budget on the weakest capabilities, alpha = 0 spreads it uniformly.
  config.alpha = 1.0

  # Annotation routing (§2.3, Eq. 3). tau_H = ln 2: exp(-H) is the geometric-mean probability of
  # the model's own answer tokens, so H >= ln 2 means worse than even odds (uncertain).
  # tau_ann = 0.5: MCQ agreement is 0/1 (any value in (0, 1] means "same letter"); for
  # descriptions (token F1) about half of the words shared.
  config.tau_h = math.log(2.0)
  config.tau_ann = 0.5

  config.oracle = ml_collections.ConfigDict()
  config.oracle.kind = arg.oracle  # offline: ground-truth labels (says so in every report).
  # Offline oracle: wrong on this seeded fraction of the items (GPT-4o-like imperfection; the
  # paper's expert review exists because the oracle errs). 0.1 makes disagreements visible.
  config.oracle.error_rate = 0.1
  config.oracle.timeout_s = 60.0  # api: per request (data_pipeline chat client, env MEDQ_ORACLE_*)
  config.oracle.max_retries = 5
  config.oracle.concurrency = 8

  config.review = ml_collections.ConfigDict()
  # "" : the loop stops at each review queue until the user fills `decision` in
  # <workdir>/iter_<t>/review.csv (Accept / Edit / Reject) and reruns. "accept" (or
  # "reject"): unattended runs decide every reviewed sample that way, recorded as automatic.
  config.review.auto_decision = ""

  # Evolve (§2.4): pHash dedup against dev and test (max Hamming distance in bits).
  config.dedup_max_distance = 4
  # TF-IDF cosine at or above which a new description label is a near-duplicate of an earlier
  # one and dropped (dedup.TEXT_THRESHOLD; 0.9 keeps paraphrases that differ in a finding)
  config.description_dedup_threshold = 0.9
  # Fine-tuning on the accumulated data: "none" (the model is not changed; the loop then
  # re-evaluates and stops at the plateau) or "trainer" (model=ours: each iteration trains the
  # stage-2 objective, medq_jax/train/loop.py, on every accumulated annotation from the previous
  # iteration's checkpoint; engine/finetune.py, docs/engine.md).
  config.finetune = arg.finetune
  config.trainer = ml_collections.ConfigDict()
  config.trainer.steps = 30  # Per iteration (small: the built-in data gives tens of annotations).
  config.trainer.batch_size = 4
  config.trainer.learning_rate = 2e-4  # Below the from-scratch 1e-3: a fine-tune.
  config.trainer.epochs = 0.0  # > 0: steps = epochs over the accumulated data (paper: 3).
  config.max_iterations = 5
  config.patience = 1  # Stop after this many iterations without dev accuracy gain > min_delta.
  config.min_delta = 0.0

  # The sample-efficiency experiment (launch/engine_sample_efficiency.py, Fig. 3 c, f): a base
  # tiny model trained base_steps on the pool split, then per budget (pool images per engine
  # iteration) failure-driven vs random sampling at the same number of annotations.
  config.experiment = ml_collections.ConfigDict()
  config.experiment.base_steps = 150
  config.experiment.budgets = (4, 8, 16)
  if arg.sample_efficiency:
    config.model_flux_ae = "builtin"
    config.description_items = False  # perception only: the tiny model's text is not scored
    config.review.auto_decision = "accept"
    config.max_iterations = 1
    config.trainer.epochs = 3.0  # the paper's 3 epochs, so both strategies see equal passes
  return config
