#!/usr/bin/env bash
# N JAX processes on this machine, as a cluster of N hosts would run them: each process gets
# --coordinator=127.0.0.1:PORT --num_processes=N --process_id=I (launch/distributed.py) and, when
# DEVICES_PER_PROCESS > 0, --local_devices=DEVICES_PER_PROCESS fake CPU devices.
#
#   launch/cluster/local.sh 2 4 .venv/bin/python -m launch.train \
#       --config=configs/medq_uni.py:size=tiny,stage=1,mesh=2x2x2 --workdir=runs/local2
#
# Process I's output goes to $MEDQ_LOG_DIR/process_I.log (default: a new temporary directory,
# printed first). If one process fails, the others are stopped and the script exits with its
# status, naming it and printing the end of its log. MEDQ_PORT picks the coordinator port
# (default: a free one).
set -euo pipefail

usage="usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS COMMAND [ARGS...]"
if (($# < 3)); then
  echo "$usage" >&2
  exit 2
fi
num_processes=$1
devices=$2
shift 2
if ! [[ $num_processes =~ ^[1-9][0-9]*$ ]]; then
  echo "$0: NUM_PROCESSES must be a positive integer, got '$num_processes'" >&2
  exit 2
fi
if ! [[ $devices =~ ^[0-9]+$ ]]; then
  echo "$0: DEVICES_PER_PROCESS must be a non-negative integer, got '$devices'" >&2
  exit 2
fi

port=${MEDQ_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
log_dir=${MEDQ_LOG_DIR:-$(mktemp -d -t medq_local.XXXXXX)}
mkdir -p "$log_dir"
echo "local.sh: $num_processes processes, coordinator 127.0.0.1:$port, logs in $log_dir"

device_flag=()
if ((devices > 0)); then
  device_flag=(--local_devices="$devices")
fi

pids=()
stop_all() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < num_processes; i++)); do
  "$@" --coordinator="127.0.0.1:$port" --num_processes="$num_processes" --process_id="$i" \
    "${device_flag[@]}" >"$log_dir/process_$i.log" 2>&1 &
  pids+=($!)
done

# Wait for the processes in the order they finish; the first failure stops the rest.
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  status=0
  wait -n -p done_pid "${running[@]}" || status=$?
  still=()
  for pid in "${running[@]}"; do
    if [[ $pid != "$done_pid" ]]; then still+=("$pid"); fi
  done
  running=("${still[@]}")
  if ((status != 0)); then
    failed=?
    for ((i = 0; i < num_processes; i++)); do
      if [[ ${pids[$i]} == "$done_pid" ]]; then failed=$i; fi
    done
    echo "local.sh: process $failed exited with status $status; stopping the others" >&2
    echo "--- last lines of $log_dir/process_$failed.log ---" >&2
    tail -n 20 "$log_dir/process_$failed.log" >&2 || true
    stop_all
    wait || true
    exit "$status"
  fi
done
echo "local.sh: all $num_processes processes finished"
