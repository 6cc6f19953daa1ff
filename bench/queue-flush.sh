#!/bin/bash
# bench/queue-flush.sh: a flush of a deep deferred queue for one remote destination,
# Postern side by side with Postfix.
#
# bench/mx-load.js relays N messages of SIZE bytes through a sandbox Postern instance
# (the client is in mynetworks) to a relayhost on 127.0.0.9 where nothing listens yet,
# so every message is deferred; then Postfix's smtp-sink starts there, `postern queue
# flush` runs, and the time until the sink has them all and the queue is empty is
# measured. Then the same with a private Postfix instance and `postqueue -f`.
#
#   bench/queue-flush.sh [--postern-only] [--keep] [--messages N] [--size BYTES]
#                        [--sessions N] [--timeout SECONDS]
#
# Needs `make build` first; see bench/README.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

MESSAGES="${BENCH_MESSAGES:-100000}"
SIZE="${BENCH_SIZE:-4096}"
SESSIONS="${BENCH_SESSIONS:-20}"
WARMUP=0   # the deferring phase warms both servers up
TIMEOUT="${BENCH_TIMEOUT:-3600}"   # bound on each of: queueing, deferral, the flush
POSTERN_ONLY=no
KEEP=no
SENDER=sender@example.test
RECIPIENT=someone@sink.test
SINK_ADDR=127.0.0.9

usage() { sed -n '11,12p' "$0" | sed 's/^# \{0,3\}//' >&2; exit 2; }
bench_parse_args "$@"

bench_require_build
postfix_tools

bench_workdir

# The retry schedule pushed out of the way on both, so that only the flush delivers:
# no queue run, and no deferred message due again, within the benchmark.
BACKOFF=(minimal_backoff_time=3600s maximal_backoff_time=4000s queue_run_delay=3600s)

# measure NAME PORT SPOOL SINKPORT MASTERPID VERSION FLUSH-COMMAND...: queue N messages to the
# dead relayhost, wait until all are deferred, start the sink, flush, wait until the
# sink has them all and the queue is empty. Sets M_* or MEASURE_ERROR.
measure() {
  local name="$1" port="$2" spool="$3" sinkport="$4" root="$5" version="$6" log="$WORK/$1.load" t0 tl te
  shift 6
  bench_note "$name: relaying $MESSAGES messages to the dead relayhost [$SINK_ADDR]:$sinkport"
  if ! timeout $((TIMEOUT + 60)) node "$BENCH_ROOT/bench/mx-load.js" --port "$port" --from "$SENDER" --to "$RECIPIENT" \
      --messages "$MESSAGES" --sessions "$SESSIONS" --size "$SIZE" --timeout "$TIMEOUT" >"$log.json" 2>"$log.err"; then
    MEASURE_ERROR="queueing failed: $(json_field "$log.json" errors 2>/dev/null) $(tail -n 3 "$log.err" | tr '\n' ' ')"; return 1
  fi
  if ! wait_for_queue "$spool" deferred "$MESSAGES" "$TIMEOUT"; then
    MEASURE_ERROR="$(queue_count "$spool" deferred) of $MESSAGES messages deferred ($(queue_count "$spool") queued) within $TIMEOUT s"; return 1
  fi
  sink_start "$WORK/sink-$name" "$SINK_ADDR" "$sinkport" || { MEASURE_ERROR="smtp-sink did not start on $SINK_ADDR:$sinkport"; return 1; }
  bench_note "$name: $MESSAGES deferred; smtp-sink started; flushing"
  cpu_start "$WORK/$name.cpu" "$root"
  t0="$(now)"
  if ! "$@" >"$WORK/$name.flush.out" 2>&1; then
    cpu_stop
    MEASURE_ERROR="the flush command failed: $(tail -n 3 "$WORK/$name.flush.out" | tr '\n' ' ')"; return 1
  fi
  if ! sink_wait "$WORK/sink-$name" "$MESSAGES" "$TIMEOUT"; then
    cpu_stop
    MEASURE_ERROR="smtp-sink got only $(sink_messages "$WORK/sink-$name") of $MESSAGES messages within $TIMEOUT s of the flush"; return 1
  fi
  if ! wait_for_queue "$spool" deferred 0 "$TIMEOUT"; then
    cpu_stop
    MEASURE_ERROR="the sink has them all but $(queue_count "$spool") are still queued $TIMEOUT s after the flush"; return 1
  fi
  te="$(now)"
  cpu_stop
  tl="$(sink_last_time "$WORK/sink-$name")"
  M_SINK_S="$(seconds_between "$t0" "$tl")"
  M_EMPTY_S="$(seconds_between "$t0" "$te")"
  M_JSON="$(node -e '
    const fs = require("fs"), [load, cpu, sinkS, emptyS, n, received, version] = process.argv.slice(1);
    const l = JSON.parse(fs.readFileSync(load, "utf8"));
    const rate = (s) => (s > 0 ? Math.round((n / s) * 10) / 10 : null);
    console.log(JSON.stringify({ version: version || null,
      flush_per_s: rate(+sinkS), flush_to_empty_per_s: rate(+emptyS), flush_to_last_at_sink_seconds: +sinkS,
      flush_to_queue_empty_seconds: +emptyS, sink_received: +received,
      queueing: { accepted_per_s: rate(l.seconds), seconds: l.seconds, client_cpu_ms: l.client_cpu_ms },
      data_to_250: l.data_to_250, cpu: JSON.parse(cpu) }));' \
    "$log.json" "$(cpu_json "$WORK/$name.cpu" "$MESSAGES")" "$M_SINK_S" "$M_EMPTY_S" "$MESSAGES" \
    "$(sink_messages "$WORK/sink-$name")" "$version")"
  bench_kill "$SINK_PID"
}

# --- Postern -----------------------------------------------------------------
bench_note "Postern: sandbox instance in $PT"
PT_PORT="$(free_port)"
PT_SINK_PORT="$(free_port)"
postern_create "$PT" "$PT_PORT" postern.bench.test || bench_die "postern init failed"
# The client relays as a host of mynetworks (postern init's default 127.0.0.0/8) does.
"$POSTERN" -c "$PT/etc" config set "relayhost=[$SINK_ADDR]:$PT_SINK_PORT" "${BACKOFF[@]}" >/dev/null ||
  bench_die "postern config set failed"
postern_start "$PT" || bench_die "postern start failed; log: $(tail -n 5 "$PT/postern.log" 2>/dev/null)"
PT_MASTER="$(postern_master_pid)"
PT_SPOOL="$(node -e 'console.log(JSON.parse(process.argv[1]).queue_directory)' "$POSTERN_STATUS_JSON")"
PT_VERSION="$(postern_version)"
measure postern "$PT_PORT" "$PT_SPOOL" "$PT_SINK_PORT" "$PT_MASTER" "$PT_VERSION" \
    timeout 60 "$POSTERN" -c "$PT/etc" queue flush ||
  bench_die "Postern: $MEASURE_ERROR (log: $PT/postern.log$([ "$KEEP" = yes ] || echo ', rerun with --keep to keep it'))"
POSTERN_JSON="$M_JSON"
postern_stop "$PT"
# the sink's dumps can be large (N messages): not needed past the measurement
[ "$KEEP" = yes ] || rm -rf "$WORK/sink-postern/dump"

# --- Postfix -----------------------------------------------------------------
PF_VERSION=""
if postfix_can_run; then
  PF_PORT="$(free_port)"
  PF_SINK_PORT="$(free_port)"
  # The same relaying client (a later main.cf line wins in Postfix), relayhost and retry schedule.
  POSTFIX_EXTRA_MAIN_CF="mynetworks = 127.0.0.0/8
relayhost = [$SINK_ADDR]:$PF_SINK_PORT
$(printf '%s\n' "${BACKOFF[@]}" | sed 's/=/ = /')"
  if ! postfix_up "$PF_PORT" bench@example.test; then
    :
  elif measure postfix "$PF_PORT" "$PF/spool" "$PF_SINK_PORT" "$(postfix_master_pid "$PF")" "$PF_VERSION" \
      env -i LD_LIBRARY_PATH="$PFX_LIB" timeout 60 "$PFX_TREE/usr/sbin/postqueue" -c "$PF/etc" -f; then
    POSTFIX_JSON="$M_JSON"
  else
    PF_ERROR="$MEASURE_ERROR (maillog: $(grep -E 'fatal|panic|error' "$PF/maillog" 2>/dev/null | tail -n 2))"
  fi
  postfix_stop "$PF"
fi
bench_stop_background
[ -n "$PF_ERROR" ] && POSTFIX_JSON="$(error_json "$PF_ERROR" "$PF_VERSION")"

# --- Report ------------------------------------------------------------------
report_start queue-flush
node -e '
  const [date, messages, size, sessions, machine, postern, postfix] = process.argv.slice(1);
  const pt = JSON.parse(postern), pf = JSON.parse(postfix);
  const q = (a, b) => (a && b ? Math.round((a / b) * 100) / 100 : null);
  const report = {
    benchmark: "queue-flush", date,
    load: { tool: "bench/mx-load.js", messages: +messages, body_bytes: +size, sessions: +sessions,
            deferral: "relayhost [127.0.0.9]:PORT with nothing listening (connection refused)",
            flush: "postern queue flush / postqueue -f, once smtp-sink listens there", destination: "smtp-sink (Postfix) on 127.0.0.9" },
    machine: JSON.parse(machine), postern: pt, postfix: pf,
    ratio_postern_to_postfix: { flush: q(pt.flush_per_s, pf.flush_per_s), flush_to_empty: q(pt.flush_to_empty_per_s, pf.flush_to_empty_per_s) },
  };
  process.stdout.write(JSON.stringify(report, null, 2) + "\n");' \
  "$DATE" "$MESSAGES" "$SIZE" "$SESSIONS" "$MACHINE_JSON" "$POSTERN_JSON" "$POSTFIX_JSON" >"$OUT"

node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const m = r.machine, pt = r.postern, pf = r.postfix, q = r.ratio_postern_to_postfix;
  const pfName = "Postfix" + (pf.version ? " " + pf.version : "");
  const w = Math.max(9, pfName.length);
  const col = (v, n) => String(v ?? "-").padStart(n);
  const fx = (v, d) => (typeof v === "number" ? v.toFixed(d) : v);
  console.log(`Postern queue-flush benchmark, ${r.date}`);
  console.log(`load     ${r.load.messages} deferred messages, ${r.load.body_bytes}-byte bodies, for one relayhost; then its smtp-sink starts and the queue is flushed`);
  console.log(`machine  ${m.nproc} CPUs (${m.cpu}), ${m.memory_mib} MiB, Node ${m.node}, Linux ${m.kernel}, spools on ${m.spool_filesystem}`);
  console.log("");
  console.log(`${"".padEnd(30)}${col("Postern", 10)}  ${col(pfName, w)}  ${col("Postern/Postfix", 15)}`);
  const row = (label, d, f, ratio) => console.log(`${label.padEnd(30)}${col(fx(pt.error ? null : f(pt), d), 10)}  ${col(fx(pf.error ? null : f(pf), d), w)}  ${col(fx(ratio, 2), 15)}`);
  row("flush msg/s (to last at sink)", 1, (s) => s.flush_per_s, q.flush);
  row("flush msg/s (to queue empty)", 1, (s) => s.flush_to_empty_per_s, q.flush_to_empty);
  row("last at sink after s", 2, (s) => s.flush_to_last_at_sink_seconds);
  row("queue empty after s", 2, (s) => s.flush_to_queue_empty_seconds);
  row("queueing: accepted msg/s", 1, (s) => s.queueing.accepted_per_s);
  if (pf.error) console.log(`\nPostfix: ${pf.error}`);' "$OUT"
print_cpu_latency "$OUT" message
echo "(CPU: during the flush, per message flushed; end of DATA to 250: while the messages were queued)"
echo ""
echo "written to $OUT"

if [ -n "$PF_ERROR" ] && [ "$POSTERN_ONLY" != yes ]; then
  bench_note "the Postfix half did not run: $PF_ERROR"
  exit 1
fi
