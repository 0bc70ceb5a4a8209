"""Test-wide setup: 8 fake CPU devices (set before JAX is imported) and shared fixtures."""

import os
import re

# LLVM's optimisation of XLA's generated CPU code is about a third of every compile, and the suite
# compiles hundreds of small programs whose run time it hardly changes: tests compile at LLVM -O0
# (23-30% less wall time per file, measured 2026-12-04). The HLO and XLA's passes are the same,
# and XLA's CPU code keeps IEEE semantics at every level (no fast-math), so no number moves: the
# transformers parity, golden and bit-identical resume tests hold unchanged. Subprocesses keep it
# (`subprocess_env`). Users' jobs compile at the default level.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
_DEVICE_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=\d+")

os.environ["XLA_FLAGS"] = " ".join(
  [os.environ.get("XLA_FLAGS", ""), TEST_XLA_FLAGS, "--xla_force_host_platform_device_count=8"]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _share_compilation_cache():
  """One persistent XLA compilation cache for the whole test session: many tests compile the same
  tiny train/init/sampling programs (a resumed run, a rerun, another test file on the same
  config), and a cache hit skips the compile (the same executable, so no behaviour changes).
  The first process to import this file (pytest, or xdist's controller before it spawns the
  workers) makes the directory; the workers and every subprocess a test starts inherit it through
  the environment. A directory the user set is kept."""
  import atexit
  import shutil
  import tempfile

  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  directory = tempfile.mkdtemp(prefix="medq_jax_test_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = directory
  # A size limit turns on JAX's file lock around each read and write: two workers compiling the
  # same program never read a half-written entry (an unreadable one is only recompiled, with a
  # warning). 16 GiB is never reached; the directory goes when the session ends.
  os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(16 << 30))
  atexit.register(shutil.rmtree, directory, ignore_errors=True)


_share_compilation_cache()

import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


import socket

import pytest


def make_subprocess_env(devices: int | None = None, **extra: str) -> dict[str, str]:
  """The environment for a test's subprocess: this one's, on the CPU, with the tests' XLA flags
  but without the 8 fake devices (a child that wants N says `devices=N`; JAX's own
  `--local_devices` / jax_num_cpu_devices must not meet the flag), no SLURM variables (a run
  inside a SLURM allocation would otherwise configure itself from them), plus `extra`."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  flags = _DEVICE_COUNT_FLAG.sub("", env.get("XLA_FLAGS", "")).split()
  if devices is not None:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  env["XLA_FLAGS"] = " ".join(flags)  # XLA reads a lone space as a file name: never " "
  if not env["XLA_FLAGS"]:
    del env["XLA_FLAGS"]
  env["JAX_PLATFORMS"] = "cpu"
  env.update(extra)
  return env


@pytest.fixture(scope="session")
def subprocess_env():
  """`make_subprocess_env`: the one way tests build a child process's environment."""
  return make_subprocess_env


@pytest.fixture
def free_port():
  """A free TCP port on 127.0.0.1 (for jax.distributed coordinators and local servers)."""
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_vae_config():
  """A small FLUX-layout autoencoder config: the `small` size's VAE with FLUX's four levels (x8)
  and two res blocks per level, so that conversion tests see every level and block indices
  above 0."""
  from configs import model_sizes

  config = model_sizes.model_config("small").vae
  config.num_res_blocks = 2
  config.ch_mult = (1, 2, 2, 2)
  return config


@pytest.fixture(scope="session")
def placed_params():
  """A function (config, seed) -> (params, vae_params) of `config.model`: random values placed in
  `config.mesh`'s shardings. A stand-in for a fresh initialisation where only the values' home
  matters (jitting the real init takes ~20 s on 2 cores)."""
  import flax.linen as nn
  import jax
  import numpy as np

  from medq_jax import layout as layout_lib
  from medq_jax import sharding as sharding_lib
  from medq_jax.train import state as state_lib

  def make(config, seed):
    spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, 2)
    model, vae = state_lib.build_models(config.model)
    mesh = sharding_lib.make_mesh(config.mesh)
    rng = np.random.default_rng(seed)
    trees = []
    for init_fn in state_lib._init_fns(model, vae, spec, config.model):
      abstract = jax.eval_shape(init_fn, jax.random.key(0))
      shardings = sharding_lib.mesh_shardings(abstract, mesh, config.sharding_rules)
      trees.append(
        jax.tree_util.tree_map(
          lambda leaf, sharding: jax.device_put(
            rng.standard_normal(leaf.shape).astype(leaf.dtype), sharding
          ),
          nn.unbox(abstract),
          shardings,
        )
      )
    return tuple(trees)

  return make


# Files that take half a minute or more (CI runs of 2026-12-04, seconds summed over their tests). With
# `--dist loadfile` xdist hands whole files to the two workers in collection order, so these go
# first: a long file started last would leave the other worker idle for minutes at the end.
LONG_FILES = (
  "tests/engine/test_engine_sample_efficiency.py",
  "tests/engine/test_engine_finetune.py",
  "tests/test_cli.py",
  "tests/test_profile.py",
  "tests/test_multihost.py",
  "tests/test_pipeline.py",
  "tests/test_grad_accum.py",
  "tests/test_evaluate.py",
  "tests/test_cluster_launch.py",
  "tests/test_train_faults.py",
  "tests/infer/test_sampler.py",
  "tests/test_train_loop.py",
  "tests/models/test_decoder_parity.py",
  "tests/engine/test_engine_loop_cli.py",
  "tests/test_restore_mesh.py",
  "tests/test_prepare_multihost.py",
  "tests/test_packing_loss.py",
  "tests/test_vae_stage.py",
)


def pytest_collection_modifyitems(config, items):
  """Long files first (in LONG_FILES' order), every other file after them as collected; a file's
  tests stay together and in order. Deterministic, so every xdist worker collects the same list."""
  root = str(config.rootpath)
  rank = {name: index for index, name in enumerate(LONG_FILES)}

  def key(indexed):
    index, item = indexed
    path = os.path.relpath(str(item.path), root)
    return (rank.get(path, len(rank)), index if path not in rank else 0, index)

  items[:] = [item for _, item in sorted(enumerate(items), key=key)]


@pytest.fixture
def unraisable_reports(monkeypatch):
  """What reaches the process's `sys.unraisablehook` during a test, and asyncio's log records
  (outside pytest: the terminal). `.settle()` waits until a failed restore's abandoned reads have
  stopped reporting (they arrive over about a second; `checkpoints.absorb_abandoned_reads` counts
  the ones it keeps quiet) and returns one line per report that got through."""
  import gc
  import logging
  import sys
  import time
  import types

  from medq_jax import checkpoints

  reports = []
  monkeypatch.setattr(sys, "unraisablehook", reports.append)
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  asyncio_logger = logging.getLogger("asyncio")
  asyncio_logger.addHandler(handler)

  def settle(quiet_seconds=1.0, limit_seconds=20.0):
    deadline = time.monotonic() + limit_seconds
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
      gc.collect()
      count = checkpoints.ABANDONED_READS["absorbed"] + len(reports) + len(records)
      if count != last:
        last, since = count, time.monotonic()
      elif time.monotonic() - since >= quiet_seconds:
        break
      time.sleep(0.1)
    return [f"{u.exc_type.__name__}: {u.exc_value} in {u.object!r}" for u in reports] + [
      f"asyncio: {r.getMessage()[:300]}" for r in records
    ]

  yield types.SimpleNamespace(reports=reports, settle=settle)
  asyncio_logger.removeHandler(handler)
