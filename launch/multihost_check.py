"""Multi-host smoke check: one sharded train step on a (data, fsdp, tensor) mesh spanning every
process, each feeding its own rows of a seeded global batch; process 0 writes the metrics.

Two processes on one machine (what tests/test_multihost.py runs):
  python -m launch.multihost_check --process_id=0 --num_processes=2 --coordinator=127.0.0.1:PORT \
      --local_devices=4 --out=m.json &
  python -m launch.multihost_check --process_id=1 --num_processes=2 --coordinator=127.0.0.1:PORT \
      --local_devices=4
On a cluster run it on every host (without --local_devices); --num_processes=1 is the
single-process reference.
"""

import json
import os

from launch.argv import flag


def main():
  local_devices = flag("local_devices")
  if local_devices:  # must precede the JAX import
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  import numpy as np
  num_processes = int(flag("num_processes", "1"))
  if num_processes > 1:
    jax.distributed.initialize(coordinator_address=flag("coordinator"),
                               num_processes=num_processes, process_id=int(flag("process_id")))
  from configs import medq_uni
  from medq_jax.types import latent_dim
  from medq_jax import layout as layout_lib
  from medq_jax import sharding as sharding_lib
  from medq_jax.train import state as state_lib
  from medq_jax.train import step as step_lib

  config = medq_uni.get_config(flag("config_arg", "size=tiny,stage=2,mesh=2x2x2"))
  setup = state_lib.build_setup(config, jax.random.PRNGKey(0))
  spec, mesh, vae_params = setup.spec, setup.mesh, setup.vae_params
  state = jax.jit(lambda p: state_lib.create_train_state(p, setup.optimizer))(setup.params)

  rng = np.random.default_rng(0)
  batch = layout_lib.zeros_batch(spec, config.train.batch_size, latent_dim(config.model))
  for key in ("gen_latents", "gen_timesteps"):
    batch.pop(key)
  batch["und_token_ids"] = rng.integers(5, 400, batch["und_token_ids"].shape).astype(np.int32)
  batch["und_targets"] = rng.integers(5, 400, batch["und_targets"].shape).astype(np.int32)
  batch["und_loss_mask"][:, 10:40] = 1.0
  batch["und_positions"][:] = np.arange(spec.max_und_len)
  batch["vae_images"] = rng.uniform(-1, 1, batch["vae_images"].shape).astype(np.float32)
  batch["gen_noised"][:, spec.tokens_per_image:] = True
  batch["gen_loss_mask"] = batch["gen_noised"].astype(np.float32)
  rows = config.train.batch_size // jax.process_count()
  local = {k: v[jax.process_index() * rows:(jax.process_index() + 1) * rows] for k, v in batch.items()}

  step = step_lib.make_train_step(setup.model, setup.vae, setup.optimizer, config.model,
                                  config.train)
  with sharding_lib.mesh_context(mesh, config.sharding_rules):
    global_batch = sharding_lib.global_batch(local, mesh)
    state, metrics = jax.jit(step)(state, vae_params, global_batch, jax.random.PRNGKey(1))
  metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
  from jax.experimental import multihost_utils
  kernel = state.params["decoder"]["layers"]["mlp"]["up_proj"]["kernel"]
  metrics["param_checksum"] = float(np.sum(multihost_utils.process_allgather(kernel, tiled=True)))
  metrics["process_count"] = jax.process_count()
  metrics["device_count"] = jax.device_count()
  out = flag("out")
  if out and jax.process_index() == 0:
    with open(out, "w") as f:
      json.dump(metrics, f)
  print(json.dumps(metrics))


if __name__ == "__main__":
  main()
