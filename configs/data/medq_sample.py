r"""Data config for MedQ-UNI training and benchmarking (the model configs embed it as `config.data`).

Usage (big_vision style):
  launch/precompute.py --config=configs/data/medq_sample.py
  launch/precompute.py --config=configs/data/medq_sample.py:image_size=128,source=ixi
  --config.data_dir=/tmp/medq --config.tasks='("ldct","mri_noise")'

`arg` is a comma-separated list of typed `key=value` options (configs/common.py:parse_arg;
an unknown option or a value of the wrong type is an error naming it):
  image_size=N     output slice size (default 0: 64 px, or 32 px with runlocal)
  source=NAME      medq-sample (default) | ixi | aapm_mayo | udpet | folder
  runlocal[=BOOL]  tiny everything (32 px, few slices, 60 radon angles) for smoke runs

The tasks, which modality gets which task, and each task's parameter sub-config
(`config.<task>`, per-severity values for mild, moderate, severe) come from the degradation
registry: every module of data_pipeline/degradations/ holds one task and its defaults.
"""

import ml_collections

from configs import common
from data_pipeline import example as example_lib
from data_pipeline.degradations import registry


def get_config(arg=None):
  """Returns the data ConfigDict; see module docstring for `arg`."""
  options = common.parse_arg(arg, image_size=0, source="medq-sample", runlocal=False)
  runlocal = options.runlocal
  config = ml_collections.ConfigDict()

  config.name = "medq_sample"  # TFDS dataset name of the precomputed ArrayRecord shards.
  # The loader and precompute read `{data_dir}/{name}/{version}/`. 1.1.0: non-image fields in
  # one JSON feature (faster decode). 1.2.0: six CT patients (was three), splits stratified by
  # modality and task.
  config.version = "1.2.0"
  config.source = options.source
  config.image_size = options.image_size or (32 if runlocal else 64)
  config.data_dir = "/tmp/medq_data"  # Where precompute writes and the loader reads.
  config.seed = 0  # Global seed: degradations, severities, phrasings, splits.

  # Real datasets by path (see docs/data_pipeline.md for the directory layouts).
  config.paths = ml_collections.ConfigDict()
  config.paths.ixi = ""
  config.paths.aapm_mayo = ""
  config.paths.udpet = ""
  config.paths.folder = ""
  config.folder_modality = "MRI"  # Modality assumed for a generic folder.
  config.folder_anatomy = "brain"

  # Slicing and normalisation.
  config.max_slices_per_volume = 6 if runlocal else 24  # Evenly spaced axial slices per volume.
  config.min_foreground_fraction = 0.10  # Drop slices with fewer pixels above 0.05.
  config.ct_window = (-160.0, 240.0)  # HU window (level 40, width 400: soft tissue).
  config.mri_percentiles = (0.5, 99.5)  # Per-volume percentile scaling to [0, 1].
  config.pet_percentile = 99.9  # Activity scaling: divide by this percentile.
  config.pet_from_mri = True  # Simulate PET activity maps from brain MRI (marked simulated).

  # Which tasks apply to which modality, from each degradation's `modalities`. Fundus has no
  # task of its own among the paper's five; it receives the noise task (described as sensor
  # noise) unless this is emptied. `tasks` restricts the tasks that are built.
  config.tasks = registry.names()
  config.modality_tasks = ml_collections.ConfigDict(registry.modality_tasks())
  config.severities = example_lib.SEVERITIES
  # Degraded examples per (slice, task): each draw has its own seed and a severity drawn by the
  # seeded RNG; id `source:file:slice:task:k`. All draws of a slice belong to its patient and so
  # to one split (the split is by patient, weighted by these examples).
  config.examples_per_slice_task = 1
  # Per-modality override of examples_per_slice_task. medq-sample has only 7 CT slices (six
  # patients) and 1 fundus image: more draws per slice keep those tasks from vanishing in the
  # mix. Repeats add severities and noise realisations, not anatomy.
  config.examples_per_slice_by_modality = ml_collections.ConfigDict({"CT": 8, "fundus": 4})
  # The default label rule (a degradation module may set its own `label_rule`).
  config.quality_label_by_severity = ml_collections.ConfigDict(registry.DEFAULT_QUALITY_LABELS)

  # Real paired data: map the acquired dose reduction to a severity.
  config.paired_severity = ml_collections.ConfigDict()
  config.paired_severity.aapm_quarter_dose = "moderate"
  config.paired_severity.udpet_drf_mild_max = 10.0  # DRF <= this: mild
  config.paired_severity.udpet_drf_moderate_max = 50.0  # DRF <= this: moderate, else severe.

  # Splits by patient, stratified: within each modality (and each modality/task) the examples
  # come close to these fractions, and a modality with >= 2 patients has patients in train and
  # held out (bench first, then val). A single-patient modality goes to train (logged).
  config.split_fractions = ml_collections.ConfigDict({"train": 0.8, "val": 0.1, "bench": 0.1})

  # Descriptions.
  config.labeller = "template"  # template | chat (OpenAI-compatible endpoint from env).
  config.labeller_timeout_s = 60.0
  config.labeller_retries = 3

  # Precompute.
  config.examples_per_shard = 64 if runlocal else 256
  config.num_workers = 2  # Grain worker processes for degradation + description.

  # Loader.
  config.batch_size = 8
  config.shuffle_seed = 42
  config.loader_workers = 0
  config.prefetch_buffer = 2

  # Per-task parameters `config.<task>` from the task's module in data_pipeline/degradations/;
  # per-severity fields hold one value per severity (mild, moderate, severe).
  for task in registry.names():
    if task in config:
      raise ValueError(
        f"degradation {task!r}: its name collides with the data config field "
        f"config.{task}; rename the degradation"
      )
    config[task] = ml_collections.ConfigDict(registry.get(task).default_params(runlocal))
  return config
