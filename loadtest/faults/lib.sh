# Shared by the fault scripts (sourced, not run): find the binaries, start onestep-serve on a free loopback port,
# sample its resident memory, read its /metrics gauges, measure its capacity, and keep the score for the final
# PASS/FAIL line. Every script cleans up after itself through the EXIT trap set here, even when interrupted.

set -euo pipefail

FAULTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$FAULTS_DIR/../.." && pwd)
# onestep-serve without --models serves ./models (the default model, models/shapes16-cd-int8).
cd "$REPO"

# ONESTEP_BIN: a folder holding onestep-serve and onestep-load (default: the first release build found).
if [[ -z ${ONESTEP_BIN:-} ]]; then
    for candidate in "$REPO/.build-faults/release" "$REPO/.build/release"; do
        if [[ -x $candidate/onestep-serve && -x $candidate/onestep-load ]]; then ONESTEP_BIN=$candidate; break; fi
    done
fi
if [[ -z ${ONESTEP_BIN:-} || ! -x $ONESTEP_BIN/onestep-serve || ! -x $ONESTEP_BIN/onestep-load ]]; then
    echo "no onestep-serve/onestep-load build found; run: swift build -c release --scratch-path .build-faults" >&2
    echo "(or set ONESTEP_BIN to the folder that holds both)" >&2
    exit 2
fi
for tool in curl jq awk; do
    command -v "$tool" >/dev/null || { echo "$tool is needed by the fault scripts" >&2; exit 2; }
done
SERVE=$ONESTEP_BIN/onestep-serve
LOAD=$ONESTEP_BIN/onestep-load
# FAULTS_KEEP=1 keeps the work folder (server log, JSON reports, memory samples) for a post-mortem.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/onestep-faults.XXXXXX")
SERVER_PID=""
SAMPLER_PID=""
FAILURES=()

cleanup() {
    [[ -n $SAMPLER_PID ]] && kill "$SAMPLER_PID" 2>/dev/null || true
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ ${FAULTS_KEEP:-0} == 1 ]]; then echo "work files kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# raise_fd_limit N: the soft limit on open files to at least N (idle connections need one descriptor each,
# on both sides, as the client and server run in this shell's process tree).
raise_fd_limit() {
    local want=$1
    if (($(ulimit -n) < want)); then
        ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    fi
    if (($(ulimit -n) < want)); then
        echo "ulimit -n is $(ulimit -n) and cannot be raised to $want (hard limit $(ulimit -Hn))" >&2
        exit 2
    fi
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# start_server [flags...]: onestep-serve on 127.0.0.1, port chosen by the kernel; sets SERVER_PID, PORT, BASE.
start_server() {
    "$SERVE" --port 0 --no-access-log "$@" >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    PORT=""
    for _ in $(seq 300); do
        PORT=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$WORK/server.log" | grep -o '[0-9]*$' || true)
        [[ -n $PORT ]] && break
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z $PORT ]]; then
        echo "onestep-serve did not start; its output:" >&2
        cat "$WORK/server.log" >&2
        exit 1
    fi
    BASE="http://127.0.0.1:$PORT"
    echo "server: pid $SERVER_PID on $BASE ($*)"
}

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$SERVER_PID/status"; }

# server_cpu_ticks: CPU time (user + system, clock ticks) of the server's threads so far, as "compute other":
# the threads named onestep-compute, and all the others (the HTTP event loop above all).
server_cpu_ticks() {
    local compute=0 other=0 task ticks
    for task in /proc/"$SERVER_PID"/task/*; do
        ticks=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "$task/stat" 2>/dev/null) || continue
        if [[ $(cat "$task/comm" 2>/dev/null) == onestep-compute ]]; then
            compute=$((compute + ticks))
        else
            other=$((other + ticks))
        fi
    done
    echo "$compute $other"
}
fd_count() { ls "/proc/$SERVER_PID/fd" | wc -l; }

# start_rss_sampler FILE SECONDS: "epoch_seconds rss_kb" lines every SECONDS until stop_rss_sampler.
start_rss_sampler() {
    local file=$1 every=$2
    (while kill -0 "$SERVER_PID" 2>/dev/null; do
        echo "$(date +%s.%N) $(rss_kb)" >>"$file" 2>/dev/null || true
        sleep "$every"
    done) &
    SAMPLER_PID=$!
}
stop_rss_sampler() { kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=""; }

# rss_at FILE EPOCH: the first sample at or after EPOCH (the last one if none is later).
rss_at() { awk -v t="$2" '$1 >= t {print $2; found=1; exit} {last=$2} END {if (!found) print last}' "$1"; }
# rss_last_before FILE EPOCH: the last sample before EPOCH.
rss_last_before() { awk -v t="$2" '$1 < t {v=$2} END {print v}' "$1"; }
rss_max() { awk 'BEGIN {m=0} $2 > m {m=$2} END {print m}' "$1"; }

# metric NAME[{labels}]: the value of one series from /metrics (0 when absent).
metric() {
    curl -s --max-time 5 "$BASE/metrics" | awk -v n="$1" '$1 == n {v=$2} END {print (v == "" ? 0 : v)}'
}

# gauges: the four gauges that must come back to baseline, as "open pending queue running". The scrape itself
# is one open connection and one pending response, so the idle baseline is "1 1 0 0".
gauges() {
    curl -s --max-time 5 "$BASE/metrics" | awk '
        $1 == "onestep_open_connections" {o=$2} $1 == "onestep_pending_responses" {p=$2}
        $1 == "onestep_queue_depth_images" {q=$2} $1 == "onestep_running_batches" {r=$2}
        END {print o+0, p+0, q+0, r+0}'
}

# measure_capacity: closed loop, 32 requests in flight (two full batches of 16, one per worker), on the default
# model; sets CAPACITY (req/s, rounded down). CAPACITY_SECONDS (default 10) sets the measured time.
measure_capacity() {
    local seconds=${CAPACITY_SECONDS:-10}
    "$LOAD" --concurrency 32 --warmup 3s --duration "${seconds}s" --timeout 10s --quiet --no-spectrum \
        --json "$WORK/capacity.json" "$BASE/v1/generate?seed={{seed}}" >"$WORK/capacity.txt" || true
    CAPACITY=$(jq -r '.achieved_rate | floor' "$WORK/capacity.json")
    local errors p50 p99
    errors=$(jq -r '.measured.errors' "$WORK/capacity.json")
    p50=$(jq -r '.measured.latency.corrected.percentiles_ms.p50' "$WORK/capacity.json")
    p99=$(jq -r '.measured.latency.corrected.percentiles_ms.p99' "$WORK/capacity.json")
    echo "capacity: $CAPACITY req/s (closed loop, 32 in flight, ${seconds}s; p50 ${p50} ms, p99 ${p99} ms, errors $errors; load $(loadavg))"
    if ((CAPACITY < 1)); then echo "capacity measurement failed:" >&2; cat "$WORK/capacity.txt" >&2; exit 1; fi
}

# check LABEL VALUE OP LIMIT [UNIT]: prints the comparison; records a failure unless "VALUE OP LIMIT" holds.
check() {
    local label=$1 value=$2 op=$3 limit=$4 unit=${5:-}
    if awk -v v="$value" -v l="$limit" -v op="$op" 'BEGIN {
            ok = (op == "<") ? v < l : (op == "<=") ? v <= l : (op == ">") ? v > l : (op == ">=") ? v >= l : (v == l)
            exit ok ? 0 : 1 }'; then
        printf '  ok    %-48s %s%s (limit %s %s%s)\n' "$label" "$value" "$unit" "$op" "$limit" "$unit"
    else
        printf '  FAIL  %-48s %s%s (limit %s %s%s)\n' "$label" "$value" "$unit" "$op" "$limit" "$unit"
        FAILURES+=("$label = $value$unit, limit $op $limit$unit")
    fi
}

# verdict NAME SUMMARY: the last line of every script, and its exit code.
verdict() {
    local name=$1 summary=$2
    if ((${#FAILURES[@]} == 0)); then
        echo "PASS $name: $summary"
        return 0
    fi
    local IFS=';'
    echo "FAIL $name: ${FAILURES[*]}"
    return 1
}

# jqf FILE FILTER: one value from a JSON report.
jqf() { jq -r "$2" "$1"; }

# other_errors FILE KIND...: the errors of an onestep-load JSON report whose kind (errors_by_kind: http_429,
# refused, reset...) is not one of KIND, as "kind n, ...".
other_errors() {
    local file=$1; shift
    local allowed
    allowed=$(printf '"%s",' "$@")
    jq -r "[.measured.errors_by_kind | to_entries[] | select(.key as \$k | [${allowed%,}] | index(\$k) | not)
            | \"\\(.key) \\(.value)\"] | join(\", \")" "$file"
}
# other_error_count FILE KIND...: how many errors those are.
other_error_count() {
    local file=$1; shift
    local allowed
    allowed=$(printf '"%s",' "$@")
    jq -r "[.measured.errors_by_kind | to_entries[] | select(.key as \$k | [${allowed%,}] | index(\$k) | not) | .value]
           | add // 0" "$file"
}
