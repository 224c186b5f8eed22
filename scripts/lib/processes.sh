# processes.sh: sourced by the benchmark scripts; stops the processes they started, by pid.
# Usage: stop_pids PID ...: SIGTERM to each, then up to STOP_POLLS polls of 0.1 s for each to exit, then
# SIGKILL to any still running; empty arguments are skipped. Reaps those that are children of the caller.

# Longest wait for a process to exit after SIGTERM, in polls of 0.1 s, before SIGKILL.
STOP_POLLS=${STOP_POLLS:-50}

stop_pids() {
    local pid polls
    for pid in "$@"; do [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        [ -n "$pid" ] || continue
        polls=0
        while kill -0 "$pid" 2>/dev/null && [ "$polls" -lt "$STOP_POLLS" ]; do sleep 0.1; polls=$((polls + 1)); done
        kill -KILL "$pid" 2>/dev/null || true
        { wait "$pid" || true; } 2>/dev/null
    done
}
