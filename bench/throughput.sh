#!/bin/bash
# bench/throughput.sh: inbound MX throughput, Postern side by side with Postfix.
#
# bench/mx-load.js (or, with --smtp-source, Postfix's smtp-source) sends N messages of
# SIZE bytes over SESSIONS parallel SMTP sessions (each session keeps its connection)
# to a sandbox Postern instance delivering to Maildir, then the same load to a private
# Postfix instance (run from the unpacked Debian package) delivering to Maildir with
# virtual(8). Reports accepted and end-to-end messages per second for each and
# Postern/Postfix, CPU ms per message of each program, and p50/p99 end of DATA to 250.
# Postern runs twice: like for like (smtpd_message_auth = no: Postfix checks no SPF,
# DKIM or DMARC here), then with its default checks on, reported as a row of its own.
#
#   bench/throughput.sh [--postern-only] [--keep] [--smtp-source] [--lmtp] [--no-checks-row]
#                       [--rounds N] [--messages N] [--size BYTES] [--sessions N] [--warmup N] [--timeout SECONDS]
#
# --no-checks-row: skip Postern's second run with the message checks on.
# --rounds N: measure both servers N times, alternating which goes first; the report's
# figures are those of the round with the median end-to-end ratio, and every round is
# listed (one run on a shared machine moves with the machine's load; see bench/README.md).
# --lmtp: both deliver to one Dovecot LMTP server on loopback (virtual_transport =
# lmtp:inet:127.0.0.1:PORT on each side) instead of their own Maildir writers.
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
LOADER=mx-load   # or smtp-source (--smtp-source): no per-message latencies then
DELIVERY=maildir  # or lmtp (--lmtp): both servers hand the mail to one Dovecot LMTP server
RECIPIENT=bench@example.test
SENDER=sender@remote.test

CHECKS_ROW=yes
ROUNDS=1
usage() { sed -n '13,14p' "$0" | sed 's/^# \{0,3\}//' >&2; exit 2; }
bench_extra_arg() {
  case "$1" in
    --rounds) ROUNDS="$2"; BENCH_EXTRA_SHIFT=2 ;;
    --smtp-source) LOADER=smtp-source ;;
    --no-checks-row) CHECKS_ROW=no ;;
    --lmtp) DELIVERY=lmtp ;;
    *) return 1 ;;
  esac
}
bench_parse_args "$@"
[[ "$ROUNDS" =~ ^[1-9]$ ]] || bench_die "rounds must be a whole number from 1 to 9, not \"$ROUNDS\""

bench_require_build
postfix_tools

bench_workdir

# --lmtp: one Dovecot LMTP server, started first, the same for both servers; the
# messages land in its Maildir (DC_NEW), emptied between the two runs.
LMTP_TRANSPORT=""
if [ "$DELIVERY" = lmtp ]; then
  LMTP_PORT="$(free_port)"
  dovecot_lmtp_start "$WORK/dovecot" "$LMTP_PORT" || bench_die "Dovecot's LMTP server did not start on 127.0.0.1:$LMTP_PORT"
  LMTP_TRANSPORT="lmtp:inet:127.0.0.1:$LMTP_PORT"
  DC_NEW="$DOVECOT_LMTP_MAIL/${RECIPIENT#*@}/${RECIPIENT%@*}/Maildir/new"
  bench_note "Dovecot LMTP on 127.0.0.1:$LMTP_PORT, delivering to $DC_NEW"
fi

# send LOG COUNT PORT: COUNT messages with the chosen load generator (mx-load.js's
# JSON report in LOG.json); bounded by TIMEOUT.
send() {
  local log="$1" count="$2" port="$3"
  if [ "$LOADER" = smtp-source ]; then
    smtp_source "$log" "$TIMEOUT" -m "$count" -s "$SESSIONS" -l "$SIZE" -d -M client.remote.test \
      -f "$SENDER" -t "$RECIPIENT" "127.0.0.1:$port"
  else
    timeout $((TIMEOUT + 60)) node "$BENCH_ROOT/bench/mx-load.js" --port "$port" --from "$SENDER" --to "$RECIPIENT" \
      --messages "$count" --sessions "$SESSIONS" --size "$SIZE" --timeout "$TIMEOUT" >"$log.json" 2>"$log"
  fi
}
send_failure() { { json_field "$1.json" errors 2>/dev/null || true; tail -n 3 "$1"; } | tr '\n' ' '; } # LOG

# measure NAME PORT NEWDIR MASTERPID: warm up, then the timed load (CPU of every process
# below MASTERPID sampled); sets M_* or MEASURE_ERROR.
measure() {
  local name="$1" port="$2" new="$3" root="$4" log t0 t1 tl
  [ -d "$new" ] && find "$new" -maxdepth 1 -type f -delete   # an earlier run's messages
  if [ "$WARMUP" -gt 0 ]; then
    log="$WORK/$name-warmup.$LOADER.log"
    if ! send "$log" "$WARMUP" "$port"; then
      MEASURE_ERROR="warm-up: $LOADER failed: $(send_failure "$log")"; return 1
    fi
    if ! wait_for_maildir "$new" "$WARMUP" "$TIMEOUT"; then
      MEASURE_ERROR="warm-up: only $(maildir_count "$new") of $WARMUP messages delivered within $TIMEOUT s"; return 1
    fi
    find "$new" -maxdepth 1 -type f -delete
  fi
  log="$WORK/$name.$LOADER.log"
  cpu_start "$WORK/$name.cpu" "$root"
  t0="$(now)"
  if ! send "$log" "$MESSAGES" "$port"; then
    cpu_stop
    MEASURE_ERROR="$LOADER failed or took over $TIMEOUT s: $(send_failure "$log")"; return 1
  fi
  t1="$(now)"
  if ! wait_for_maildir "$new" "$MESSAGES" "$TIMEOUT"; then
    cpu_stop
    MEASURE_ERROR="only $(maildir_count "$new") of $MESSAGES messages delivered within $TIMEOUT s of the end of sending"; return 1
  fi
  cpu_stop
  tl="$(last_delivery_time "$new")"
  M_SEND_S="$(seconds_between "$t0" "$t1")"
  M_E2E_S="$(seconds_between "$t0" "$tl")"
  M_ACCEPTED="$(rate "$MESSAGES" "$M_SEND_S")"
  M_END_TO_END="$(rate "$MESSAGES" "$M_E2E_S")"
  M_DELIVERED="$(maildir_count "$new")"
  M_LATENCY=null M_CLIENT_CPU=null
  if [ "$LOADER" = mx-load ]; then
    M_LATENCY="$(json_field "$log.json" data_to_250)"
    M_CLIENT_CPU="$(json_field "$log.json" client_cpu_ms)"
  fi
  M_CPU="$(cpu_json "$WORK/$name.cpu" "$MESSAGES")"
}

result_json() { # ERROR-or-empty [VERSION]
  if [ -n "$1" ]; then
    error_json "$1" "${2:-}"
  else
    node -e 'const [a, e, s, t, d, lat, cpu, client, v] = process.argv.slice(1);
      console.log(JSON.stringify({ version: v || null, accepted_per_s: +a, end_to_end_per_s: +e,
        send_seconds: +s, end_to_end_seconds: +t, delivered: +d, data_to_250: JSON.parse(lat), cpu: JSON.parse(cpu),
        client_cpu_ms: JSON.parse(client) }))' \
      "$M_ACCEPTED" "$M_END_TO_END" "$M_SEND_S" "$M_E2E_S" "$M_DELIVERED" "$M_LATENCY" "$M_CPU" "$M_CLIENT_CPU" "${2:-}"
  fi
}

# --- Postern -----------------------------------------------------------------
bench_note "Postern: sandbox instance in $PT"
PT_PORT="$(free_port)"
postern_create "$PT" "$PT_PORT" postern.bench.test || bench_die "postern init failed"
# BENCH_POSTERN_USERS (bench/tables.sh): a command "CMD DIR ADDRESS" that puts the user in
# another user database (pgsql:) instead of the passwd-file
if [ -n "${BENCH_POSTERN_USERS:-}" ]; then
  $BENCH_POSTERN_USERS "$PT" "$RECIPIENT" || bench_die "$BENCH_POSTERN_USERS failed"
else
  "$POSTERN" -c "$PT/etc" user add "$RECIPIENT" --password-stdin <<<"bench-password" >/dev/null ||
    bench_die "postern user add $RECIPIENT failed"
fi
# As a real MX sees it: the client is not in mynetworks (no relay, no bare-LF leniency).
# Postfix's default does no reverse-DNS rejection and there is no DNS here: the same for Postern.
# Like for like first: Postfix checks no SPF, DKIM or DMARC (the second run below does).
"$POSTERN" -c "$PT/etc" config set "mynetworks=192.0.2.0/24" "smtpd_client_restrictions=" "smtpd_message_auth=no" ||
  bench_die "postern config set failed"
if [ -n "$LMTP_TRANSPORT" ]; then
  "$POSTERN" -c "$PT/etc" config set "virtual_transport=$LMTP_TRANSPORT" || bench_die "postern config set virtual_transport failed"
fi
if [ -n "$LMTP_TRANSPORT" ]; then
  PT_NEW="$DC_NEW"
else
  PT_NEW="$(postern_maildir_new "$PT" "$RECIPIENT")" || bench_die "no Maildir for $RECIPIENT in the user table"
fi
PT_VERSION="$(postern_version)"

# postern_round ROUND: Postern like for like, then (unless --no-checks-row) with its
# checks on; sets PT_JSON[ROUND] and PTA_JSON[ROUND].
declare -a PT_JSON PTA_JSON PF_JSON
postern_round() {
  local r="$1"
  postern_start "$PT" || bench_die "postern start failed; log: $(tail -n 5 "$PT/postern.log" 2>/dev/null)"
  bench_note "Postern (round $r): $WARMUP warm-up + $MESSAGES messages to 127.0.0.1:$PT_PORT"
  if ! measure "postern-r$r" "$PT_PORT" "$PT_NEW" "$(postern_master_pid)"; then
    bench_die "Postern: $MEASURE_ERROR (log: $PT/postern.log$([ "$KEEP" = yes ] || echo ', rerun with --keep to keep it'))"
  fi
  PT_JSON[$r]="$(result_json "" "$PT_VERSION")"
  postern_stop "$PT"
  PTA_JSON[$r]=null
  [ "$CHECKS_ROW" = yes ] || return 0
  # SPF, DKIM, DMARC, ARC: Postern's default
  "$POSTERN" -c "$PT/etc" config set "smtpd_message_auth=yes" || bench_die "postern config set smtpd_message_auth failed"
  postern_start "$PT" || bench_die "postern start (checks on) failed; log: $(tail -n 5 "$PT/postern.log" 2>/dev/null)"
  bench_note "Postern, message checks on (round $r): $WARMUP warm-up + $MESSAGES messages to 127.0.0.1:$PT_PORT"
  if ! measure "postern-checks-r$r" "$PT_PORT" "$PT_NEW" "$(postern_master_pid)"; then
    bench_die "Postern (checks on): $MEASURE_ERROR (log: $PT/postern.log)"
  fi
  PTA_JSON[$r]="$(result_json "" "$PT_VERSION")"
  postern_stop "$PT"
  "$POSTERN" -c "$PT/etc" config set "smtpd_message_auth=no" || bench_die "postern config set smtpd_message_auth failed"
}

# postfix_round ROUND: Postfix (created in the first round it runs); sets PF_JSON[ROUND],
# or PF_ERROR, after which no later round runs Postfix.
PF_VERSION=""
PF_ERROR=""
PF_PORT="$(free_port)"
PF_NEW="$PF/mail/${RECIPIENT#*@}/${RECIPIENT%@*}/Maildir/new"
[ -n "$LMTP_TRANSPORT" ] && { POSTFIX_EXTRA_MAIN_CF="virtual_transport = $LMTP_TRANSPORT"; PF_NEW="$DC_NEW"; }
PF_CREATED=no
postfix_round() {
  local r="$1"
  PF_JSON[$r]=null
  [ -z "$PF_ERROR" ] || return 0
  if [ "$PF_CREATED" = no ]; then
    postfix_can_run || return 0
    PF_CREATED=yes
    postfix_up "$PF_PORT" "$RECIPIENT" || return 0
  elif ! postfix_start "$PF" "$PF_PORT"; then
    PF_ERROR="$POSTFIX_START_ERROR"; return 0
  fi
  bench_note "Postfix $PF_VERSION (round $r): $WARMUP warm-up + $MESSAGES messages to 127.0.0.1:$PF_PORT"
  if measure "postfix-r$r" "$PF_PORT" "$PF_NEW" "$(postfix_master_pid "$PF")"; then
    PF_JSON[$r]="$(result_json "" "$PF_VERSION")"
  else
    PF_ERROR="$MEASURE_ERROR (maillog: $(grep -E 'fatal|panic|error' "$PF/maillog" 2>/dev/null | tail -n 2))"
  fi
  postfix_stop "$PF"
}

for ((r = 1; r <= ROUNDS; r++)); do
  if [ "$(rounds_order "$r")" = postern-first ]; then postern_round "$r"; postfix_round "$r"
  else postfix_round "$r"; postern_round "$r"; fi
done
[ -n "$PF_ERROR" ] && PF_FAILED_JSON="$(result_json "$PF_ERROR" "$PF_VERSION")"
for ((r = 1; r <= ROUNDS; r++)); do
  pf="${PF_JSON[$r]}"
  [ "$pf" = null ] && pf="$PF_FAILED_JSON"
  rounds_add "$r" "${PT_JSON[$r]}" "${PTA_JSON[$r]}" "$pf"
done

# --- Report ------------------------------------------------------------------
report_start "throughput$([ "$DELIVERY" = lmtp ] && echo -lmtp)"
node -e '
  const [date, messages, size, sessions, warmup, machine, figures, loader, delivery] = process.argv.slice(1);
  const { postern, postern_message_auth, ...rest } = JSON.parse(figures);
  const report = {
    benchmark: "throughput", date,
    load: { tool: loader === "smtp-source" ? "smtp-source -d" : "bench/mx-load.js", messages: +messages, body_bytes: +size, sessions: +sessions,
            connection_reuse: true, warmup_messages: +warmup,
            delivery: delivery === "lmtp" ? "Dovecot LMTP (lmtp:inet:127.0.0.1, Maildir)" : "Maildir" },
    machine: JSON.parse(machine),
    postern: { ...postern, smtpd_message_auth: "no" },
    postern_message_auth: postern_message_auth && { ...postern_message_auth, smtpd_message_auth: "yes" },
    ...rest,
  };
  process.stdout.write(JSON.stringify(report, null, 2) + "\n");' \
  "$DATE" "$MESSAGES" "$SIZE" "$SESSIONS" "$WARMUP" "$MACHINE_JSON" "$(rounds_merge accepted_per_s accepted)" "$LOADER" "$DELIVERY" >"$OUT"

node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const m = r.machine, pt = r.postern, pf = r.postfix, q = r.ratio_postern_to_postfix;
  const col = (v, w) => String(v ?? "-").padStart(w);
  const pfName = "Postfix" + (pf.version ? " " + pf.version : "");
  const w = Math.max(9, pfName.length);
  console.log(`Postern throughput benchmark, ${r.date}`);
  console.log(`load     ${r.load.messages} messages, ${r.load.body_bytes}-byte bodies, ${r.load.sessions} parallel SMTP sessions (${r.load.tool}, connections kept), after ${r.load.warmup_messages} warm-up messages; delivery to ${r.load.delivery}`);
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
  const pa = r.postern_message_auth, qa = r.ratio_postern_message_auth_to_postfix;
  if (pa) {
    console.log("Postern with SPF/DKIM/DMARC checks on (Postfix checks none):");
    row("  accepted msg/s", 1, pa.accepted_per_s, pf.accepted_per_s, qa.accepted);
    row("  end-to-end msg/s", 1, pa.end_to_end_per_s, pf.end_to_end_per_s, qa.end_to_end);
  }
  if (pf.error) console.log(`\nPostfix: ${pf.error}`);' "$OUT"
print_rounds "$OUT" accepted_per_s
print_cpu_latency "$OUT" message
echo ""
echo "written to $OUT"

if [ -n "$PF_ERROR" ] && [ "$POSTERN_ONLY" != yes ]; then
  bench_note "the Postfix half did not run: $PF_ERROR"
  exit 1
fi
