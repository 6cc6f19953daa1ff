#!/bin/bash
# bench/tools/service-cpu.sh: CPU time per message of each Postern process (master and
# every service, user+system from /proc/PID/stat, thread-pool threads included) over
# the throughput benchmark's load. On a shared or small machine this is steadier than
# messages per second: other work slows the clock, not the CPU a message costs.
#
#   bench/tools/service-cpu.sh [--messages N] [--size BYTES] [--sessions N] [--message-auth yes|no]
#
# --message-auth: smtpd_message_auth for the run (default: the instance's default, yes).
#
# Needs `make build`; prints one JSON line. The instance lives under $TMPDIR (see
# bench/README.md, "Performance", on why that choice matters).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
MESSAGES=2000 SIZE=4096 SESSIONS=20 WARMUP=200 MESSAGE_AUTH=""
while [ $# -gt 0 ]; do
  case "$1" in
    --messages) MESSAGES="$2"; shift ;;
    --size) SIZE="$2"; shift ;;
    --sessions) SESSIONS="$2"; shift ;;
    --message-auth) MESSAGE_AUTH="$2"; shift ;;
    *) echo "usage: $0 [--messages N] [--size BYTES] [--sessions N] [--message-auth yes|no]" >&2; exit 2 ;;
  esac
  shift
done
bench_require_build
postfix_tools
WORK="$(mktemp -d "${TMPDIR:-/tmp}/postern-cpu.XXXXXX")"; chmod 755 "$WORK"; PT="$WORK/postern"
trap 'postern_stop "$PT" || true; rm -rf "$WORK"' EXIT
RCPT=bench@example.test
PORT="$(free_port)"
postern_create "$PT" "$PORT" postern.bench.test || bench_die "postern init failed"
"$POSTERN" -c "$PT/etc" user add "$RCPT" --password-stdin <<<"bench-password" >/dev/null
"$POSTERN" -c "$PT/etc" config set "mynetworks=192.0.2.0/24" "smtpd_client_restrictions=" >/dev/null
[ -z "$MESSAGE_AUTH" ] || "$POSTERN" -c "$PT/etc" config set "smtpd_message_auth=$MESSAGE_AUTH" >/dev/null
postern_start "$PT" || bench_die "postern start failed"
NEW="$(postern_maildir_new "$PT" "$RCPT")"
load=(-s "$SESSIONS" -l "$SIZE" -d -M client.remote.test -f sender@remote.test -t "$RCPT" "127.0.0.1:$PORT")
smtp_source "$WORK/warmup.log" 300 -m "$WARMUP" "${load[@]}" || bench_die "warm-up failed"
wait_for_maildir "$NEW" "$WARMUP" 300 || bench_die "warm-up not delivered"
find "$NEW" -maxdepth 1 -type f -delete
# name=pid for master and each service (one smtpd per listener, named by its port)
PIDS="$(node -e 'const s = JSON.parse(process.argv[1]);
  console.log(["master=" + s.master.pid, ...s.services.filter((x) => x.pid).map((x) => x.command + (x.command === "smtpd" ? "@" + x.service.replace(/.*:/, "") : "") + "=" + x.pid)].join(" "))' "$POSTERN_STATUS_JSON")"
snapshot() { local p; for p in $PIDS; do echo "${p%%=*} $(awk '{ print $14 + $15 }' "/proc/${p##*=}/stat" 2>/dev/null || echo 0)"; done; }
before="$(snapshot)"; t0="$(now)"
smtp_source "$WORK/load.log" 600 -m "$MESSAGES" "${load[@]}" || bench_die "smtp-source failed"
t1="$(now)"
wait_for_maildir "$NEW" "$MESSAGES" 600 || bench_die "not all messages delivered"
after="$(snapshot)"
node -e '
  const [before, after, n, hz, t0, t1] = process.argv.slice(1);
  const parse = (s) => new Map(s.trim().split("\n").map((l) => { const [k, v] = l.split(" "); return [k, +v]; }));
  const a = parse(before), b = parse(after), per = {};
  let total = 0;
  for (const [k, v] of b) {
    const ms = (v - (a.get(k) ?? 0)) * 1000 / +hz / +n;
    if (ms >= 0.01) { per[k] = +ms.toFixed(2); total += ms; }
  }
  console.log(JSON.stringify({ messages: +n, accepted_per_s: +(+n / (t1 - t0)).toFixed(1), cpu_ms_per_message: per, total: +total.toFixed(2) }));
' "$before" "$after" "$MESSAGES" "$(getconf CLK_TCK)" "$t0" "$t1"
