r"""Data benchmark: Grain over precomputed ArrayRecord vs degrading on the fly, per core.

  python -m launch.bench_data_loader --config=configs/data/medq_sample.py \
      --config.data_dir=/tmp/medq_bench --step_time_s=tiny=0.05,small=0.5

For each model size (tiny, small) it precomputes medq-sample at that size's image size (reused
when already there: the precompute resumes), then measures in one process (one core):
  * loader: batches/s of the Grain loader (0 workers: the reading thread and the consumer share
    one core) over the ArrayRecord shards, decoded;
  * on the fly: examples made from raw slices (degradation + description) in-process, timed
    per task and combined with the plan's task mix;
and prints examples/s, their ratio, and the train step's consumption batch_size/step_time_s.
The train step's time is measured here for configs/medq_uni.py at the same size name and stage 2
(zero batches of the config's batch size, the full step: model, frozen-VAE pixel losses and
optimizer); --step_time_s=tiny=0.05,... overrides it with figures measured elsewhere (e.g. on a
GPU).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # One core per measurement.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import time  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

from data_pipeline import loader  # pylint: disable=g-import-not-at-top
from data_pipeline import make_example  # pylint: disable=g-import-not-at-top
from data_pipeline import planning  # pylint: disable=g-import-not-at-top
from data_pipeline import precompute  # pylint: disable=g-import-not-at-top
from data_pipeline import pseudo_labeller  # pylint: disable=g-import-not-at-top
from data_pipeline import staging  # pylint: disable=g-import-not-at-top
from data_pipeline import tfds_format  # pylint: disable=g-import-not-at-top

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/data/medq_sample.py", "Data config file.", lock_config=True)
_STEP_TIME = flags.DEFINE_string(
    "step_time_s", "", "Train step time per model config, e.g. 'tiny=0.05,small=0.5' (s); "
    "'base=none' skips the train step column for that config.")
_SIZES = flags.DEFINE_string(
    "sizes", "tiny=32:8,small=64:16", "model config -> image_size:batch_size; add e.g. "
    "base=256:8 for paper-scale slices.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 1000, "Loader batches to time.")
_MIN_SECONDS = flags.DEFINE_float("min_seconds", 1.0, "Least time spent timing each task.")
_PER_TASK = flags.DEFINE_integer("on_the_fly_per_task", 20, "On-the-fly examples per task.")
_REPEATS = flags.DEFINE_integer(
    "examples_per_slice", 8, "Multiplies the draws per (slice, task) so the benchmark dataset "
    "has thousands of examples: Grain's index_shuffle costs ~20000/N us per element for small "
    "N (77 us at N=258, 3 us at N=50000), which would otherwise dominate the loader.")


def _parse_pairs(text):
  """'a=1,b=2' -> {'a': '1', 'b': '2'}."""
  return dict(item.split("=", 1) for item in text.split(",") if item)


class _PerCoreClock:
  """Examples per second per core: count / max(wall seconds, process CPU seconds), so a side
  that used more than one core (threads) is charged for every core it used."""

  def __init__(self):
    self._wall, self._cpu = time.perf_counter(), time.process_time()

  def elapsed(self):
    return time.perf_counter() - self._wall

  def rate(self, count):
    wall, cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu
    return count / max(wall, cpu)


def loader_rate(config, num_batches):
  """Examples/s of the Grain loader with 0 workers (one process) over the train split."""
  iterator = iter(loader.make_loader(config, "train", worker_count=0, shard_index=0,
                                     shard_count=1))
  for _ in range(5):  # Warm-up: open files, fill the read-ahead buffer.
    next(iterator)
  clock = _PerCoreClock()
  for _ in range(num_batches):
    next(iterator)
  return clock.rate(num_batches * int(config.batch_size))


def on_the_fly_rates(config, per_task, min_seconds):
  """Examples/s per task making examples from raw slices in-process (degradation + description),
  timing at least `per_task` examples and `min_seconds` per task.

  Returns ({task: examples/s}, mix rate) where the mix weights tasks by their share of the plan
  (time per example averaged with those weights).
  """
  directory = tfds_format.dataset_dir(config.data_dir, config.name, config.version)
  staging_dir = os.path.join(directory, "staging")
  items = planning.plan_items(staging.read_staging_index(staging_dir)["slices"], config)
  reader = staging.RawSliceReader(staging_dir)
  labeller = pseudo_labeller.make_labeller(config)
  rates, shares = {}, {}
  for task in sorted({item["task"] for item in items}):
    task_items = [item for item in items if item["task"] == task]
    shares[task] = len(task_items) / len(items)
    chosen = [task_items[i % len(task_items)] for i in range(per_task)]
    raws = [reader[item["raw_index"]] for item in chosen]  # Reading is not what we time.
    make_example.make_example(raws[0], chosen[0], config, labeller)  # Warm-up (imports).
    clock, count = _PerCoreClock(), 0
    while count < per_task or clock.elapsed() < min_seconds:  # Cycle the chosen items.
      make_example.make_example(raws[count % per_task], chosen[count % per_task], config,
                                labeller)
      count += 1
    rates[task] = clock.rate(count)
  mix = 1.0 / sum(shares[task] / rates[task] for task in rates)
  return rates, mix


def measured_step_seconds(size: str, batch_size: int) -> float:
  """Median seconds of the real MedQ-UNI stage-2 train step of `size` at `batch_size`."""
  from configs import medq_uni  # pylint: disable=g-import-not-at-top
  from medq_jax.train.measure import train_step_seconds  # pylint: disable=g-import-not-at-top
  config = medq_uni.get_config(f"size={size},stage=2")
  with config.unlocked():
    config.train.batch_size = batch_size
  return train_step_seconds(config, iters=5)[1]


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1)
  step_times = {k: None if v == "none" else float(v)
                for k, v in _parse_pairs(_STEP_TIME.value).items()}
  rows, per_task = [], []
  for name, spec in _parse_pairs(_SIZES.value).items():
    image_size, batch_size = (int(v) for v in spec.split(":"))
    config = _CONFIG.value.copy_and_resolve_references()
    config.unlock()
    config.image_size, config.batch_size = image_size, batch_size
    config.examples_per_slice_task *= _REPEATS.value
    for modality in config.examples_per_slice_by_modality:
      config.examples_per_slice_by_modality[modality] *= _REPEATS.value
    config.data_dir = os.path.join(_CONFIG.value.data_dir, f"{name}_{image_size}px")
    manifest = precompute.run_precompute(config)
    precomputed = loader_rate(config, _NUM_BATCHES.value)
    task_rates, on_the_fly = on_the_fly_rates(config, _PER_TASK.value, _MIN_SECONDS.value)
    step = (step_times[name] if name in step_times
            else measured_step_seconds(name, batch_size))
    consumption = batch_size / step if step else None
    rows.append((name, image_size, batch_size, manifest["num_examples"], precomputed,
                 on_the_fly, precomputed / on_the_fly, consumption))
    per_task.append((name, image_size, precomputed, task_rates))
  header = ("config", "px", "batch", "examples", "loader ex/s/core", "on-the-fly ex/s/core",
            "ratio", "train step ex/s", "loader/step")
  print(" | ".join(header))
  print(" | ".join("---" for _ in header))
  for name, px, batch, count, fast, slow, ratio, consumption in rows:
    consumed = f"{consumption:.1f}" if consumption else "n/a"
    headroom = f"{fast / consumption:.1f}x" if consumption else "n/a"
    print(f"{name} | {px} | {batch} | {count} | {fast:.0f} | {slow:.1f} | {ratio:.1f}x | "
          f"{consumed} | {headroom}")
  print("\nPer task (on the fly ex/s/core, and loader/on-the-fly ratio):")
  for name, px, fast, task_rates in per_task:
    print(f"{name} {px}px: " + ", ".join(f"{task} {rate:.0f} ({fast / rate:.0f}x)"
                                         for task, rate in task_rates.items()))


def run_main():
  app.run(main)


if __name__ == "__main__":
  run_main()
