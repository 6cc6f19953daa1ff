#!/bin/bash
# bench/concurrency.sh: many SMTP sessions held open on the MX listener at once while new
# sessions are still served, Postern side by side with Postfix.
#
# bench/hold-load.js opens N sessions (greeting, EHLO, then silence) to a sandbox Postern
# instance and holds them; once a second a probe opens one more session, times its
# greeting and sends one message (timing end of DATA to 250). Reports how many sessions
# were held, refused or failed, the probes' latencies, the peak memory of all the
# server's processes and their CPU; then the same against a private Postfix instance
# (default_process_limit 100, as shipped).
#
#   bench/concurrency.sh [--postern-only] [--keep] [--sessions N] [--hold SECONDS] [--size BYTES]
#                        [--parallel K] [--connect-timeout SECONDS] [--timeout SECONDS]
#
# Needs `make build` first; see bench/README.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SESSIONS="${BENCH_SESSIONS:-10000}"
HOLD="${BENCH_HOLD:-30}"
PARALLEL="${BENCH_PARALLEL:-200}"
CONNECT_TIMEOUT="${BENCH_CONNECT_TIMEOUT:-10}"
TIMEOUT="${BENCH_TIMEOUT:-900}"
SIZE="${BENCH_SIZE:-4096}"        # body bytes of each probe's message
MESSAGES=1 WARMUP=0              # not used here (bench_parse_args checks them)
POSTERN_ONLY=no
KEEP=no
RECIPIENT=bench@example.test
SENDER=sender@remote.test

usage() { sed -n '12,13p' "$0" | sed 's/^# \{0,3\}//' >&2; exit 2; }
bench_extra_arg() {
  case "$1" in
    --hold) HOLD="$2" ;;
    --parallel) PARALLEL="$2" ;;
    --connect-timeout) CONNECT_TIMEOUT="$2" ;;
    *) return 1 ;;
  esac
  BENCH_EXTRA_SHIFT=2
}
bench_parse_args "$@"
for v in HOLD PARALLEL CONNECT_TIMEOUT; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || bench_die "${v,,} must be a positive whole number, not \"${!v}\""
done

bench_require_build
postfix_tools
# every held session is a descriptor in the client and one in the server
raise_fd_limit $((SESSIONS + 4096)) || bench_die "cannot raise the open-file limit to $((SESSIONS + 4096)) (ulimit -n is $(ulimit -n)); run as root or lower --sessions"

bench_workdir

# measure NAME PORT MASTERPID: the hold run with CPU sampling; sets M_JSON or MEASURE_ERROR.
measure() {
  local name="$1" port="$2" root="$3" log="$WORK/$1.hold"
  cpu_start "$WORK/$name.cpu" "$root"
  if ! timeout $((TIMEOUT + 60)) node "$BENCH_ROOT/bench/hold-load.js" --port "$port" --sessions "$SESSIONS" \
      --parallel "$PARALLEL" --hold "$HOLD" --connect-timeout "$CONNECT_TIMEOUT" --timeout "$TIMEOUT" \
      --root "$root" --size "$SIZE" --from "$SENDER" --to "$RECIPIENT" >"$log.json" 2>"$log.err"; then
    cpu_stop
    MEASURE_ERROR="hold-load.js failed: $(tail -n 3 "$log.err" | tr '\n' ' ')"; return 1
  fi
  cpu_stop
  M_JSON="$(node -e '
    const fs = require("fs"), [hold, cpu, version] = process.argv.slice(1);
    const r = JSON.parse(fs.readFileSync(hold, "utf8")), c = JSON.parse(cpu);
    console.log(JSON.stringify({ version: version || null, ...r, data_to_250: r.probe_data_to_250, cpu: c }));' \
    "$log.json" "$(cpu_json "$WORK/$name.cpu" "$SESSIONS")" "$4")"
}

# --- Postern -----------------------------------------------------------------
bench_note "Postern: sandbox instance in $PT"
PT_PORT="$(free_port)"
postern_create "$PT" "$PT_PORT" postern.bench.test || bench_die "postern init failed"
"$POSTERN" -c "$PT/etc" user add "$RECIPIENT" --password-stdin <<<"bench-password" >/dev/null ||
  bench_die "postern user add $RECIPIENT failed"
# A stranger (not in mynetworks) as in the throughput benchmark; the per-client limits
# off (0), since every session comes from 127.0.0.1: the benchmark measures the
# listener, not anvil's refusal of one client.
"$POSTERN" -c "$PT/etc" config set "mynetworks=192.0.2.0/24" "smtpd_client_restrictions=" \
  "smtpd_client_connection_count_limit=0" "smtpd_client_connection_rate_limit=0" >/dev/null || bench_die "postern config set failed"
postern_start "$PT" || bench_die "postern start failed; log: $(tail -n 5 "$PT/postern.log" 2>/dev/null)"
PT_MASTER="$(postern_master_pid)"
PT_VERSION="$(postern_version)"
bench_note "Postern: holding $SESSIONS sessions on 127.0.0.1:$PT_PORT for $HOLD s"
measure postern "$PT_PORT" "$PT_MASTER" "$PT_VERSION" ||
  bench_die "Postern: $MEASURE_ERROR (log: $PT/postern.log$([ "$KEEP" = yes ] || echo ', rerun with --keep to keep it'))"
POSTERN_JSON="$M_JSON"
postern_stop "$PT"

# --- Postfix -----------------------------------------------------------------
PF_VERSION=""
if postfix_can_run; then
  PF_PORT="$(free_port)"
  # anvil's per-client limit off, as for Postern; default_process_limit stays 100.
  POSTFIX_EXTRA_MAIN_CF="smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0"
  if postfix_up "$PF_PORT" "$RECIPIENT"; then
    bench_note "Postfix $PF_VERSION: holding $SESSIONS sessions on 127.0.0.1:$PF_PORT for $HOLD s"
    if measure postfix "$PF_PORT" "$(postfix_master_pid "$PF")" "$PF_VERSION"; then
      POSTFIX_JSON="$M_JSON"
    else
      PF_ERROR="$MEASURE_ERROR (maillog: $(grep -E 'fatal|panic|error' "$PF/maillog" 2>/dev/null | tail -n 2))"
    fi
  fi
  postfix_stop "$PF"
fi
[ -n "$PF_ERROR" ] && POSTFIX_JSON="$(error_json "$PF_ERROR" "$PF_VERSION")"

# --- Report ------------------------------------------------------------------
report_start concurrency
node -e '
  const [date, sessions, hold, parallel, ct, machine, postern, postfix] = process.argv.slice(1);
  const report = {
    benchmark: "concurrency", date,
    load: { tool: "bench/hold-load.js", sessions: +sessions, hold_seconds: +hold, parallel_connects: +parallel,
            connect_timeout_seconds: +ct, per_session: "greeting, EHLO, then idle",
            probe: "once a second: a new session, greeting timed, one message (end of DATA to 250 timed), QUIT" },
    machine: JSON.parse(machine), postern: JSON.parse(postern), postfix: JSON.parse(postfix),
  };
  process.stdout.write(JSON.stringify(report, null, 2) + "\n");' \
  "$DATE" "$SESSIONS" "$HOLD" "$PARALLEL" "$CONNECT_TIMEOUT" "$MACHINE_JSON" "$POSTERN_JSON" "$POSTFIX_JSON" >"$OUT"

node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const m = r.machine, pt = r.postern, pf = r.postfix;
  const pfName = "Postfix" + (pf.version ? " " + pf.version : "");
  const w = Math.max(12, pfName.length);
  const col = (v, n) => String(v ?? "-").padStart(n);
  console.log(`Postern concurrency benchmark, ${r.date}`);
  console.log(`load     ${r.load.sessions} sessions (greeting, EHLO, idle) held ${r.load.hold_seconds} s, ${r.load.parallel_connects} connects in flight; a probe session with one message every second`);
  console.log(`machine  ${m.nproc} CPUs (${m.cpu}), ${m.memory_mib} MiB, Node ${m.node}, Linux ${m.kernel}`);
  console.log("");
  console.log(`${"".padEnd(34)}${col("Postern", 12)}  ${col(pfName, w)}`);
  const g = (s, f) => (s && !s.error ? f(s) : null);
  const row = (label, f) => console.log(`${label.padEnd(34)}${col(g(pt, f), 12)}  ${col(g(pf, f), w)}`);
  row("held after opening", (s) => s.held_after_opening);
  row("held at the end", (s) => s.held_at_end);
  row("closed by the server while held", (s) => s.closed_by_server_while_held);
  row("refused (4xx/5xx greeting/EHLO)", (s) => s.refused);
  row("failed (no greeting, reset...)", (s) => s.failed);
  row("opening all took s", (s) => s.open_seconds);
  row("probe greeting p50 ms", (s) => s.probe_greeting && s.probe_greeting.p50_ms);
  row("probe greeting p99 ms", (s) => s.probe_greeting && s.probe_greeting.p99_ms);
  row("probe greeting max ms", (s) => s.probe_greeting && s.probe_greeting.max_ms);
  row("  during the hold p50 ms", (s) => s.probe_greeting_during_hold && s.probe_greeting_during_hold.p50_ms);
  row("  during the hold p99 ms", (s) => s.probe_greeting_during_hold && s.probe_greeting_during_hold.p99_ms);
  row("probes that failed", (s) => s.probe_failures);
  row("peak memory, all processes MiB", (s) => s.peak_memory && `${s.peak_memory.pss_mib} PSS`);
  row("  (sum of RSS MiB, processes)", (s) => s.peak_memory && `${s.peak_memory.rss_mib}, ${s.peak_memory.processes}`);
  for (const [n, s] of [["Postern", pt], ["Postfix", pf]]) {
    if (s.error) console.log(`\n${n}: ${s.error}`);
    else if (Object.keys(s.failed_by_error).length || Object.keys(s.refused_by_reply).length || Object.keys(s.probe_errors).length)
      console.log(`${n}: refused ${JSON.stringify(s.refused_by_reply)}, failed ${JSON.stringify(s.failed_by_error)}, probe errors ${JSON.stringify(s.probe_errors)}`);
  }' "$OUT"
print_cpu_latency "$OUT" session
echo ""
echo "written to $OUT"

if [ -n "$PF_ERROR" ] && [ "$POSTERN_ONLY" != yes ]; then
  bench_note "the Postfix half did not run: $PF_ERROR"
  exit 1
fi
