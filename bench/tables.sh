#!/bin/bash
# bench/tables.sh: what users in a database cost (issue 12). RCPT checks per second and
# the p99 RCPT latency with the users in passwd-file:, sqlite: and pgsql: (both read
# through proxymap), then bench/throughput.sh's inbound MX throughput with pgsql: users
# against passwd-file, in the same run, on the same machine. PostgreSQL is a throwaway
# cluster (initdb under the temporary directory, 127.0.0.1 only), stopped on exit.
#
#   bench/tables.sh [--keep] [--rcpts N] [--users N] [--cache-ttl S] [--messages N] [--size BYTES]
#                   [--sessions N] [--warmup N] [--timeout SECONDS]
#
# Needs `make build` first, PostgreSQL 15's server and psql, and sqlite3; see bench/README.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

PG_BIN=/usr/lib/postgresql/15/bin
DB_PASS=bench-db-pw

# users_cf KIND DIR: DIR/etc/users.cf for KIND (pgsql or sqlite), named by virtual_mailbox_maps
users_cf() {
  local kind="$1" dir="$2" cf="$2/etc/users.cf"
  if [ "$kind" = pgsql ]; then
    printf 'hosts = inet:127.0.0.1:%s\nuser = postern\npassword = %s\ndbname = mail\n' "$BENCH_PG_PORT" "$DB_PASS" >"$cf"
  else
    printf 'dbpath = %s\n' "$BENCH_SQLITE_DB" >"$cf"
  fi
  echo "query = SELECT mail FROM users WHERE email = '%s'" >>"$cf"
  chmod 600 "$cf"
  "$POSTERN" -c "$dir/etc" config set "virtual_mailbox_maps=$kind:$cf" >/dev/null
}

# Run by bench/throughput.sh (BENCH_POSTERN_USERS) instead of its passwd-file `user add`.
if [ "${1:-}" = --pgsql-user ]; then
  users_cf pgsql "$2"
  exec "$POSTERN" -c "$2/etc" user add "$3" --password-stdin <<<"bench-password" >/dev/null
fi

MESSAGES="${BENCH_MESSAGES:-2000}"
SIZE="${BENCH_SIZE:-4096}"
SESSIONS="${BENCH_SESSIONS:-20}"
WARMUP="${BENCH_WARMUP:-200}"
TIMEOUT="${BENCH_TIMEOUT:-600}"
RCPTS="${BENCH_RCPTS:-20000}"
USERS="${BENCH_USERS:-1000}"
CACHE_TTL="${BENCH_CACHE_TTL:-10s}"
POSTERN_ONLY=yes   # Postfix has no part here: both sides are Postern
KEEP=no

usage() { sed -n '8,9p' "$0" | sed 's/^# \{0,3\}//' >&2; exit 2; }
bench_extra_arg() {
  BENCH_EXTRA_SHIFT=2
  case "$1" in
    --rcpts) RCPTS="$2" ;;
    --users) USERS="$2" ;;
    --cache-ttl) CACHE_TTL="$2" ;;
    *) return 1 ;;
  esac
}
bench_parse_args "$@"
for v in RCPTS USERS; do [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || bench_die "${v,,} must be a positive whole number, not \"${!v}\""; done
[[ "$CACHE_TTL" =~ ^[0-9]+[smh]?$ ]] || bench_die "cache-ttl must be a time (10s, 0), not \"$CACHE_TTL\""

bench_require_build bench/rcpt-load.js
[ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pg_ctl" ] || bench_die "$PG_BIN/initdb missing: install the Debian package \"postgresql\""
command -v psql >/dev/null || bench_die "psql missing: install the Debian package \"postgresql-client\""
command -v sqlite3 >/dev/null || bench_die "sqlite3 missing: install the Debian package \"sqlite3\""

bench_workdir
PG="$WORK/pg"
# PostgreSQL refuses to run as root: the cluster belongs to nobody then
AS_PG=()
[ "$(id -u)" = 0 ] && AS_PG=(setpriv --reuid=65534 --regid=65534 --clear-groups)
pg_ctl() { (cd / && "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PG/data" -w -t 60 "$@"); }
pg_down() { [ -f "$PG/data/postmaster.pid" ] && pg_ctl -m fast stop >/dev/null 2>&1; return 0; }
# (not `(exit $st)` to pass the status on: under set -e that ends the trap before bench_cleanup)
trap 'st=$?; pg_down; bench_cleanup "$st"' EXIT
psql_as() { # USER PASSWORD DB ARGS...
  PGPASSWORD="$2" psql -h 127.0.0.1 -p "$BENCH_PG_PORT" -U "$1" -d "$3" -v ON_ERROR_STOP=1 -qAt "${@:4}"
}

bench_note "PostgreSQL: throwaway cluster in $PG"
mkdir -p "$PG/data"
chmod 700 "$PG/data"
echo admin-pw >"$PG/pw"
[ "$(id -u)" = 0 ] && chown -R 65534:65534 "$PG"
(cd / && "${AS_PG[@]}" "$PG_BIN/initdb" -D "$PG/data" -U postgres --auth=scram-sha-256 --pwfile="$PG/pw" --no-sync) >"$WORK/initdb.log" 2>&1 ||
  bench_die "initdb failed: $(tail -n 3 "$WORK/initdb.log")"
BENCH_PG_PORT="$(free_port)"
pg_ctl -l "$PG/log" -o "-c listen_addresses=127.0.0.1 -p $BENCH_PG_PORT -c unix_socket_directories=$PG" start >/dev/null ||
  bench_die "PostgreSQL did not start: $(tail -n 3 "$PG/log")"
psql_as postgres admin-pw postgres -c "CREATE ROLE postern LOGIN PASSWORD '$DB_PASS'" -c 'CREATE DATABASE mail OWNER postern'
psql_as postern "$DB_PASS" mail -f "$BENCH_ROOT/docs/sql/pgsql.sql"
BENCH_SQLITE_DB="$WORK/mail.sqlite"
sqlite3 "$BENCH_SQLITE_DB" <"$BENCH_ROOT/docs/sql/sqlite.sql" >/dev/null
export BENCH_PG_PORT BENCH_SQLITE_DB

# The copies of rcpt1@example.test as rcpt2..rcptN, in SQL (same hash, uid, gid, mail; own home).
COPY_USERS="SELECT 'rcpt' || i || '@example.test', password, uid, gid, replace(home, '/rcpt1', '/rcpt' || i), mail FROM users"

# users_for KIND DIR: USERS users rcpt1..rcptN@example.test in KIND (one by postern user add, the rest copied)
users_for() {
  local kind="$1" dir="$2"
  [ "$kind" = passwd-file ] || users_cf "$kind" "$dir"
  "$POSTERN" -c "$dir/etc" user add rcpt1@example.test --password-stdin <<<"bench-password" >/dev/null || return 1
  [ "$USERS" -gt 1 ] || return 0
  case "$kind" in
    passwd-file)
      local f="$dir/etc/users" line
      line="$(grep '^rcpt1@example\.test:' "$f")"
      awk -v n="$USERS" -v l="$line" 'BEGIN { for (i = 2; i <= n; i++) { s = l; gsub(/rcpt1@/, "rcpt" i "@", s); gsub(/\/rcpt1:/, "/rcpt" i ":", s); print s } }' >>"$f" ;;
    pgsql) psql_as postern "$DB_PASS" mail -c "INSERT INTO users (email, password, uid, gid, home, mail) $COPY_USERS, generate_series(2, $USERS) AS i WHERE email = 'rcpt1@example.test'" ;;
    sqlite) sqlite3 "$BENCH_SQLITE_DB" "WITH RECURSIVE s(i) AS (SELECT 2 UNION ALL SELECT i + 1 FROM s WHERE i < $USERS)
      INSERT INTO users (email, password, uid, gid, home, mail) $COPY_USERS, s WHERE email = 'rcpt1@example.test'" ;;
  esac
}

# rcpt_run KIND: a Postern instance with the users in KIND, a warm-up and the timed RCPT load;
# its JSON line (rcpt-load.js's report, with kind and rcpt_per_s) on stdout.
rcpt_run() {
  local kind="$1" port log
  PT="$WORK/rcpt-$kind"   # bench_cleanup stops the instance PT names
  port="$(free_port)"
  postern_create "$PT" "$port" postern.bench.test || bench_die "$kind: postern init failed"
  users_for "$kind" "$PT" || bench_die "$kind: could not create $USERS users"
  # the client is a stranger (as throughput.sh); no reverse-DNS check: there is no DNS here
  "$POSTERN" -c "$PT/etc" config set "mynetworks=192.0.2.0/24" "smtpd_client_restrictions=" "proxymap_cache_ttl=$CACHE_TTL" >/dev/null
  postern_start "$PT" || bench_die "$kind: postern start failed; log: $(tail -n 5 "$PT/postern.log" 2>/dev/null)"
  log="$WORK/rcpt-$kind"
  bench_note "$kind: $WARMUP warm-up + $RCPTS RCPTs over $SESSIONS sessions, $USERS users"
  if [ "$WARMUP" -gt 0 ]; then
    timeout $((TIMEOUT + 60)) node "$BENCH_ROOT/bench/rcpt-load.js" --port "$port" --from sender@remote.test --users "$USERS" \
      --rcpts "$WARMUP" --sessions "$SESSIONS" --timeout "$TIMEOUT" >"$log-warmup.json" 2>&1 ||
      bench_die "$kind: warm-up failed: $(tail -c 400 "$log-warmup.json")"
  fi
  cpu_start "$log.cpu" "$(postern_master_pid)"
  timeout $((TIMEOUT + 60)) node "$BENCH_ROOT/bench/rcpt-load.js" --port "$port" --from sender@remote.test --users "$USERS" \
    --rcpts "$RCPTS" --sessions "$SESSIONS" --timeout "$TIMEOUT" >"$log.json" 2>"$log.err" ||
    bench_die "$kind: the RCPT load failed: $(tail -c 400 "$log.json") $(tail -n 3 "$log.err")"
  cpu_stop
  postern_stop "$PT"
  node -e 'const r = JSON.parse(process.argv[2]);
    console.log(JSON.stringify({ kind: process.argv[1], rcpt_per_s: Math.round((r.sent / r.seconds) * 10) / 10, ...r, cpu: JSON.parse(process.argv[3]) }));' \
    "$kind" "$(tail -n 1 "$log.json")" "$(cpu_json "$log.cpu" "$RCPTS")"
}

# not in a $(...) subshell: bench_cleanup must see PT to stop an instance left running
for kind in passwd-file sqlite pgsql; do rcpt_run "$kind" >>"$WORK/rcpt.jsonl"; done
RCPT_JSON="$(cat "$WORK/rcpt.jsonl")"
PT=""

# throughput_run USERS-HOOK: bench/throughput.sh --postern-only with the same load, its report's path on stdout
throughput_run() {
  local out
  out="$(BENCH_POSTERN_USERS="$1" "$BENCH_ROOT/bench/throughput.sh" --postern-only --messages "$MESSAGES" --size "$SIZE" \
    --sessions "$SESSIONS" --warmup "$WARMUP" --timeout "$TIMEOUT")" || bench_die "bench/throughput.sh failed${1:+ with $1}"
  sed -n 's/^written to //p' <<<"$out"
}
bench_note "throughput with passwd-file users (bench/throughput.sh)"
TP_FILE="$(throughput_run "")"
bench_note "throughput with pgsql: users (bench/throughput.sh)"
TP_PGSQL="$(throughput_run "$BENCH_ROOT/bench/tables.sh --pgsql-user")"

report_start tables
node -e '
  const fs = require("fs");
  const [date, machine, rcpts, users, ttl, sessions, rcptLines, tpFile, tpPg] = process.argv.slice(1);
  const tp = (f) => JSON.parse(fs.readFileSync(f, "utf8"));
  const a = tp(tpFile), b = tp(tpPg);
  const ratio = (x, y) => (x && y ? Math.round((x / y) * 100) / 100 : null);
  const report = {
    benchmark: "tables", date, machine: JSON.parse(machine),
    rcpt: { load: { tool: "bench/rcpt-load.js", rcpts: +rcpts, users: +users, sessions: +sessions, proxymap_cache_ttl: ttl },
            by_table: Object.fromEntries(rcptLines.trim().split("\n").map((l) => JSON.parse(l)).map((r) => [r.kind, r])) },
    throughput: { load: a.load, "passwd-file": a.postern, pgsql: b.postern,
                  ratio_pgsql_to_passwd_file: { accepted: ratio(b.postern.accepted_per_s, a.postern.accepted_per_s),
                                                end_to_end: ratio(b.postern.end_to_end_per_s, a.postern.end_to_end_per_s) } },
  };
  fs.writeFileSync(process.argv[10], JSON.stringify(report, null, 2) + "\n");
  const m = report.machine;
  console.log(`Postern tables benchmark, ${date}`);
  console.log(`machine  ${m.nproc} CPUs (${m.cpu}), ${m.memory_mib} MiB, Node ${m.node}, Linux ${m.kernel}, spools on ${m.spool_filesystem}`);
  console.log(`RCPT     ${rcpts} RCPTs to ${users} users over ${sessions} sessions, proxymap_cache_ttl ${ttl}`);
  console.log("");
  console.log(`${"users in".padEnd(14)}${"RCPT/s".padStart(10)}${"p50 ms".padStart(10)}${"p99 ms".padStart(10)}`);
  for (const [k, r] of Object.entries(report.rcpt.by_table)) {
    const l = r.rcpt_latency || {};
    console.log(`${k.padEnd(14)}${String(r.rcpt_per_s).padStart(10)}${String(l.p50_ms ?? "-").padStart(10)}${String(l.p99_ms ?? "-").padStart(10)}`);
  }
  const t = report.throughput, q = t.ratio_pgsql_to_passwd_file;
  console.log("");
  console.log(`throughput  ${t.load.messages} messages, ${t.load.body_bytes}-byte bodies, ${t.load.sessions} sessions (bench/throughput.sh)`);
  console.log(`${"".padEnd(20)}${"passwd-file".padStart(12)}${"pgsql".padStart(10)}${"pgsql/file".padStart(12)}`);
  console.log(`${"accepted msg/s".padEnd(20)}${String(t["passwd-file"].accepted_per_s).padStart(12)}${String(t.pgsql.accepted_per_s).padStart(10)}${String(q.accepted).padStart(12)}`);
  console.log(`${"end-to-end msg/s".padEnd(20)}${String(t["passwd-file"].end_to_end_per_s).padStart(12)}${String(t.pgsql.end_to_end_per_s).padStart(10)}${String(q.end_to_end).padStart(12)}`);' \
  "$DATE" "$MACHINE_JSON" "$RCPTS" "$USERS" "$CACHE_TTL" "$SESSIONS" "$RCPT_JSON" "$TP_FILE" "$TP_PGSQL" "$OUT"
print_cpu_latency "$OUT" RCPT "rcpt.by_table.passwd-file=RCPTs, passwd-file" "rcpt.by_table.sqlite=RCPTs, sqlite" \
  "rcpt.by_table.pgsql=RCPTs, pgsql"
print_cpu_latency "$OUT" message "throughput.passwd-file=Throughput, passwd-file" "throughput.pgsql=Throughput, pgsql"
echo ""
echo "written to $OUT"
