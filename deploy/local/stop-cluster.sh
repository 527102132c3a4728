#!/usr/bin/env bash
# Stop the Dask cluster that deploy/local/start-cluster.sh started from a state directory.
#
#   deploy/local/stop-cluster.sh [--state-dir DIR] [--timeout SECONDS]
#
# Signals exactly the process groups whose leader PIDs start-cluster.sh recorded in
# STATE/pids/ (the workers first, then the scheduler): SIGTERM, then SIGKILL for whatever is
# still alive after --timeout seconds. Never looks processes up by name. A recorded PID that
# now belongs to an unrelated process (its command line does not name this state directory)
# is left alone. Exits 0 when nothing that was recorded is left running.
set -euo pipefail

state_dir=${DASKGEN_CLUSTER_DIR:-$PWD/.daskgen-cluster}
timeout=20

while [ $# -gt 0 ]; do
    case "$1" in
        --state-dir) state_dir=${2:?--state-dir needs a value}; shift 2 ;;
        --timeout) timeout=${2:?--timeout needs a value}; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "stop-cluster: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
if ! [[ $timeout =~ ^[0-9]+$ ]]; then
    echo "stop-cluster: --timeout must be a whole number of seconds, got '$timeout'" >&2
    exit 2
fi

pid_dir=$state_dir/pids
if ! compgen -G "$pid_dir/*.pid" > /dev/null; then
    echo "stop-cluster: no cluster recorded in $state_dir (nothing to stop)"
    exit 0
fi
state_dir=$(cd "$state_dir" && pwd)

cmdline() {  # the command line of PID, or nothing
    if [ -r "/proc/$1/cmdline" ]; then
        tr '\0' ' ' < "/proc/$1/cmdline"
    else
        ps -o args= -p "$1" 2>/dev/null || true
    fi
}

alive() {  # is process $1 running (not a zombie waiting to be reaped)?
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ -n $state && $state != Z* ]]
}

group_alive() {  # is any process of process group $1 running (zombies do not count)?
    ps -e -o pgid= -o stat= 2>/dev/null | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { found = 1 } END { exit !found }'
}

# The groups to stop: workers first (so they do not try to reconnect), the scheduler last.
groups=()
for f in "$pid_dir"/worker-*.pid "$pid_dir"/scheduler.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if ! [[ $pid =~ ^[0-9]+$ ]]; then
        echo "stop-cluster: ignoring $f: not a PID" >&2
        continue
    fi
    if alive "$pid" && [[ $(cmdline "$pid") != *"$state_dir"* ]]; then
        # The leader is alive but is not ours: the PID was reused after our process exited.
        echo "stop-cluster: PID $pid from $f now runs something else; leaving it alone" >&2
        continue
    fi
    # A leader that exited may have left children in its group; a process group ID is not
    # reused while any member exists, so signalling the group reaches only our processes.
    if group_alive "$pid"; then
        groups+=("$pid")
    fi
done

signal_all() {
    local sig=$1 pid
    for pid in "${groups[@]}"; do
        kill "-$sig" -- "-$pid" 2>/dev/null || true
    done
}

wait_gone() {  # wait_gone SECONDS: true when every group is empty
    local deadline=$((SECONDS + $1)) pid alive
    while :; do
        alive=0
        for pid in "${groups[@]}"; do
            if group_alive "$pid"; then alive=1; fi
        done
        [ $alive -eq 0 ] && return 0
        [ $SECONDS -ge "$deadline" ] && return 1
        sleep 0.2
    done
}

if [ ${#groups[@]} -gt 0 ]; then
    echo "stopping process groups: ${groups[*]}"
    signal_all TERM
    if ! wait_gone "$timeout"; then
        echo "stop-cluster: still running after ${timeout}s; sending SIGKILL" >&2
        signal_all KILL
        if ! wait_gone 10; then
            echo "stop-cluster: could not stop process groups ${groups[*]}" >&2
            exit 1
        fi
    fi
fi

rm -f "$pid_dir"/*.pid "$state_dir/scheduler.json"
echo "cluster stopped"
