#!/usr/bin/env bash
# bench/soak.sh - a long run of the README's demo training, watched from outside: the
# process's resident memory (VmRSS) and the global step every INTERVAL seconds, then the
# memory after warm-up (first and last tenth, maximum) and the spread of the time per step
# over the windows (validation, image logging and checkpoints included, as a user sees them).
#
#   ./build.sh && bench/soak.sh [steps=10000] [interval=10]
#
# Writes the samples to soak.csv (seconds, global step, RSS MiB) in the run's logdir.
set -eu
cd "$(dirname "$0")/.."
STEPS=${1:-10000}
INTERVAL=${2:-10}
LOGS=$(mktemp -d)
build/ldm --base configs/demo_autoencoder.ini -t --no-test --name soak -l "$LOGS" lightning.trainer.max_steps="$STEPS" \
  > "$LOGS/out.txt" 2>&1 &
PID=$!
SAMPLES="$LOGS/soak.csv"
echo "seconds,step,rss_mib" > "$SAMPLES"
T0=$(date +%s)
while kill -0 "$PID" 2>/dev/null; do
  sleep "$INTERVAL"
  RSS=$(awk '/^VmRSS/ {print $2}' "/proc/$PID/status" 2>/dev/null || true)
  [ -n "$RSS" ] || break
  # the progress line's step ("Epoch e: s/N" on a terminal, "epoch e step s/N" otherwise)
  STEP=$(tr '\r' '\n' < "$LOGS/out.txt" | grep -oE '(: |step )[0-9]+/[0-9]+' | tail -n 1 | grep -oE '[0-9]+/' | tr -d '/' || true)
  echo "$(( $(date +%s) - T0 )),${STEP:-0},$(( RSS / 1024 ))" >> "$SAMPLES"
done
wait "$PID" || { echo "soak: the run failed:"; tail -5 "$LOGS/out.txt"; exit 1; }
tail -n 2 "$LOGS/out.txt" | tr '\r' '\n' | tail -n 2
python3 - "$SAMPLES" "$INTERVAL" <<'EOF' || awk -F, 'NR > 1 {print}' "$SAMPLES" | tail -n 5
import sys
rows = [tuple(map(float, l.split(','))) for l in open(sys.argv[1]).read().split('\n')[1:] if l]
n = len(rows)
rss = [r[2] for r in rows]
warm = rows[n // 10:]
w = [r[2] for r in warm]
print(f"samples: {n} over {rows[-1][0]:.0f} s; RSS MiB: first {rss[0]:.0f}, after warm-up (10%) {w[0]:.0f}, "
      f"last {rss[-1]:.0f}, max {max(rss):.0f}; growth after warm-up {w[-1] - w[0]:+.0f} MiB "
      f"(first tenth of it mean {sum(w[:max(1, len(w)//10)]) / max(1, len(w)//10):.1f}, last tenth {sum(w[-max(1, len(w)//10):]) / max(1, len(w)//10):.1f})")
per = []
for a, b in zip(rows, rows[1:]):
    if b[1] > a[1]: per.append((b[0] - a[0]) / (b[1] - a[1]))
per.sort()
q = lambda p: per[min(len(per) - 1, int(p * len(per)))]
if per:
    print(f"seconds per step over {len(per)} windows of {sys.argv[2]} s: median {q(0.5):.3f}, p5 {q(0.05):.3f}, p95 {q(0.95):.3f}, max {per[-1]:.3f}")
EOF
echo "samples: $SAMPLES"
