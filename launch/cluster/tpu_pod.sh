#!/usr/bin/env bash
# medq-train on every worker of a Cloud TPU pod slice, one JAX process per host.
#
#   TPU_NAME=medq-v5p-16 TPU_ZONE=us-east5-a MEDQ_REMOTE_REPO='~/medq-jax' \
#   MEDQ_WORKDIR=/mnt/shared/runs/7b_stage1 \
#   MEDQ_CONFIG=configs/unimedvl_7b_stage1.py:mesh=1x-1x1 \
#     launch/cluster/tpu_pod.sh --config.init.bagel_ema=/mnt/shared/ckpt/ema.safetensors
#
# Runs `gcloud compute tpus tpu-vm ssh $TPU_NAME --worker=all --command=...`: the same medq-train
# command on every host, with `--distributed` (jax.distributed.initialize() reads the pod from
# the TPU metadata). The checkout (with its .venv, `pip install -e .` and jax's tpu extra) must be
# at MEDQ_REMOTE_REPO on every worker, and MEDQ_WORKDIR on a filesystem they all see. Optional:
# GCP_PROJECT; MEDQ_DRY_RUN=1 prints the gcloud command instead of running it. Arguments after
# the script go to medq-train.
set -euo pipefail

for name in TPU_NAME TPU_ZONE MEDQ_REMOTE_REPO MEDQ_WORKDIR; do
  if [[ -z ${!name:-} ]]; then
    case $name in
      TPU_NAME) hint="the TPU VM's name, as in gcloud compute tpus tpu-vm list" ;;
      TPU_ZONE) hint="its zone, e.g. us-east5-a" ;;
      MEDQ_REMOTE_REPO) hint="the medq-jax checkout on every worker, e.g. '~/medq-jax'" ;;
      MEDQ_WORKDIR) hint="the run directory on a filesystem every worker sees" ;;
    esac
    echo "tpu_pod.sh: $name is not set ($hint)" >&2
    exit 1
  fi
done
config=${MEDQ_CONFIG:-configs/unimedvl_7b_stage1.py:mesh=1x-1x1}

remote="cd $MEDQ_REMOTE_REPO && .venv/bin/python -u -m launch.train"
for arg in --config="$config" --workdir="$MEDQ_WORKDIR" --distributed "$@"; do
  remote+=" $(printf '%q' "$arg")"
done
command=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$TPU_ZONE" --worker=all
  --command="$remote")
if [[ -n ${GCP_PROJECT:-} ]]; then
  command+=(--project="$GCP_PROJECT")
fi
if [[ -n ${MEDQ_DRY_RUN:-} ]]; then
  printf '%q ' "${command[@]}"
  echo
  exit 0
fi
exec "${command[@]}"
