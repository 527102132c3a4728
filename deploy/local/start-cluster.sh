#!/usr/bin/env bash
# Start a Dask cluster on this machine: one `dask scheduler` and N `dask worker` processes,
# all listening on 127.0.0.1 only, sharing a scheduler file in a state directory.
#
#   deploy/local/start-cluster.sh [--nworkers N] [--nthreads T] [--memory-limit SIZE]
#                                 [--port P] [--dashboard-port P] [--state-dir DIR]
#                                 [--config FILE] [--timeout SECONDS]
#
# Each process is started in a session (and process group) of its own and its PID recorded
# in STATE/pids/, so that deploy/local/stop-cluster.sh stops exactly these processes and
# their children, and nothing else. Logs go to STATE/logs/. The script returns once the
# scheduler file exists and all N workers have connected, or fails (and stops what it
# started) after --timeout seconds.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

nworkers=2
nthreads=1
memory_limit=auto
port=8786
dashboard_port=8787
state_dir=${DASKGEN_CLUSTER_DIR:-$PWD/.daskgen-cluster}
config=${DASK_CONFIG:-$here/../dask.yaml}
timeout=60

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
    cat <<EOF
Defaults: --nworkers $nworkers --nthreads $nthreads --memory-limit $memory_limit --port $port
          --dashboard-port $dashboard_port --state-dir \$DASKGEN_CLUSTER_DIR or ./.daskgen-cluster
          --config \$DASK_CONFIG or deploy/dask.yaml --timeout $timeout
EOF
}

need_value() {
    if [ $# -lt 2 ] || [ -z "$2" ]; then
        echo "start-cluster: $1 needs a value" >&2
        exit 2
    fi
}

while [ $# -gt 0 ]; do
    case "$1" in
        --nworkers) need_value "$@"; nworkers=$2; shift 2 ;;
        --nthreads) need_value "$@"; nthreads=$2; shift 2 ;;
        --memory-limit) need_value "$@"; memory_limit=$2; shift 2 ;;
        --port) need_value "$@"; port=$2; shift 2 ;;
        --dashboard-port) need_value "$@"; dashboard_port=$2; shift 2 ;;
        --state-dir) need_value "$@"; state_dir=$2; shift 2 ;;
        --config) need_value "$@"; config=$2; shift 2 ;;
        --timeout) need_value "$@"; timeout=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "start-cluster: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

for pair in "nworkers:$nworkers" "nthreads:$nthreads" "port:$port" "dashboard-port:$dashboard_port" "timeout:$timeout"; do
    name=${pair%%:*} value=${pair#*:}
    if ! [[ $value =~ ^[0-9]+$ ]] || [ "$value" -lt 1 ]; then
        echo "start-cluster: --$name must be a positive integer, got '$value'" >&2
        exit 2
    fi
done
if [ ! -f "$config" ]; then
    echo "start-cluster: no Dask config file at $config" >&2
    exit 2
fi

dask_bin=$(command -v dask || true)
if [ -z "$dask_bin" ]; then
    echo "start-cluster: the 'dask' command is not on PATH (activate the environment daskgen is installed in)" >&2
    exit 2
fi
python_bin=${PYTHON:-$(dirname "$dask_bin")/python}
[ -x "$python_bin" ] || python_bin=python3

mkdir -p "$state_dir"
state_dir=$(cd "$state_dir" && pwd)
config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")
pid_dir=$state_dir/pids
log_dir=$state_dir/logs
scheduler_file=$state_dir/scheduler.json

alive() {  # is process $1 running (not a zombie waiting to be reaped)?
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ -n $state && $state != Z* ]]
}

group_alive() {  # is any process of process group $1 running?
    ps -e -o pgid= -o stat= 2>/dev/null | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { found = 1 } END { exit !found }'
}

# Refuse to start a second cluster over a running one: its PIDs would be lost.
if compgen -G "$pid_dir/*.pid" > /dev/null; then
    for f in "$pid_dir"/*.pid; do
        pid=$(cat "$f")
        if [[ $pid =~ ^[0-9]+$ ]] && group_alive "$pid"; then
            echo "start-cluster: a cluster started from $state_dir is still running (PID $pid);" \
                 "stop it first: $here/stop-cluster.sh --state-dir $state_dir" >&2
            exit 1
        fi
    done
fi
rm -rf "$pid_dir" "$scheduler_file"
mkdir -p "$pid_dir" "$log_dir" "$state_dir/worker-space"

export DASK_CONFIG=$config

# `setsid` gives each process its own session and process group (PGID = PID): the stop script
# signals the group, which also reaches a worker's child process, and a Ctrl-C in this terminal
# does not reach the cluster.
launcher=()
if command -v setsid > /dev/null; then
    launcher=(setsid)
fi

start() {  # start NAME COMMAND...: run detached, log to logs/NAME.log, record the PID
    local name=$1
    shift
    "${launcher[@]}" "$@" < /dev/null > "$log_dir/$name.log" 2>&1 &
    echo $! > "$pid_dir/$name.pid"
}

failed() {
    echo "start-cluster: $1" >&2
    for log in "$log_dir"/*.log; do
        [ -f "$log" ] || continue
        echo "--- last lines of $log" >&2
        tail -n 15 "$log" >&2
    done
    "$here/stop-cluster.sh" --state-dir "$state_dir" --timeout 10 >&2 || true
    exit 1
}

start scheduler "$dask_bin" scheduler \
    --host 127.0.0.1 --port "$port" \
    --dashboard-address "127.0.0.1:$dashboard_port" \
    --scheduler-file "$scheduler_file"

deadline=$((SECONDS + timeout))
until [ -s "$scheduler_file" ]; do
    if ! alive "$(cat "$pid_dir/scheduler.pid")"; then
        failed "the scheduler exited (port $port or $dashboard_port in use?)"
    fi
    if [ $SECONDS -ge $deadline ]; then
        failed "no scheduler file at $scheduler_file after ${timeout}s"
    fi
    sleep 0.2
done

for i in $(seq 1 "$nworkers"); do
    start "worker-$i" "$dask_bin" worker \
        --scheduler-file "$scheduler_file" \
        --name "local-worker-$i" \
        --nworkers 1 --nthreads "$nthreads" --memory-limit "$memory_limit" \
        --host 127.0.0.1 --dashboard-address 127.0.0.1:0 \
        --local-directory "$state_dir/worker-space" \
        --death-timeout 60
done

remaining=$((deadline - SECONDS))
[ $remaining -ge 1 ] || remaining=1
if ! dashboard=$("$python_bin" - "$scheduler_file" "$nworkers" "$remaining" <<'EOF'
import sys

from distributed import Client

path, n, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with Client(scheduler_file=path, timeout=timeout) as client:
    client.wait_for_workers(n, timeout=timeout)
    print(client.dashboard_link)
EOF
); then
    failed "$nworkers worker(s) did not connect within ${timeout}s"
fi

address=$("$python_bin" -c 'import json, sys; print(json.load(open(sys.argv[1]))["address"])' "$scheduler_file")
cat <<EOF
Dask cluster running: scheduler $address, $nworkers worker(s) x $nthreads thread(s), memory limit $memory_limit
  dashboard:       $dashboard
  scheduler file:  $scheduler_file
  logs:            $log_dir
  run a job:       $here/run-job.sh --state-dir $state_dir JOB.yaml
  stop:            $here/stop-cluster.sh --state-dir $state_dir
EOF
