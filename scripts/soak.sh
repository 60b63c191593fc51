#!/usr/bin/env bash
# Soak: `armwatch demo` unpaced (its highest rate) for SOAK_SECONDS (default 1800), scraping
# /metrics every 5 s as Prometheus would, RSS sampled once a minute. Prints one row per minute
# and, at the end, the RSS growth after the warm-up (the first SOAK_WARMUP_MINUTES, default 5).
#
#   bash scripts/soak.sh              # 30 minutes
#   SOAK_SECONDS=120 bash scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/armwatch-target}"
seconds="${SOAK_SECONDS:-1800}"
warmup="${SOAK_WARMUP_MINUTES:-5}"
cargo build --release --quiet
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp)
"$CARGO_TARGET_DIR/release/armwatch" demo --rate 1000000000 --listen "127.0.0.1:$port" >/dev/null 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log" "$log.scrape"' EXIT

metric() { # metric NAME: the summed value of a series in the last scrape
  awk -v n="$1" '$1 ~ "^"n"({|$)" {s += $2} END {printf "%.9g", s}' "$log.scrape"
}
start=$(date +%s)
next_sample=$start
printf '%6s %10s %12s %16s %14s\n' minute rss_mb state_mb events_accepted publish_ms_avg
rows=()
while (( $(date +%s) - start < seconds )); do
  curl -fsS "http://127.0.0.1:$port/metrics" -o "$log.scrape" 2>/dev/null || true
  if (( $(date +%s) >= next_sample )) && [[ -s "$log.scrape" ]]; then
    minute=$(( ($(date +%s) - start) / 60 ))
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    state=$(metric armwatch_state_memory_bytes)
    events=$(metric armwatch_events_accepted_total)
    psum=$(metric armwatch_publish_seconds_sum)
    pcount=$(metric armwatch_publish_seconds_count)
    awk -v m="$minute" -v r="$rss" -v st="${state:-0}" -v e="${events:-0}" -v s="${psum:-0}" \
      -v c="${pcount:-0}" 'BEGIN {
        printf "%6d %10.1f %12.1f %16d %14.3f\n", m, r / 1024, st / 1048576, e, (c > 0 ? 1000 * s / c : 0)
      }'
    rows+=("$minute $rss")
    next_sample=$(( next_sample + 60 ))
  fi
  sleep 5
  kill -0 $pid 2>/dev/null || { echo "armwatch demo exited:"; tail -20 "$log"; exit 1; }
done
printf '%s\n' "${rows[@]}" | awk -v w="$warmup" '
  $1 >= w { if (!base) base = $2; if ($2 > max) max = $2; last = $2 }
  END {
    if (!base) { print "soak: too short for a warm-up of " w " minutes"; exit 0 }
    printf "soak: RSS %.1f MB at minute %d, peak %.1f MB after it, %.1f MB at the end (growth %+.1f%%)\n",
      base / 1024, w, max / 1024, last / 1024, 100 * (max - base) / base
  }'
