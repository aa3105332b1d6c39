#!/usr/bin/env bash
# One device-machine session's GPU work as a job that outlives the device tool's call: the checkout is
# copied to /tmp/job/src (later calls re-copy the working tree; the job keeps its own), the carried
# wheels (.whl/) go to /tmp/site, dreamcam is importable from the copy, and each step runs in turn with
# its log and JSON under /tmp/job/out. `poll` packs what exists so far into $OUT/job.tgz.
#
#   setsid bash scripts/device-job.sh start COMMIT > /dev/null 2>&1 < /dev/null &   # first call
#   bash scripts/device-job.sh poll                                                  # each later call
# The machine goes back 30 s after a call ends, and the job with it: keep a call in flight all the
# time (each later call `sleep 240; bash scripts/device-job.sh poll`, the next one sent at once).
set -u
JOB=/tmp/job
step() {  # step NAME COMMAND...: run one step, its output in out/NAME.log, its exit status noted
  local name=$1; shift
  echo "$(date -u +%T) start $name" >> "$JOB/out/steps.txt"
  (cd "$JOB/src" && timeout "${STEP_TIMEOUT_S:-900}" "$@") < /dev/null > "$JOB/out/$name.log" 2>&1
  local rc=$?
  echo "$(date -u +%T) end $name rc=$rc" >> "$JOB/out/steps.txt"
}
case "${1:-}" in
  start)
    commit=${2:?commit}
    rm -rf "$JOB" && mkdir -p "$JOB/out" "$JOB/pkg/dreamcam"
    cp -a . "$JOB/src"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$JOB"/src/.whl/*.whl > "$JOB/out/install.log" 2>&1
    # the package's folders map to dreamcam.* (pyproject's package-dir) as a namespace package
    for part in core engines plugin obs_scripts; do ln -s "$JOB/src/$part" "$JOB/pkg/dreamcam/$part"; done
    # a crash in native code (exit 139) still prints the Python stack of every thread
    export PYTHONPATH="$JOB/pkg:$JOB/src:/tmp/site" PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 DREAMCAM_COMMIT=$commit
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$JOB/out/gpu.txt" 2>&1
    python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__)" \
      >> "$JOB/out/gpu.txt" 2>&1
    while read -r name cmd; do
      case "$name" in ""|"#"*) continue ;; esac
      step "$name" bash -c "$cmd"
    done < "${STEPS_FILE:-$JOB/src/scripts/device-steps.txt}"
    echo "$(date -u +%T) all done" >> "$JOB/out/steps.txt"
    ;;
  poll)
    cat "$JOB/out/steps.txt" 2>/dev/null
    last=$(ls -t "$JOB"/out/*.log 2>/dev/null | head -1)
    [ -n "$last" ] && { echo "--- $last"; tail -c 3000 "$last"; }
    [ -n "${OUT:-}" ] && tar czf "$OUT/job.tgz" -C "$JOB" out
    ;;
  *) echo "usage: $0 start COMMIT | poll" >&2; exit 2 ;;
esac
