r"""Multi-host smoke check: one sharded train step on a (data, fsdp, tensor) mesh spanning every
process, each feeding its own rows of a seeded global batch; process 0 writes the metrics.

Two processes on one machine (what tests/test_multihost.py runs):
  python -m launch.multihost_check --config=configs/medq_uni.py:size=tiny,stage=2,mesh=2x2x2 \
      --coordinator=127.0.0.1:PORT --num_processes=2 --process_id=0 --local_devices=4 --out=m.json &
  python -m launch.multihost_check --config=configs/medq_uni.py:size=tiny,stage=2,mesh=2x2x2 \
      --coordinator=127.0.0.1:PORT --num_processes=2 --process_id=1 --local_devices=4
On a cluster run it on every host with --distributed (or the three flags above); without them
it is the single-process reference (--local_devices=8 for the same 8-device mesh).
"""

import json

import jax
import numpy as np
from absl import flags
from jax.experimental import multihost_utils

from launch import cli, distributed
from medq_jax import layout as layout_lib
from medq_jax import sharding as sharding_lib
from medq_jax.train import state as state_lib
from medq_jax.train import step as step_lib
from medq_jax.types import latent_dim

_CONFIG = cli.define_config_file(
  "config", "configs/medq_uni.py:size=tiny,stage=2,mesh=2x2x2", "Model config file."
)
_OUT = flags.DEFINE_string("out", "", "Process 0 writes the metrics JSON here.")
flags.adopt_module_key_flags(distributed)


def seeded_batch(spec, config) -> dict[str, np.ndarray]:
  """The global batch every process builds alike: random tokens and images, seed 0."""
  rng = np.random.default_rng(0)
  batch = layout_lib.zeros_batch(spec, config.train.batch_size, latent_dim(config.model))
  for key in ("gen_latents", "gen_timesteps"):
    batch.pop(key)
  batch["und_token_ids"] = rng.integers(5, 400, batch["und_token_ids"].shape).astype(np.int32)
  batch["und_targets"] = rng.integers(5, 400, batch["und_targets"].shape).astype(np.int32)
  batch["und_loss_mask"][:, 10:40] = 1.0
  batch["und_positions"][:] = np.arange(spec.max_und_len)
  batch["vae_images"] = rng.uniform(-1, 1, batch["vae_images"].shape).astype(np.float32)
  batch["gen_noised"][:, spec.tokens_per_image :] = True
  batch["gen_loss_mask"] = batch["gen_noised"].astype(np.float32)
  return batch


def main(argv):
  del argv
  process_index, process_count = distributed.initialize()
  config = _CONFIG.value
  setup = state_lib.build_setup(config, jax.random.PRNGKey(0))
  spec, mesh, vae_params = setup.spec, setup.mesh, setup.vae_params
  state = state_lib.init_train_state(setup.params, setup.optimizer, setup.mesh)

  batch = seeded_batch(spec, config)
  rows = config.train.batch_size // process_count
  local = {k: v[process_index * rows : (process_index + 1) * rows] for k, v in batch.items()}

  step = step_lib.make_train_step(
    setup.model, setup.vae, setup.optimizer, config.model, config.train
  )
  with sharding_lib.mesh_context(mesh, config.sharding_rules):
    global_batch = sharding_lib.global_batch(local, mesh)
    state, metrics = jax.jit(step)(state, vae_params, global_batch, jax.random.PRNGKey(1))
  metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
  kernel = state.params["decoder"]["layers"]["mlp"]["up_proj"]["kernel"]
  metrics["param_checksum"] = float(np.sum(multihost_utils.process_allgather(kernel, tiled=True)))
  metrics["process_count"] = process_count
  metrics["device_count"] = jax.device_count()
  if _OUT.value and process_index == 0:
    with open(_OUT.value, "w") as f:
      json.dump(metrics, f)
  print(json.dumps(metrics))


def run_main():
  cli.run(main)


if __name__ == "__main__":
  run_main()
