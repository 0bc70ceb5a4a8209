r"""Renders precomputed examples as a PNG grid: low-quality | reference | |difference|, text below.

  python -m launch.render_examples --config=configs/data/medq_sample.py \
      --config.data_dir=/tmp/medq_data --split=train --num=6 --out=/tmp/medq_examples.png
Examples are picked to cover as many tasks as possible.
"""

import textwrap

import matplotlib
from absl import flags

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from data_pipeline import loader, tfds_format
from launch import cli

_CONFIG = cli.define_config_file("config", "configs/data/medq_sample.py", "Data config file.")
_SPLIT = flags.DEFINE_string("split", "train", "Split to render.")
_NUM = flags.DEFINE_integer("num", 6, "Number of examples (rows).")
_OUT = flags.DEFINE_string("out", "/tmp/medq_examples.png", "Output PNG path.")


def pick_examples(source, num):
  """Up to `num` decoded examples, round-robin over tasks so every task shows."""
  by_task = {}
  for index in range(len(source)):
    example = tfds_format.from_stored(source[index])
    by_task.setdefault(example["task"], []).append(example)
  picked = []
  while len(picked) < num and any(by_task.values()):
    for task in sorted(by_task):
      if by_task[task] and len(picked) < num:
        picked.append(by_task[task].pop(0))
  return picked


def render(examples, path):
  """Writes the grid: per example a row of three images and a text row with the description."""
  figure = plt.figure(figsize=(10.5, 4.6 * len(examples)))
  grid = figure.add_gridspec(
    2 * len(examples), 3, height_ratios=[3.2, 1.2] * len(examples), hspace=0.15, wspace=0.05
  )
  for row, example in enumerate(examples):
    difference = np.abs(example["low"] - example["high"])
    titles = (
      f"low-quality: {example['modality']} {example['task']} ({example['severity']})",
      "reference",
      f"|difference| (max {difference.max():.2f})",
    )
    for column, (image, title) in enumerate(
      zip((example["low"], example["high"], difference), titles)
    ):
      axis = figure.add_subplot(grid[2 * row, column])
      axis.imshow(
        image, cmap="gray", vmin=0, vmax=1 if column < 2 else None, interpolation="nearest"
      )
      axis.set_title(title, fontsize=9)
      axis.axis("off")
    text_axis = figure.add_subplot(grid[2 * row + 1, :])
    text_axis.axis("off")
    text = f"[{example['id']}]  {example['instruction']}\n" + "\n".join(
      textwrap.wrap(example["description"], 125)
    )
    text_axis.text(
      0.0, 1.0, text, fontsize=8, va="top", family="monospace", transform=text_axis.transAxes
    )
  figure.savefig(path, dpi=72, bbox_inches="tight")
  plt.close(figure)


def main(argv):
  del argv
  config = _CONFIG.value
  source = loader.data_source(config.data_dir, _SPLIT.value, config.name, config.version)
  render(pick_examples(source, _NUM.value), _OUT.value)
  print(f"wrote {_OUT.value}")


def run_main():
  cli.run(main)


if __name__ == "__main__":
  run_main()
