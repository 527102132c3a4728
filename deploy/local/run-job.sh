#!/usr/bin/env bash
# Run a daskgen job on the cluster that deploy/local/start-cluster.sh started.
#
#   deploy/local/run-job.sh [--state-dir DIR] JOB.yaml [daskgen run options...]
#   deploy/local/run-job.sh [--state-dir DIR] COMMAND [daskgen COMMAND arguments...]
#
# The first form runs `daskgen run JOB.yaml --scheduler-file STATE/scheduler.json ...`; the
# second runs fit, sample or evaluate the same way (plot and data, which use no cluster, run
# here as they are). The exit code is daskgen's: 0 done, 2 bad input or configuration, other: failure.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
state_dir=${DASKGEN_CLUSTER_DIR:-$PWD/.daskgen-cluster}

while [ $# -gt 0 ]; do
    case "$1" in
        --state-dir) state_dir=${2:?--state-dir needs a value}; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) break ;;
    esac
done
if [ $# -lt 1 ]; then
    echo "run-job: expected a job file or a daskgen command (see --help)" >&2
    exit 2
fi

case "$1" in
    plot|data) exec daskgen "$@" ;;  # they use no cluster: run here
esac

scheduler_file=$state_dir/scheduler.json
if [ ! -s "$scheduler_file" ]; then
    echo "run-job: no cluster running from $state_dir (no $scheduler_file);" \
         "start one with $here/start-cluster.sh --state-dir $state_dir" >&2
    exit 2
fi

# The client reads the same Dask settings as the cluster (comm timeouts, retries).
export DASK_CONFIG=${DASK_CONFIG:-$here/../dask.yaml}

case "$1" in
    fit|sample|evaluate|run)
        command=$1
        shift
        exec daskgen "$command" "$@" --scheduler-file "$scheduler_file"
        ;;
    *)
        exec daskgen run "$@" --scheduler-file "$scheduler_file"
        ;;
esac
