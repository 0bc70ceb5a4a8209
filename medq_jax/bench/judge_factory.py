"""The MedQ-Bench reasoning judge a config names (`config.judge` of configs/bench.py, or
`config.evaluate.judge` of configs/medq_uni.py): the offline rule judge or the API judge."""

from __future__ import annotations

import os


def make_judge(judge_config, out_dir: str):
  """The reasoning judge that config.judge.kind names."""
  if judge_config.kind == "offline":
    from medq_jax.bench.judge_offline import OfflineJudge

    return OfflineJudge()
  from medq_jax.bench.judge_api import make_api_judge

  return make_api_judge(
    concurrency=judge_config.concurrency,
    timeout_s=judge_config.timeout_s,
    max_retries=judge_config.max_retries,
    message_style=judge_config.message_style,
    cache_path=judge_config.cache_path or os.path.join(out_dir, "judge_cache.sqlite"),
  )
