r"""Data config for MedQ-UNI training and benchmarking (the model configs embed it as `config.data`).

Usage (big_vision style):
  launch/precompute.py --config=configs/data/medq_sample.py
  launch/precompute.py --config=configs/data/medq_sample.py:image_size=128,source=ixi
  --config.data_dir=/tmp/medq --config.tasks='("ldct","mri_noise")'

`arg` is a comma-separated list of `key=value` options:
  image_size=N     output slice size (default 64: tests and CPU)
  source=NAME      medq-sample (default) | ixi | aapm_mayo | udpet | folder
  runlocal         tiny everything (32 px, few slices, 60 radon angles) for smoke runs
"""

import ml_collections

TASKS = ("ldct", "mri_undersampling", "mri_motion", "mri_noise", "pet_lowcount")
SEVERITIES = ("mild", "moderate", "severe")


def _parse_arg(arg):
  """'image_size=128,runlocal' -> {'image_size': '128', 'runlocal': True}."""
  options = {}
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, _, value = item.partition("=")
    options[key.strip()] = value.strip() if value else True
  return options


def get_config(arg=None):
  """Returns the data ConfigDict; see module docstring for `arg`."""
  options = _parse_arg(arg)
  runlocal = bool(options.get("runlocal", False))
  config = ml_collections.ConfigDict()

  config.name = "medq_sample"  # TFDS dataset name of the precomputed ArrayRecord shards.
  config.version = "1.1.0"  # 1.1.0: non-image fields in one JSON feature (faster decode)
  config.source = str(options.get("source", "medq-sample"))
  config.image_size = int(options.get("image_size", 32 if runlocal else 64))
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

  # Which tasks apply to which modality. Fundus has no task of its own among the paper's
  # five; it receives the noise task (described as sensor noise) unless this is emptied.
  config.tasks = TASKS
  config.modality_tasks = ml_collections.ConfigDict({
      "CT": ("ldct",),
      "MRI": ("mri_undersampling", "mri_motion", "mri_noise"),
      "PET": ("pet_lowcount",),
      "fundus": ("mri_noise",),
  })
  config.severities = SEVERITIES
  config.examples_per_slice_task = 1  # Severities drawn per (slice, task) by the seeded RNG.
  # medq-sample has only 4 CT slices and 1 fundus image: more draws (other seed and severity)
  # per slice keep those tasks from vanishing in the mix.
  config.examples_per_slice_by_modality = ml_collections.ConfigDict({"CT": 8, "fundus": 4})
  config.quality_label_by_severity = ml_collections.ConfigDict(
      {"mild": "good", "moderate": "usable", "severe": "reject"})

  # Per-task parameters, one value per severity (mild, moderate, severe).
  config.ldct = ml_collections.ConfigDict()
  config.ldct.photons = (2.0e4, 5.0e3, 1.2e3)  # Incident photons per detector bin.
  config.ldct.num_angles = 60 if runlocal else 180
  config.ldct.mu_water_per_mm = 0.0192  # Attenuation at image value 1.0 (~water at 70 keV).
  config.ldct.field_of_view_mm = 250.0  # Physical width of the slice.
  config.ldct.filter_name = "ramp"

  config.mri_undersampling = ml_collections.ConfigDict()
  config.mri_undersampling.acceleration = (4.0, 4.0, 4.0)
  config.mri_undersampling.center_fraction = (0.16, 0.08, 0.04)
  config.mri_undersampling.density_std = 0.25  # Gaussian std as a fraction of the k-space width.

  config.mri_motion = ml_collections.ConfigDict()
  config.mri_motion.degrees = (1.0, 3.0, 6.0)
  config.mri_motion.translation_mm = (1.0, 3.0, 6.0)
  config.mri_motion.num_transforms = (2, 3, 4)
  config.mri_motion.field_of_view_mm = 220.0  # Pixel spacing = this / image_size.

  config.mri_noise = ml_collections.ConfigDict()
  config.mri_noise.model = "rician"  # rician | torchio_gaussian (TorchIO RandomNoise).
  config.mri_noise.sigma = (0.02, 0.05, 0.10)  # Relative to the [0, 1] image range.

  config.pet_lowcount = ml_collections.ConfigDict()
  config.pet_lowcount.full_dose_counts = 2000.0  # Expected counts at activity 1.0, full dose.
  config.pet_lowcount.dose_reduction = (4.0, 20.0, 100.0)

  # Real paired data: map the acquired dose reduction to a severity.
  config.paired_severity = ml_collections.ConfigDict()
  config.paired_severity.aapm_quarter_dose = "moderate"
  config.paired_severity.udpet_drf_mild_max = 10.0  # DRF <= this: mild
  config.paired_severity.udpet_drf_moderate_max = 50.0  # DRF <= this: moderate, else severe.

  # Splits by patient.
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
  return config
