#!/bin/bash
# bench/submission.sh: submission (587: STARTTLS + AUTH) and outbound delivery,
# Postern side by side with Postfix.
#
# bench/submit-load.js submits N messages of SIZE bytes over SESSIONS parallel sessions
# (each: STARTTLS, AUTH PLAIN, then its messages on the one connection, RSET between)
# to a sandbox Postern instance, which relays them to Postfix's smtp-sink on
# 127.0.0.9; then the same load to a private Postfix instance (run from the unpacked
# Debian package, SASL by Dovecot's auth service) relaying to its own smtp-sink.
# Reports submitted and end-to-end messages per second for each and Postern/Postfix,
# CPU ms per message of each program, and p50/p99 end of DATA to 250.
#
#   bench/submission.sh [--postern-only] [--mx] [--keep] [--rounds N] [--messages N] [--size BYTES]
#                       [--sessions N] [--warmup N] [--timeout SECONDS]
#
# --rounds N: measure both servers N times, alternating which goes first; the report's
# figures are those of the round with the median end-to-end ratio (bench/lib.sh, "Rounds").
# Needs `make build` first; see bench/README.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

MESSAGES="${BENCH_MESSAGES:-2000}"
SIZE="${BENCH_SIZE:-4096}"
SESSIONS="${BENCH_SESSIONS:-20}"
WARMUP="${BENCH_WARMUP:-200}"
TIMEOUT="${BENCH_TIMEOUT:-600}"   # bound on each of: submitting, waiting for the sink
POSTERN_ONLY=no
MX=no
KEEP=no
USER_ADDR=bench@example.test
PASSWORD=bench-password
RECIPIENT=someone@sink.test
SINK_ADDR=127.0.0.9   # the "remote" MX: another loopback address, as mx.sink.test

ROUNDS=1
usage() { sed -n '13,14p' "$0" | sed 's/^# \{0,3\}//' >&2; exit 2; }
bench_extra_arg() {
  case "$1" in
    --mx) MX=yes ;;
    --rounds) ROUNDS="$2"; BENCH_EXTRA_SHIFT=2 ;;
    *) return 1 ;;
  esac
}
bench_parse_args "$@"
[[ "$ROUNDS" =~ ^[1-9]$ ]] || bench_die "rounds must be a whole number from 1 to 9, not \"$ROUNDS\""

bench_require_build test/dist/dns-server.js
[ -f "$BENCH_ROOT/node_modules/nodemailer/package.json" ] ||
  bench_die "node_modules/nodemailer is missing: run \`make build\` first"
postfix_tools

bench_workdir

# submit LOG-PREFIX PORT COUNT: run the load generator; its JSON report goes to LOG-PREFIX.json.
submit() {
  BENCH_PASSWORD="$PASSWORD" timeout $((TIMEOUT + 60)) node "$BENCH_ROOT/bench/submit-load.js" \
    --port "$2" --user "$USER_ADDR" --from "$USER_ADDR" --to "$RECIPIENT" \
    --messages "$3" --sessions "$SESSIONS" --size "$SIZE" --timeout "$TIMEOUT" >"$1.json" 2>"$1.err"
}
load_failure() { # LOG-PREFIX: why a load run failed, in one line
  { json_field "$1.json" errors 2>/dev/null || true; tail -n 3 "$1.err" 2>/dev/null; } | tr '\n' ' '
}

# measure NAME PORT SINKDIR MASTERPID [HELPERPID]: warm up, then the timed load (CPU of
# every process below MASTERPID, and HELPERPID, sampled); sets M_* or MEASURE_ERROR.
measure() {
  local name="$1" port="$2" sink="$3" root="$4" helper="${5:-}" log base t0 tl dump
  sink_clear "$sink"   # an earlier round's messages
  if [ "$WARMUP" -gt 0 ]; then
    log="$WORK/$name-warmup.load"
    base="$(sink_messages "$sink")"
    if ! submit "$log" "$port" "$WARMUP"; then
      MEASURE_ERROR="warm-up: submission failed: $(load_failure "$log")"; return 1
    fi
    if ! sink_wait "$sink" $((base + WARMUP)) "$TIMEOUT"; then
      MEASURE_ERROR="warm-up: smtp-sink got only $(( $(sink_messages "$sink") - base )) of $WARMUP messages within $TIMEOUT s"; return 1
    fi
    sink_clear "$sink"
  fi
  base="$(sink_messages "$sink")"
  log="$WORK/$name.load"
  cpu_start "$WORK/$name.cpu" "$root" "$helper"
  if ! submit "$log" "$port" "$MESSAGES"; then
    cpu_stop
    MEASURE_ERROR="submission failed or took over $TIMEOUT s: $(load_failure "$log")"; return 1
  fi
  if ! sink_wait "$sink" $((base + MESSAGES)) "$TIMEOUT"; then
    cpu_stop
    MEASURE_ERROR="smtp-sink got only $(( $(sink_messages "$sink") - base )) of $MESSAGES messages within $TIMEOUT s of the end of submission"; return 1
  fi
  cpu_stop
  M_CPU="$(cpu_json "$WORK/$name.cpu" "$MESSAGES")"
  M_LATENCY="$(json_field "$log.json" data_to_250)"
  M_CLIENT_CPU="$(json_field "$log.json" client_cpu_ms)"
  t0="$(awk -v ms="$(json_field "$log.json" start_ms)" 'BEGIN { printf "%.3f", ms / 1000 }')"
  tl="$(sink_last_time "$sink")"
  M_SUBMIT_S="$(json_field "$log.json" seconds)"
  M_E2E_S="$(seconds_between "$t0" "$tl")"
  M_SUBMITTED="$(rate "$MESSAGES" "$M_SUBMIT_S")"
  M_END_TO_END="$(rate "$MESSAGES" "$M_E2E_S")"
  M_RECEIVED="$(( $(sink_messages "$sink") - base ))"
  M_TLS="$(json_field "$log.json" tls)"
  # What reached the sink: signed or not (Postern signs when the sender's domain has a
  # key; the benchmark gives it none), and submitted with authentication.
  dump="$(sink_any_dump "$sink")"
  M_DKIM=false; M_ESMTPSA=false
  if [ -n "$dump" ]; then
    grep -qi '^DKIM-Signature:' "$dump" && M_DKIM=true
    grep -q 'with ESMTPSA' "$dump" && M_ESMTPSA=true
  fi
  return 0
}

result_json() { # ERROR-or-empty [VERSION]
  if [ -n "$1" ]; then
    error_json "$1" "${2:-}"
  else
    node -e 'const [a, e, s, t, r, tls, dkim, sa, lat, cpu, client, v] = process.argv.slice(1);
      console.log(JSON.stringify({ version: v || null, submitted_per_s: +a, end_to_end_per_s: +e,
        submit_seconds: +s, end_to_end_seconds: +t, sink_received: +r, tls: JSON.parse(tls),
        dkim_signed: dkim === "true", received_with_esmtpsa: sa === "true",
        data_to_250: JSON.parse(lat), cpu: JSON.parse(cpu), client_cpu_ms: +client }))' \
      "$M_SUBMITTED" "$M_END_TO_END" "$M_SUBMIT_S" "$M_E2E_S" "$M_RECEIVED" "$M_TLS" "$M_DKIM" "$M_ESMTPSA" "$M_LATENCY" "$M_CPU" "$M_CLIENT_CPU" "${2:-}"
  fi
}

# --- DNS ---------------------------------------------------------------------
# Postern resolves through this server (dns_servers): the client's reverse name as
# Postfix finds it in /etc/hosts (127.0.0.1 = localhost), and, with --mx, sink.test's
# MX. Postfix uses the system resolver and /etc/hosts.
DNS_RECORDS='[
  {"name": "127.0.0.1", "type": "PTR", "value": "localhost"},
  {"name": "localhost", "type": "A", "value": "127.0.0.1"},
  {"name": "sink.test", "type": "MX", "value": "10 mx.sink.test"},
  {"name": "mx.sink.test", "type": "A", "value": "'"$SINK_ADDR"'"}
]'
dns_start "$WORK/dns" 127.0.0.1 "$DNS_RECORDS" || bench_die "the loopback DNS server (bench/dns-server.js) did not start"

# --- Postern -----------------------------------------------------------------
bench_note "Postern: sandbox instance in $PT"
PT_PORT="$(free_port)"
PT_SINK_PORT="$(free_port)"
postern_create "$PT" "$PT_PORT" postern.bench.test || bench_die "postern init failed"
PT_SUB_PORT="$POSTERN_SUBMISSION_PORT"
"$POSTERN" -c "$PT/etc" user add "$USER_ADDR" --password-stdin <<<"$PASSWORD" >/dev/null ||
  bench_die "postern user add $USER_ADDR failed"
# The client must authenticate to relay (not in mynetworks), as a user's mail client would.
if [ "$MX" = yes ]; then
  ROUTE="MX lookup of sink.test through a DNS server on loopback (mx.sink.test = $SINK_ADDR), smtp_port = the sink's port"
  PT_ROUTING=("smtp_port=$PT_SINK_PORT")
else
  ROUTE="relayhost = [$SINK_ADDR]:PORT on both (no MX lookup)"
  PT_ROUTING=("relayhost=[$SINK_ADDR]:$PT_SINK_PORT")
fi
"$POSTERN" -c "$PT/etc" config set "mynetworks=192.0.2.0/24" "dns_servers=127.0.0.1:$DNS_PORT" "${PT_ROUTING[@]}" ||
  bench_die "postern config set failed"
[ -s "$PT/etc/dkim/signing.table" ] && bench_die "the new instance has a DKIM signing table; the benchmark expects none"
sink_start "$WORK/sink-postern" "$SINK_ADDR" "$PT_SINK_PORT" || bench_die "smtp-sink did not start on $SINK_ADDR:$PT_SINK_PORT"
PT_VERSION="$(postern_version)"

# postern_round ROUND: sets PT_JSON[ROUND].
declare -a PT_JSON PF_JSON
postern_round() {
  local r="$1"
  postern_start "$PT" || bench_die "postern start failed; log: $(tail -n 5 "$PT/postern.log" 2>/dev/null)"
  bench_note "Postern (round $r): $WARMUP warm-up + $MESSAGES messages to 127.0.0.1:$PT_SUB_PORT, relayed to smtp-sink on $SINK_ADDR:$PT_SINK_PORT"
  if ! measure "postern-r$r" "$PT_SUB_PORT" "$WORK/sink-postern" "$(postern_master_pid)"; then
    bench_die "Postern: $MEASURE_ERROR (log: $PT/postern.log$([ "$KEEP" = yes ] || echo ', rerun with --keep to keep it'))"
  fi
  PT_JSON[$r]="$(result_json "" "$PT_VERSION")"
  postern_stop "$PT"
}

# --- Postfix -----------------------------------------------------------------
PF_ERROR=""
PF_VERSION=""
PF_CREATED=no
# postfix_setup: the private instance, its SASL (Dovecot's auth service) and its sink,
# once; sets PF_ERROR when Postfix cannot run.
postfix_setup() {
  if [ "$MX" = yes ] && [ "$POSTERN_ONLY" != yes ]; then
    PF_ERROR="not run (--mx): Postfix resolves through /etc/resolv.conf, which cannot name a DNS server's port; without --mx both use relayhost"
    return 1
  fi
  postfix_can_run || return 1
  if ! dovecot_auth_start "$WORK/dovecot" "$PT/etc/users" 2>"$WORK/dovecot-start.err"; then
    PF_ERROR="Dovecot's auth service (Postfix's SASL) did not start: $(tail -n 3 "$WORK/dovecot-start.err" | tr '\n' ' ')"
    return 1
  fi
  bench_note "Postfix: private instance in $PF (SASL: Dovecot auth at $DOVECOT_AUTH_SOCKET)"
  PF_PORT="$(free_port)"
  PF_SUB_PORT="$(free_port)"
  PF_SINK_PORT="$(free_port)"
  MAIL_UID="$(id -u nobody)"; MAIL_GID="$(id -g nobody)"
  # The submission service as Postfix's own master.cf suggests it, with Postern's
  # defaults where they differ: AUTH only after TLS, the sender must be the login's.
  POSTFIX_EXTRA_MAIN_CF="
smtpd_tls_cert_file = $PF/etc/tls/cert.pem
smtpd_tls_key_file = $PF/etc/tls/key.pem
smtpd_tls_auth_only = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = $DOVECOT_AUTH_SOCKET
smtpd_sender_login_maps = texthash:$PF/etc/senders
relayhost = [$SINK_ADDR]:$PF_SINK_PORT
smtp_tls_security_level = may"
  POSTFIX_EXTRA_MASTER_CF="127.0.0.1:$PF_SUB_PORT inet n  -       n       -       -       smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_sender_restrictions=reject_sender_login_mismatch
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject"
  postfix_create "$PF" "$PF_PORT" postfix.bench.test "$USER_ADDR" "$MAIL_UID" "$MAIL_GID"
  echo "$USER_ADDR $USER_ADDR" >"$PF/etc/senders"
  # The same certificate and key as Postern's.
  mkdir -p "$PF/etc/tls"
  cp "$PT/etc/tls/cert.pem" "$PT/etc/tls/key.pem" "$PF/etc/tls/"
  chmod 600 "$PF/etc/tls/key.pem"
  PF_VERSION="$(postfix_version "$PF")"
  if ! sink_start "$WORK/sink-postfix" "$SINK_ADDR" "$PF_SINK_PORT"; then
    PF_ERROR="smtp-sink did not start on $SINK_ADDR:$PF_SINK_PORT"
    return 1
  fi
}

# postfix_round ROUND: sets PF_JSON[ROUND], or PF_ERROR, after which no later round runs Postfix.
postfix_round() {
  local r="$1"
  PF_JSON[$r]=null
  [ -z "$PF_ERROR" ] || return 0
  if [ "$PF_CREATED" = no ]; then
    PF_CREATED=yes
    postfix_setup || return 0
  fi
  if ! postfix_start "$PF" "$PF_SUB_PORT"; then
    PF_ERROR="$POSTFIX_START_ERROR"
  else
    bench_note "Postfix $PF_VERSION (round $r): $WARMUP warm-up + $MESSAGES messages to 127.0.0.1:$PF_SUB_PORT, relayed to smtp-sink on $SINK_ADDR:$PF_SINK_PORT"
    # Dovecot's auth service checks Postfix's passwords (Postern's smtpd does it itself): counted with Postfix
    if measure "postfix-r$r" "$PF_SUB_PORT" "$WORK/sink-postfix" "$(postfix_master_pid "$PF")" "$DOVECOT_PID"; then
      PF_JSON[$r]="$(result_json "" "$PF_VERSION")"
    else
      PF_ERROR="$MEASURE_ERROR (maillog: $(grep -E 'fatal|panic|error|warning: SASL' "$PF/maillog" 2>/dev/null | tail -n 2))"
    fi
  fi
  postfix_stop "$PF"
}

for ((r = 1; r <= ROUNDS; r++)); do
  if [ "$(rounds_order "$r")" = postern-first ]; then postern_round "$r"; postfix_round "$r"
  else postfix_round "$r"; postern_round "$r"; fi
done
bench_stop_background
[ -n "$PF_ERROR" ] && PF_FAILED_JSON="$(result_json "$PF_ERROR" "$PF_VERSION")"
for ((r = 1; r <= ROUNDS; r++)); do
  pf="${PF_JSON[$r]}"
  [ "$pf" = null ] && pf="$PF_FAILED_JSON"
  rounds_add "$r" "${PT_JSON[$r]}" null "$pf"
done

# --- Report ------------------------------------------------------------------
report_start submission
node -e '
  const [date, messages, size, sessions, warmup, route, machine, figures] = process.argv.slice(1);
  const { postern_message_auth, ratio_postern_message_auth_to_postfix, ...rest } = JSON.parse(figures);
  const report = {
    benchmark: "submission", date,
    load: { tool: "bench/submit-load.js (nodemailer SMTPConnection)", messages: +messages, body_bytes: +size,
            sessions: +sessions, per_session: "STARTTLS, AUTH PLAIN, then its messages on one connection with RSET between",
            warmup_messages: +warmup, delivery: "smtp-sink (Postfix) on 127.0.0.9", routing: route },
    machine: JSON.parse(machine),
    ...rest,
  };
  process.stdout.write(JSON.stringify(report, null, 2) + "\n");' \
  "$DATE" "$MESSAGES" "$SIZE" "$SESSIONS" "$WARMUP" "$ROUTE" "$MACHINE_JSON" "$(rounds_merge submitted_per_s submitted)" >"$OUT"

node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const m = r.machine, pt = r.postern, pf = r.postfix, q = r.ratio_postern_to_postfix;
  const col = (v, w) => String(v ?? "-").padStart(w);
  const pfName = "Postfix" + (pf.version ? " " + pf.version : "");
  const w = Math.max(9, pfName.length);
  console.log(`Postern submission benchmark, ${r.date}`);
  console.log(`load     ${r.load.messages} messages, ${r.load.body_bytes}-byte bodies, ${r.load.sessions} parallel sessions (STARTTLS + AUTH PLAIN, RSET between messages), after ${r.load.warmup_messages} warm-up messages`);
  console.log(`route    ${r.load.routing}, to smtp-sink`);
  console.log(`machine  ${m.nproc} CPUs (${m.cpu}), ${m.memory_mib} MiB, Node ${m.node}, Linux ${m.kernel}, spools on ${m.spool_filesystem}`);
  console.log("");
  console.log(`${"".padEnd(24)}${col("Postern", 10)}  ${col(pfName, w)}  ${col("Postern/Postfix", 15)}`);
  const fx = (v, d) => (typeof v === "number" ? v.toFixed(d) : v);
  const row = (label, d, a, b, ratio) =>
    console.log(`${label.padEnd(24)}${col(fx(a, d), 10)}  ${col(fx(b, d), w)}  ${col(fx(ratio, 2), 15)}`);
  row("submitted msg/s", 1, pt.submitted_per_s, pf.submitted_per_s, q.submitted);
  row("end-to-end msg/s", 1, pt.end_to_end_per_s, pf.end_to_end_per_s, q.end_to_end);
  row("submitting took s", 2, pt.submit_seconds, pf.submit_seconds, null);
  row("last at sink after s", 2, pt.end_to_end_seconds, pf.end_to_end_seconds, null);
  const tls = (x) => (x.tls ? `${x.tls.version} ${x.tls.cipher}` : "-");
  console.log(`${"TLS".padEnd(24)}${tls(pt)} / ${tls(pf)}`);
  if (pt.dkim_signed || pf.dkim_signed) console.log("note: DKIM-signed mail reached the sink (unexpected: no key was configured)");
  if (pf.error) console.log(`\nPostfix: ${pf.error}`);' "$OUT"
print_rounds "$OUT" submitted_per_s
print_cpu_latency "$OUT" message
echo ""
echo "written to $OUT"

if [ -n "$PF_ERROR" ] && [ "$POSTERN_ONLY" != yes ] && [ "$MX" != yes ]; then
  bench_note "the Postfix half did not run: $PF_ERROR"
  exit 1
fi
