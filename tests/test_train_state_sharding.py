"""The trainer's step-0 state keeps every AdamW moment and EMA leaf sharded like its parameter
(jit(create_train_state) alone replicates them: at 7B stage 2 that is +95 GiB per GPU)."""

import jax

from configs import medq_uni


def test_moments_and_ema_are_sharded_like_their_parameters():
  from medq_jax.train import state as state_lib

  config = medq_uni.get_config("size=tiny,stage=2,mesh=1x-1x1")
  setup = state_lib.build_setup(config, jax.random.key(0))
  state = state_lib.init_train_state(setup.params, setup.optimizer, setup.mesh, ema_decay=0.9)
  params = {
    jax.tree_util.keystr(path): leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(setup.params)[0]
  }
  sharded = 0
  for tree in (state.opt_state, state.ema):
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      name = jax.tree_util.keystr(path)
      owner = [p for suffix, p in params.items() if name.endswith(suffix)]
      if not owner:
        assert leaf.ndim == 0 or not leaf.sharding.spec  # counts: scalars, replicated
        continue
      assert leaf.shape == owner[0].shape
      assert leaf.sharding.is_equivalent_to(owner[0].sharding, leaf.ndim), name
      sharded += bool(any(owner[0].sharding.spec))
  assert sharded > 10  # FSDP over 8 devices really splits them
  # The unplaced init this replaces: the moments come back replicated, so the test can fail.
  plain = jax.jit(lambda p: state_lib.create_train_state(p, setup.optimizer))(setup.params)
  leaves = jax.tree_util.tree_leaves(plain.opt_state)
  assert any(leaf.ndim and not any(leaf.sharding.spec) for leaf in leaves if leaf.size > 64)
