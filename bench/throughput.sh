#!/bin/bash
# bench/throughput.sh: inbound MX throughput, Postern side by side with Postfix.
#
# Postfix's smtp-source sends N messages of SIZE bytes over SESSIONS parallel SMTP
# sessions (each session keeps its connection: smtp-source -d) to a sandbox Postern
# instance delivering to Maildir, then the same load to a private Postfix instance
# (run from the unpacked Debian package) delivering to Maildir with virtual(8).
# Reports accepted and end-to-end messages per second for each, and Postern/Postfix.
#
#   bench/throughput.sh [--postern-only] [--keep] [--messages N] [--size BYTES]
#                       [--sessions N] [--warmup N] [--timeout SECONDS]
#
# Needs `make build` first; see bench/README.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

MESSAGES="${BENCH_MESSAGES:-5000}"
SIZE="${BENCH_SIZE:-4096}"
SESSIONS="${BENCH_SESSIONS:-20}"
WARMUP="${BENCH_WARMUP:-200}"
TIMEOUT="${BENCH_TIMEOUT:-600}"   # bound on each of: sending, waiting for delivery
POSTERN_ONLY=no
KEEP=no
RECIPIENT=bench@example.test
SENDER=sender@remote.test

usage() { sed -n '10,11p' "$0" | sed 's/^# \{0,3\}//' >&2; exit 2; }
bench_parse_args "$@"

bench_require_build
postfix_tools

WORK="$(mktemp -d "${TMPDIR:-/tmp}/postern-bench.XXXXXX")"
chmod 755 "$WORK"   # Postfix's virtual(8) delivers as an unprivileged uid below it
PT="$WORK/postern"
PF="$WORK/postfix"

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  postern_stop "$PT" || true
  postfix_stop "$PF" || true
  if [ "$KEEP" = yes ]; then bench_note "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# measure NAME PORT NEWDIR: warm up, then the timed load; sets M_* or MEASURE_ERROR.
measure() {
  local name="$1" port="$2" new="$3" log t0 t1 tl n
  local load=(-s "$SESSIONS" -l "$SIZE" -d -M client.remote.test -f "$SENDER" -t "$RECIPIENT" "127.0.0.1:$port")
  if [ "$WARMUP" -gt 0 ]; then
    log="$WORK/$name-warmup.smtp-source.log"
    if ! smtp_source "$log" "$TIMEOUT" -m "$WARMUP" "${load[@]}"; then
      MEASURE_ERROR="warm-up: smtp-source failed: $(tail -n 3 "$log")"; return 1
    fi
    if ! wait_for_maildir "$new" "$WARMUP" "$TIMEOUT"; then
      MEASURE_ERROR="warm-up: only $(maildir_count "$new") of $WARMUP messages delivered within $TIMEOUT s"; return 1
    fi
    find "$new" -maxdepth 1 -type f -delete
  fi
  log="$WORK/$name.smtp-source.log"
  t0="$(now)"
  if ! smtp_source "$log" "$TIMEOUT" -m "$MESSAGES" "${load[@]}"; then
    MEASURE_ERROR="smtp-source failed or took over $TIMEOUT s: $(tail -n 3 "$log")"; return 1
  fi
  t1="$(now)"
  if ! wait_for_maildir "$new" "$MESSAGES" "$TIMEOUT"; then
    MEASURE_ERROR="only $(maildir_count "$new") of $MESSAGES messages delivered within $TIMEOUT s of the end of sending"; return 1
  fi
  tl="$(last_delivery_time "$new")"
  n="$(maildir_count "$new")"
  M_SEND_S="$(seconds_between "$t0" "$t1")"
  M_E2E_S="$(seconds_between "$t0" "$tl")"
  M_ACCEPTED="$(rate "$MESSAGES" "$M_SEND_S")"
  M_END_TO_END="$(rate "$MESSAGES" "$M_E2E_S")"
  M_DELIVERED="$n"
}

result_json() { # ERROR-or-empty [VERSION]
  if [ -n "$1" ]; then
    node -e 'console.log(JSON.stringify({ error: process.argv[1], version: process.argv[2] || null }))' "$1" "${2:-}"
  else
    node -e 'const [a, e, s, t, d, v] = process.argv.slice(1);
      console.log(JSON.stringify({ version: v || null, accepted_per_s: +a, end_to_end_per_s: +e,
        send_seconds: +s, end_to_end_seconds: +t, delivered: +d }))' \
      "$M_ACCEPTED" "$M_END_TO_END" "$M_SEND_S" "$M_E2E_S" "$M_DELIVERED" "${2:-}"
  fi
}

# --- Postern -----------------------------------------------------------------
bench_note "Postern: sandbox instance in $PT"
PT_PORT="$(free_port)"
postern_create "$PT" "$PT_PORT" postern.bench.test || bench_die "postern init failed"
"$POSTERN" -c "$PT/etc" user add "$RECIPIENT" --password-stdin <<<"bench-password" >/dev/null ||
  bench_die "postern user add $RECIPIENT failed"
# As a real MX sees it: the client is not in mynetworks (no relay, no bare-LF leniency).
# Postfix's default does no reverse-DNS rejection and there is no DNS here: the same for Postern.
"$POSTERN" -c "$PT/etc" config set "mynetworks=192.0.2.0/24" "smtpd_client_restrictions=" || bench_die "postern config set failed"
postern_start "$PT" || bench_die "postern start failed; log: $(tail -n 5 "$PT/postern.log" 2>/dev/null)"
PT_NEW="$(postern_maildir_new "$PT" "$RECIPIENT")" || bench_die "no Maildir for $RECIPIENT in the user table"
PT_VERSION="$(node -p 'require(process.argv[1]).version' "$BENCH_ROOT/package.json")+$(git -C "$BENCH_ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
bench_note "Postern: $WARMUP warm-up + $MESSAGES messages to 127.0.0.1:$PT_PORT"
if ! measure postern "$PT_PORT" "$PT_NEW"; then
  bench_die "Postern: $MEASURE_ERROR (log: $PT/postern.log$([ "$KEEP" = yes ] || echo ', rerun with --keep to keep it'))"
fi
POSTERN_JSON="$(result_json "" "$PT_VERSION")"
PT_ACCEPTED="$M_ACCEPTED"; PT_E2E="$M_END_TO_END"; PT_SEND_S="$M_SEND_S"; PT_E2E_S="$M_E2E_S"
postern_stop "$PT"

# --- Postfix -----------------------------------------------------------------
PF_ERROR=""
PF_VERSION=""
if [ "$POSTERN_ONLY" = yes ]; then
  PF_ERROR="not run (--postern-only)"
elif [ "$(id -u)" != 0 ]; then
  PF_ERROR="not run: Postfix's master must be started as root (it drops to the postfix user itself); run as root, or pass --postern-only"
elif ! postfix_ensure_accounts; then
  PF_ERROR="could not create the postfix user and the postfix/postdrop groups Postfix's master requires"
else
  bench_note "Postfix: private instance in $PF"
  PF_PORT="$(free_port)"
  MAIL_UID="$(id -u nobody)"; MAIL_GID="$(id -g nobody)"
  postfix_create "$PF" "$PF_PORT" postfix.bench.test "$RECIPIENT" "$MAIL_UID" "$MAIL_GID"
  PF_VERSION="$(postfix_version "$PF")"
  if ! postfix_start "$PF" "$PF_PORT"; then
    PF_ERROR="$POSTFIX_START_ERROR"
  else
    bench_note "Postfix $PF_VERSION: $WARMUP warm-up + $MESSAGES messages to 127.0.0.1:$PF_PORT"
    if measure postfix "$PF_PORT" "$PF/mail/${RECIPIENT#*@}/${RECIPIENT%@*}/Maildir/new"; then
      POSTFIX_JSON="$(result_json "" "$PF_VERSION")"
      PF_ACCEPTED="$M_ACCEPTED"; PF_E2E="$M_END_TO_END"; PF_SEND_S="$M_SEND_S"; PF_E2E_S="$M_E2E_S"
    else
      PF_ERROR="$MEASURE_ERROR (maillog: $(grep -E 'fatal|panic|error' "$PF/maillog" 2>/dev/null | tail -n 2))"
    fi
  fi
  postfix_stop "$PF"
fi
[ -n "$PF_ERROR" ] && POSTFIX_JSON="$(result_json "$PF_ERROR" "$PF_VERSION")"
R_ACCEPTED="$(ratio "$PT_ACCEPTED" "${PF_ACCEPTED:-}")"
R_E2E="$(ratio "$PT_E2E" "${PF_E2E:-}")"

# --- Report ------------------------------------------------------------------
DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
MACHINE_JSON="$(machine_json "$WORK")"
mkdir -p "$BENCH_ROOT/bench/out"
OUT="$BENCH_ROOT/bench/out/throughput-$(date -u +%Y%m%dT%H%M%SZ).json"
node -e '
  const [date, messages, size, sessions, warmup, machine, postern, postfix, rAcc, rE2e] = process.argv.slice(1);
  const num = (x) => (x === "null" ? null : +x);
  const report = {
    benchmark: "throughput", date,
    load: { tool: "smtp-source", messages: +messages, body_bytes: +size, sessions: +sessions,
            connection_reuse: true, warmup_messages: +warmup, delivery: "Maildir" },
    machine: JSON.parse(machine),
    postern: JSON.parse(postern),
    postfix: JSON.parse(postfix),
    ratio_postern_to_postfix: { accepted: num(rAcc), end_to_end: num(rE2e) },
  };
  process.stdout.write(JSON.stringify(report, null, 2) + "\n");' \
  "$DATE" "$MESSAGES" "$SIZE" "$SESSIONS" "$WARMUP" "$MACHINE_JSON" "$POSTERN_JSON" "$POSTFIX_JSON" "$R_ACCEPTED" "$R_E2E" >"$OUT"

node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const m = r.machine, pt = r.postern, pf = r.postfix, q = r.ratio_postern_to_postfix;
  const col = (v, w) => String(v ?? "-").padStart(w);
  const pfName = "Postfix" + (pf.version ? " " + pf.version : "");
  const w = Math.max(9, pfName.length);
  console.log(`Postern throughput benchmark, ${r.date}`);
  console.log(`load     ${r.load.messages} messages, ${r.load.body_bytes}-byte bodies, ${r.load.sessions} parallel SMTP sessions (smtp-source -d), after ${r.load.warmup_messages} warm-up messages; delivery to Maildir`);
  console.log(`machine  ${m.nproc} CPUs (${m.cpu}), ${m.memory_mib} MiB, Node ${m.node}, Linux ${m.kernel}, spools on ${m.spool_filesystem}`);
  console.log("");
  console.log(`${"".padEnd(24)}${col("Postern", 10)}  ${col(pfName, w)}  ${col("Postern/Postfix", 15)}`);
  const fx = (v, d) => (typeof v === "number" ? v.toFixed(d) : v);
  const row = (label, d, a, b, ratio) =>
    console.log(`${label.padEnd(24)}${col(fx(a, d), 10)}  ${col(fx(b, d), w)}  ${col(fx(ratio, 2), 15)}`);
  row("accepted msg/s", 1, pt.accepted_per_s, pf.accepted_per_s, q.accepted);
  row("end-to-end msg/s", 1, pt.end_to_end_per_s, pf.end_to_end_per_s, q.end_to_end);
  row("sending took s", 2, pt.send_seconds, pf.send_seconds, null);
  row("last delivery after s", 2, pt.end_to_end_seconds, pf.end_to_end_seconds, null);
  if (pf.error) console.log(`\nPostfix: ${pf.error}`);
  console.log(`\nwritten to ${process.argv[1]}`);' "$OUT"

if [ -n "$PF_ERROR" ] && [ "$POSTERN_ONLY" != yes ]; then
  bench_note "the Postfix half did not run: $PF_ERROR"
  exit 1
fi
