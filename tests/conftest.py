"""Test-wide setup: 8 fake CPU devices (set before JAX is imported) and shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


import socket

import pytest


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
