"""Inference and evaluation settings of a model config (`config.infer`, `config.evaluate`).

Defaults of `infer` are MedQ-Uni's restoration inference (its released inference_pipeline):
cfg_text 4.0, cfg_img 2.0, interval [0, 1], text_channel renorm (min 0), 50 timesteps, shift 1.0;
descriptions greedy up to 800 tokens there (here `max_new_tokens`, bounded by the layout).
"""

import ml_collections

from configs import bench


def infer_config(max_new_tokens: int = 256) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    dict(
      description_mode="generated",  # generated | given | none (the paper's ablation)
      max_new_tokens=max_new_tokens,
      temperature=0.0,  # 0: greedy
      top_p=1.0,
      num_timesteps=50,
      timestep_shift=1.0,
      cfg_text_scale=4.0,
      cfg_img_scale=2.0,
      cfg_interval=(0.0, 1.0),
      cfg_renorm_type="text_channel",  # global | channel | text_channel
      cfg_renorm_min=0.0,
      use_prefix_cache=True,  # False recomputes the whole context at every sampler step
      seed=0,
    )
  )


def evaluate_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    dict(
      split="bench",  # the held-out split assess-then-restore runs on
      batch_size=8,
      max_examples=0,  # > 0: stop after this many
      tasks=(),  # empty: every task
      dtype="",  # "" keeps the saved dtype; "bfloat16" / "float32"
      panel_count=8,
      judge=bench.judge_config("offline"),  # descriptions scored by the MedQ-Bench judge
    )
  )
