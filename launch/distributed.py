"""The one place an entry point starts `jax.distributed`: flags or the environment, then a barrier.

Every entry point that runs JAX imports this module (which defines the flags below once) and
calls `initialize()` first thing in `main`, after absl parsed the flags and before any JAX
operation. The cluster cases:

1. One process (laptop, one GPU/TPU host): no flags. `--local_devices=8` gives 8 fake CPU
   devices for tests and for trying a mesh on a laptop.
2. Several processes you start yourself (two terminals, a test, hosts without a scheduler):
   on every process `--coordinator=HOST:PORT --num_processes=N --process_id=I`, where HOST:PORT
   is a free port on the host of process 0 that every process can reach.
3. A scheduler or a pod that JAX recognises (SLURM, Open MPI, Kubernetes, Cloud TPU pods):
   `--distributed` alone; `jax.distributed.initialize()` reads the coordinator, the number of
   processes and this process's index from the environment (`JAX_COORDINATOR_ADDRESS` names the
   coordinator where the cluster does not).

  medq-train --config=configs/medq_uni.py:mesh=2x2x2 --coordinator=127.0.0.1:1234 \
      --num_processes=2 --process_id=0 --local_devices=4
"""

from __future__ import annotations

from absl import app, flags

_COORDINATOR = flags.DEFINE_string(
  "coordinator", "", "host:port of process 0 (several processes started by hand)."
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "Number of JAX processes (with --coordinator).", lower_bound=1
)
_PROCESS_ID = flags.DEFINE_integer(
  "process_id",
  None,
  "This process's index in [0, num_processes) (with --coordinator).",
  lower_bound=0,
)
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  False,
  "Call jax.distributed.initialize() and let JAX read the cluster (SLURM, Open MPI, "
  "Kubernetes, TPU pod, JAX_COORDINATOR_ADDRESS) from the environment.",
)
_LOCAL_DEVICES = flags.DEFINE_integer(
  "local_devices",
  0,
  "N > 0: run on N fake CPU devices in this process (tests, laptops).",
  lower_bound=0,
)


def _check_flags(coordinator: str, num_processes: int | None, process_id: int | None) -> None:
  """Usage errors that jax.distributed would report late or obscurely."""
  if coordinator:
    if num_processes is None or process_id is None:
      raise app.UsageError(
        f"--coordinator={coordinator} needs --num_processes and --process_id "
        "(or use --distributed on a cluster JAX recognises)"
      )
    if ":" not in coordinator:
      raise app.UsageError(f"--coordinator={coordinator}: expected HOST:PORT")
  elif (num_processes or 1) > 1 and not _DISTRIBUTED.value:
    raise app.UsageError(
      f"--num_processes={num_processes} needs --coordinator=HOST:PORT (or "
      "--distributed on a cluster JAX recognises)"
    )
  if num_processes is not None and process_id is not None and process_id >= num_processes:
    raise app.UsageError(
      f"--process_id={process_id}: expected 0 <= process_id < --num_processes={num_processes}"
    )


def initialize() -> tuple[int, int]:
  """Sets up JAX for this process from the flags; returns (process_index, process_count).

  Call it first thing in `main`: `--local_devices` must reach JAX before its backend starts
  (any JAX operation starts it), and it fails naming the flag when it comes too late. Calling it
  again is harmless.
  """
  import jax

  local_devices = _LOCAL_DEVICES.value
  if local_devices:
    try:
      jax.config.update("jax_platforms", "cpu")
      jax.config.update("jax_num_cpu_devices", local_devices)
    except RuntimeError as error:
      raise RuntimeError(
        f"--local_devices={local_devices}: the JAX backend was already started "
        "before launch.distributed.initialize(); call it first thing in main, "
        f"before any JAX operation ({error})"
      ) from None
  coordinator, num_processes = _COORDINATOR.value, _NUM_PROCESSES.value
  process_id = _PROCESS_ID.value
  _check_flags(coordinator, num_processes, process_id)
  wanted = _DISTRIBUTED.value or coordinator or (num_processes or 1) > 1
  if wanted and not jax.distributed.is_initialized():
    jax.distributed.initialize(
      coordinator_address=coordinator or None, num_processes=num_processes, process_id=process_id
    )
  if local_devices and jax.local_device_count() != local_devices:
    raise RuntimeError(
      f"--local_devices={local_devices}: JAX sees {jax.local_device_count()} "
      f"local devices ({jax.default_backend()}); was the backend started before "
      "launch.distributed.initialize()?"
    )
  return jax.process_index(), jax.process_count()


def barrier(name: str) -> None:
  """Waits until every process reached `barrier(name)`; nothing to wait for with one process."""
  import jax

  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
