"""How medq-engine builds its engine from a config (flag-free, so that other entry points such as
launch/engine_sample_efficiency.py import it without defining medq-engine's flags): the
encoder, the evaluated model, the oracle, the fine-tuning step and the `loop.Engine`."""

from __future__ import annotations

import logging
import os


def build_encoder(config):
  """Our ViT: from `encoder_workdir` (a medq-train run), else a fresh seeded init."""
  from configs import medq_uni, model_sizes
  from medq_jax.engine import pool_embed

  if config.encoder_workdir:
    model_config = medq_uni.get_config(config.model_config)
    return pool_embed.VitEncoder.from_run(model_config, config.encoder_workdir)
  vit = model_sizes.model_config("tiny").vit
  return pool_embed.VitEncoder.fresh(vit, image_size=config.encoder_image_size, seed=config.seed)


def model_config(config):
  """The evaluated model's config (configs/medq_uni.py:<model_config>, its VAE
  `model_flux_ae`)."""
  from configs import medq_uni
  from medq_jax import checkpoints

  out = medq_uni.get_config(config.model_config)
  flux_ae = config.model_flux_ae
  pipeline_vae = os.path.join(config.model_workdir, "vae", checkpoints.VAE_FILE)
  if not flux_ae and config.model_workdir and os.path.isfile(pipeline_vae):
    flux_ae = pipeline_vae  # named, so the fine-tuned runs (not pipelines) use the same VAE
  with out.unlocked():
    out.init.flux_ae = flux_ae
  return out


def load_ours(config, run_dir: str):
  """Our model from a medq-train run directory (the base run or a fine-tuned checkpoint)."""
  from medq_jax.infer.bench_model import load_from_workdir

  model = load_from_workdir(run_dir, model_config(config))
  model.sample_temperature = float(config.temperature)  # the R sampled description runs
  return model


def build_model(config):
  """The evaluated BenchModel: the heuristic one, or ours from `model_workdir`."""
  if config.model == "heuristic":
    from medq_jax.bench.heuristic_model import HeuristicBenchModel

    return HeuristicBenchModel()
  if not config.model_workdir:
    raise ValueError("config.model=ours needs config.model_workdir (a medq-train run)")
  return load_ours(config, config.model_workdir)


def build_finetune(config, workdir: str, pool):
  """finetune=trainer: the stage-2 trainer from the previous checkpoint (engine/finetune.py)."""
  if config.finetune == "none":
    return None
  if config.model != "ours":
    raise ValueError(
      "config.finetune=trainer fine-tunes our model: set the config arg model=ours and "
      "config.model_workdir (the heuristic model has no parameters to train)"
    )
  from medq_jax.engine import finetune
  from medq_jax.infer.loading import run_directory

  return finetune.TrainerFinetune(
    model_config(config),
    run_directory(config.model_workdir),
    pool,
    workdir,
    config.trainer.steps,
    config.trainer.batch_size,
    config.trainer.learning_rate,
    epochs=config.trainer.epochs,
  )


def build_oracle(config, workdir: str, pool):
  """The offline oracle (the pool items' ground truth, with error) or the chat one."""
  from medq_jax.engine import oracle

  if config.oracle.kind == "offline":
    labels = {item.id: item.answer for item in pool.items}
    return oracle.OfflineOracle(labels, config.oracle.error_rate, config.seed)
  from data_pipeline import chat_client

  chat = chat_client.ChatConfig.from_env(
    "oracle", timeout_s=config.oracle.timeout_s, max_retries=config.oracle.max_retries
  )
  cache = chat_client.ReplyCache(os.path.join(workdir, "oracle_cache.sqlite"))
  return oracle.ChatOracle(chat_client.ChatClient(chat, cache), config.oracle.concurrency)


def build_engine(config, workdir: str):
  """Reads the three splits (the precompute runs first when the dataset is missing) and
  returns the `loop.Engine` over `workdir`."""
  from launch import prepare
  from medq_jax.bench.judge_factory import make_judge
  from medq_jax.engine import loop, pool_embed

  prepare.ensure_dataset(config.data)
  descriptions = config.description_items
  dev = loop.load_split(
    config.data, config.dev_split, config.seed, config.max_dev_images, descriptions
  )
  pool = loop.load_split(config.data, config.pool_split, config.seed, 0, descriptions)
  test = loop.load_split(config.data, config.test_split, config.seed, 0, descriptions)
  encoder = build_encoder(config)

  def embed_pool(pool_dir: str):
    for field in ("high", "low"):
      report = pool_embed.embed_dataset(config.data, config.pool_split, encoder, pool_dir, field)
      logging.info("pool %s: %d embedded, %d skipped", field, report.embedded, len(report.skipped))

  return loop.Engine(
    config,
    workdir,
    build_model(config),
    encoder,
    build_oracle(config, workdir, pool),
    dev,
    pool,
    test,
    embed_pool=embed_pool,
    finetune=build_finetune(config, workdir, pool),
    judge=make_judge(config.judge, workdir),
    load_model=lambda run_dir: load_ours(config, run_dir),
  )
