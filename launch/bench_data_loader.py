r"""Data benchmark of the trainer's own input pipeline, per core: Grain over the precomputed
ArrayRecord shards, decoded and packed into model rows exactly as `medq-train` does
(`medq_jax.train.data.make_train_loader`: the one data loader with the layout packer), against
(a) making the same rows on the fly from raw slices (degradation + description + packing) and
(b) what the train step consumes.

  python -m launch.bench_data_loader --config=configs/data/medq_sample.py \
      --config.data_dir=/tmp/medq_bench --num_batches=200

For each model size (tiny, small) it precomputes medq-sample at that size's image size (reused
when there: the precompute resumes) and trains the size's tokenizer once, then measures in one
process (one core):
  * loader: rows/s of the trainer's loader (0 workers: reading and consuming share one core);
  * on the fly: rows made from raw slices in-process, timed per task and combined with the
    plan's task mix;
  * train step: batch_size / step seconds of the real stage-2 step of configs/medq_uni.py at that
    size (model, frozen-VAE pixel losses, optimizer), measured here unless --step_time_s gives it.
The last line is `loader_vs_train_step_small=<x>`: loader rows/s over the rows/s the `small`
train step consumes (target >= 2).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # One core per measurement.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import time  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from data_pipeline import (
  make_example,  # pylint: disable=g-import-not-at-top
  planning,  # pylint: disable=g-import-not-at-top
  precompute,  # pylint: disable=g-import-not-at-top
  pseudo_labeller,  # pylint: disable=g-import-not-at-top
  staging,  # pylint: disable=g-import-not-at-top
  tfds_format,  # pylint: disable=g-import-not-at-top
)
from launch import cli, distributed, prepare  # pylint: disable=g-import-not-at-top

_CONFIG = cli.define_config_file("config", "configs/data/medq_sample.py", "Data config file.")
flags.adopt_module_key_flags(distributed)
_STEP_TIME = flags.DEFINE_string(
  "step_time_s",
  "",
  "Train step time per model config, e.g. 'tiny=0.05,small=0.5' (s); "
  "'base=none' skips the train step column for that config.",
)
_SIZES = flags.DEFINE_string(
  "sizes",
  "tiny=32:8,small=64:16",
  "model config -> image_size:batch_size; add e.g. base=256:8 for paper-scale slices.",
)
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 1000, "Loader batches to time.")
_MIN_SECONDS = flags.DEFINE_float("min_seconds", 1.0, "Least time spent timing each task.")
_PER_TASK = flags.DEFINE_integer("on_the_fly_per_task", 20, "On-the-fly examples per task.")
_REPEATS = flags.DEFINE_integer(
  "examples_per_slice",
  8,
  "Multiplies the draws per (slice, task) so the benchmark dataset "
  "has thousands of examples: Grain's index_shuffle costs ~20000/N us per element for small "
  "N (77 us at N=258, 3 us at N=50000), which would otherwise dominate the loader.",
)


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


def model_config_for(size, data_config, batch_size):
  """configs/medq_uni.py at `size`, stage 2, reading `data_config`, at `batch_size`."""
  from configs import medq_uni  # pylint: disable=g-import-not-at-top

  config = medq_uni.get_config(f"size={size},stage=2")
  with config.unlocked():
    config.data = data_config
    config.train.batch_size = batch_size
  return config


def trainer_loader_rate(model_config, tokenizer_dir, num_batches):
  """Rows/s of the trainer's loader (decode + pack; 0 workers, one process) over train."""
  from medq_jax import layout as layout_lib  # pylint: disable=g-import-not-at-top
  from medq_jax.train import data as train_data  # pylint: disable=g-import-not-at-top

  spec = layout_lib.LayoutSpec.from_config(model_config.model, model_config.layout, 2)
  iterator = iter(train_data.make_train_loader(model_config, tokenizer_dir, spec, worker_count=0))
  for _ in range(5):  # Warm-up: open files, load the tokenizer, fill the read-ahead buffer.
    next(iterator)
  clock = _PerCoreClock()
  for _ in range(num_batches):
    next(iterator)
  return clock.rate(num_batches * int(model_config.train.batch_size)), spec


def on_the_fly_rates(config, per_task, min_seconds, pack):
  """Rows/s per task making packed rows from raw slices in-process (degradation, description,
  `pack`), timing at least `per_task` rows and `min_seconds` per task.

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
    pack(make_example.make_example(raws[0], chosen[0], config, labeller))  # Warm-up.
    clock, count = _PerCoreClock(), 0
    while count < per_task or clock.elapsed() < min_seconds:  # Cycle the chosen items.
      pack(
        make_example.make_example(
          raws[count % per_task], chosen[count % per_task], config, labeller
        )
      )
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
  distributed.initialize()
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(1)
  step_times = {
    k: None if v == "none" else float(v) for k, v in _parse_pairs(_STEP_TIME.value).items()
  }
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
    model_config = model_config_for(name, config, batch_size)
    tokenizer_dir = prepare.ensure_tokenizer(model_config, os.path.join(config.data_dir, "run"))
    loader_rate, layout_spec = trainer_loader_rate(model_config, tokenizer_dir, _NUM_BATCHES.value)
    from medq_jax import layout as layout_lib  # pylint: disable=g-import-not-at-top

    pack = layout_lib.PackExamples(tokenizer_dir, layout_spec)
    task_rates, on_the_fly = on_the_fly_rates(config, _PER_TASK.value, _MIN_SECONDS.value, pack)
    step = step_times[name] if name in step_times else measured_step_seconds(name, batch_size)
    consumption = batch_size / step if step else None
    rows.append(
      (
        name,
        image_size,
        batch_size,
        manifest["num_examples"],
        loader_rate,
        on_the_fly,
        loader_rate / on_the_fly,
        consumption,
      )
    )
    per_task.append((name, image_size, loader_rate, task_rates))
  header = (
    "config",
    "px",
    "batch",
    "examples",
    "trainer loader rows/s/core",
    "on-the-fly rows/s/core",
    "ratio",
    "train step rows/s",
    "loader/step",
  )
  print(" | ".join(header))
  print(" | ".join("---" for _ in header))
  for name, px, batch, count, fast, slow, ratio, consumption in rows:
    consumed = f"{consumption:.1f}" if consumption else "n/a"
    headroom = f"{fast / consumption:.1f}x" if consumption else "n/a"
    print(
      f"{name} | {px} | {batch} | {count} | {fast:.0f} | {slow:.1f} | {ratio:.1f}x | "
      f"{consumed} | {headroom}"
    )
  print("\nPer task (on the fly rows/s/core, and loader/on-the-fly ratio):")
  for name, px, fast, task_rates in per_task:
    print(
      f"{name} {px}px: "
      + ", ".join(f"{task} {rate:.0f} ({fast / rate:.0f}x)" for task, rate in task_rates.items())
    )
  small = next((row for row in rows if row[0] == "small" and row[7]), None)
  if small:
    print(f"loader_vs_train_step_small={small[4] / small[7]:.1f}")


def run_main():
  cli.run(main)


if __name__ == "__main__":
  run_main()
