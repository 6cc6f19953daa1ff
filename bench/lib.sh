# Shared helpers for the benchmarks in bench/ (sourced, not run).
#
# A benchmark drives two servers with the same load on the same machine, one at a
# time: a sandbox Postern instance and a private Postfix instance run from the
# Debian postfix .deb unpacked by .ci/postfix-tools (never installed: the package
# would take over /usr/sbin/sendmail). Every wait here is bounded.

BENCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
POSTERN="$BENCH_ROOT/bin/postern"

bench_note() { echo "bench: $*" >&2; }
bench_die() { echo "bench: error: $*" >&2; exit 1; }

# The benchmarks build nothing: they measure what `make build` produced.
# Extra arguments: more built files the benchmark needs (paths below the repository).
bench_require_build() {
  local d f
  for d in cli master; do
    [ -f "$BENCH_ROOT/packages/$d/dist/main.js" ] ||
      bench_die "packages/$d/dist is missing: run \`make build\` first (the benchmark builds nothing itself)"
  done
  for f in "$@"; do
    [ -f "$BENCH_ROOT/$f" ] || bench_die "$f is missing: run \`make build\` first (the benchmark builds nothing itself)"
  done
  command -v node >/dev/null || bench_die "node is not on PATH"
}

# The options every benchmark takes; a script handles its own extra flags in
# bench_extra_arg FLAG NEXT-WORD (return 0 when it took the flag, and set
# BENCH_EXTRA_SHIFT=2 when it took NEXT-WORD as its value). Sets MESSAGES, SIZE,
# SESSIONS, WARMUP, TIMEOUT, POSTERN_ONLY, KEEP; usage() must exist.
bench_parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --postern-only) POSTERN_ONLY=yes ;;
      --keep) KEEP=yes ;;
      --messages) MESSAGES="$2"; shift ;;
      --size) SIZE="$2"; shift ;;
      --sessions) SESSIONS="$2"; shift ;;
      --warmup) WARMUP="$2"; shift ;;
      --timeout) TIMEOUT="$2"; shift ;;
      -h|--help) usage ;;
      *) BENCH_EXTRA_SHIFT=1   # bench_extra_arg sets 2 when it took the next word as the value
         if ! { declare -F bench_extra_arg >/dev/null && bench_extra_arg "$1" "${2-}"; }; then
           echo "bench: unknown argument $1" >&2; usage
         fi
         if [ "$BENCH_EXTRA_SHIFT" = 2 ]; then
           [ $# -ge 2 ] || bench_die "$1 needs a value"
           shift
         fi ;;
    esac
    shift
  done
  for v in MESSAGES SIZE SESSIONS TIMEOUT; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || bench_die "${v,,} must be a positive whole number, not \"${!v}\""
  done
  [[ "$WARMUP" =~ ^[0-9]+$ ]] || bench_die "warmup must be a whole number, not \"$WARMUP\""
}

now() { date +%s.%N; }
# rate COUNT SECONDS -> COUNT/SECONDS with one decimal
rate() { awk -v n="$1" -v t="$2" 'BEGIN { if (t > 0) printf "%.1f", n / t; else print "null" }'; }
# ratio A B -> A/B with two decimals, or null when either is missing
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && a != "null" && b != "" && b != "null" && b > 0) printf "%.2f", a / b; else print "null" }'; }
seconds_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}

# wait_for_port PORT SECONDS [ADDRESS]: until something accepts connections on
# ADDRESS:PORT (default 127.0.0.1).
wait_for_port() {
  local port="$1" deadline=$((SECONDS + $2)) addr="${3:-127.0.0.1}"
  while [ "$SECONDS" -lt "$deadline" ]; do
    if (exec 3<>"/dev/tcp/$addr/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

# bench_workdir: the benchmark's temporary directory WORK under $TMPDIR, with PT (the
# Postern instance) and PF (the Postfix instance) below it. On exit, Ctrl-C included,
# both servers and every helper server are stopped and WORK is removed (kept with --keep).
bench_workdir() {
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/postern-bench.XXXXXX")"
  # Postfix's virtual(8), smtpd (user postfix, to Dovecot's socket) and smtp-sink (nobody) work below it
  chmod 755 "$WORK"
  PT="$WORK/postern"
  PF="$WORK/postfix"
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
bench_cleanup() { # [STATUS]: the exit status to keep (default: that of the last command)
  local status=${1:-$?}
  trap - EXIT INT TERM
  postern_stop "$PT" || true
  postfix_stop "$PF" || true
  bench_stop_background
  if [ "${KEEP:-no}" = yes ]; then bench_note "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$status"
}

# error_json MESSAGE [VERSION]: a server's half of a report when it did not run.
error_json() {
  node -e 'console.log(JSON.stringify({ error: process.argv[1], version: process.argv[2] || null }))' "$1" "${2:-}"
}

# postern_version: the package version and the commit the benchmark measures.
postern_version() {
  echo "$(node -p 'require(process.argv[1]).version' "$BENCH_ROOT/package.json")+$(git -C "$BENCH_ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
}

# --- Maildir ---------------------------------------------------------------

maildir_count() { # DIR (a Maildir's new/): number of delivered messages, 0 before the first
  if [ -d "$1" ]; then find "$1" -maxdepth 1 -type f | wc -l; else echo 0; fi
}

# wait_for_maildir DIR COUNT SECONDS: until DIR holds at least COUNT messages.
wait_for_maildir() {
  local dir="$1" want="$2" deadline=$((SECONDS + $3))
  while [ "$SECONDS" -lt "$deadline" ]; do
    [ "$(maildir_count "$dir")" -ge "$want" ] && return 0
    sleep 0.2
  done
  return 1
}

# When the last message landed: the newest inode change time in DIR. Both
# servers write a message in tmp/ and then link it into new/ (and unlink the tmp/
# name), which sets the ctime, so this is the moment delivery completed, without
# depending on how often we poll.
last_delivery_time() {
  find "$1" -maxdepth 1 -type f -printf '%C@\n' | sort -n | tail -n 1
}

# --- Load --------------------------------------------------------------------

# Postfix's smtp-source and the extracted .deb tree it came from.
postfix_tools() {
  local helper="$BENCH_ROOT/.ci/postfix-tools" sbin
  [ -x "$helper" ] || bench_die "$helper is missing (it fetches Postfix's smtp-source/smtp-sink from the postfix .deb)"
  sbin="$(timeout 600 "$helper")" || bench_die ".ci/postfix-tools could not fetch and unpack the postfix package (see above)"
  PFX_TREE="$(cd "$sbin/../.." && pwd)"
  PFX_LIB="$PFX_TREE/usr/lib/postfix"
  SMTP_SOURCE="$sbin/smtp-source"
  SMTP_SINK="$sbin/smtp-sink"
  [ -x "$SMTP_SOURCE" ] || bench_die "$SMTP_SOURCE is missing after unpacking postfix"
  [ -x "$SMTP_SINK" ] || bench_die "$SMTP_SINK is missing after unpacking postfix"
}

# smtp_source LOG TIMEOUT ARGS...: run smtp-source with its libraries, bounded in time.
smtp_source() {
  local log="$1" limit="$2"; shift 2
  LD_LIBRARY_PATH="$PFX_LIB" timeout "$limit" "$SMTP_SOURCE" "$@" >"$log" 2>&1
}

# --- Postern -----------------------------------------------------------------

# postern_create DIR PORT HOSTNAME: a sandbox instance (services run as the invoking user),
# its MX listener on 127.0.0.1:PORT; the submission ports it chose are left in
# POSTERN_SUBMISSION_PORT (587's role) and POSTERN_SUBMISSIONS_PORT (465's).
postern_create() {
  local dir="$1" port="$2" host="$3" p2 p3
  p2="$(free_port)"; p3="$(free_port)"
  "$POSTERN" init "$dir" --unprivileged --hostname "$host" --domain "${host#*.}" \
    --smtp-port "$port" --submission-port "$p2" --submissions-port "$p3" >/dev/null || return 1
  POSTERN_SUBMISSION_PORT="$p2"; POSTERN_SUBMISSIONS_PORT="$p3"
}
postern_start() { # DIR
  timeout 60 "$POSTERN" -c "$1/etc" start >/dev/null || return 1
  POSTERN_STATUS_JSON="$("$POSTERN" -c "$1/etc" status --json 2>/dev/null || true)"
}

# The pid of the master postern_start last started (the root of cpu_start's sampling).
postern_master_pid() {
  node -e 'console.log(JSON.parse(process.argv[1]).master.pid)' "$POSTERN_STATUS_JSON"
}

postern_stop() { # DIR: graceful, then SIGKILL to the master and the services we saw start
  local dir="$1" pids
  [ -f "$dir/etc/main.cf" ] || return 0
  if timeout 60 "$POSTERN" -c "$dir/etc" stop >/dev/null 2>&1; then return 0; fi
  bench_note "postern did not stop gracefully; killing its processes"
  pids="$(node -e 'try { const s = JSON.parse(process.argv[1]); console.log([s.master && s.master.pid, ...s.services.map((x) => x.pid)].filter(Boolean).join(" ")); } catch {}' "${POSTERN_STATUS_JSON:-}")"
  [ -n "$pids" ] && kill -9 $pids 2>/dev/null
  return 0
}

# The Maildir new/ directory of a Postern user, from the user table.
postern_maildir_new() { # DIR ADDRESS
  "$POSTERN" -c "$1/etc" user list --json |
    node -e 'let s = ""; process.stdin.on("data", (d) => s += d).on("end", () => {
      const u = s.trim().split("\n").map((l) => JSON.parse(l)).find((x) => x.user === process.argv[1]);
      if (!u) process.exit(1);
      console.log(u.home + "/Maildir/new"); });' "$2"
}

# --- Postfix -----------------------------------------------------------------

# Postfix's master refuses to start without its mail_owner account and setgid group.
# Creating them is a benchmark-only side effect, documented in bench/README.md.
postfix_ensure_accounts() {
  getent group postfix >/dev/null || groupadd --system postfix || return 1
  getent passwd postfix >/dev/null ||
    useradd --system --gid postfix --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin postfix || return 1
  getent group postdrop >/dev/null || groupadd --system postdrop || return 1
}

# postfix_create DIR PORT HOSTNAME ADDRESS UID GID: a private Postfix instance rooted at
# DIR (config in DIR/etc, queue in DIR/spool), run from the extracted tree, listening on
# 127.0.0.1:PORT only, delivering ADDRESS's mail with virtual(8) to the Maildir
# DIR/mail/DOMAIN/LOCAL/Maildir/ as UID:GID. Extra main.cf lines: $POSTFIX_EXTRA_MAIN_CF;
# extra master.cf services (e.g. a submission listener): $POSTFIX_EXTRA_MASTER_CF.
postfix_create() {
  local dir="$1" port="$2" host="$3" addr="$4" uid="$5" gid="$6"
  local domain="${addr#*@}" local_part="${addr%@*}"
  mkdir -p "$dir/etc" "$dir/spool" "$dir/data" "$dir/mail"
  chown postfix "$dir/data"
  chown "$uid:$gid" "$dir/mail"
  echo "$addr $domain/$local_part/Maildir/" >"$dir/etc/vmailbox"
  cat >"$dir/etc/main.cf" <<EOF
# Written by bench/lib.sh: a private Postfix instance for the benchmark.
compatibility_level = 3.6
config_directory = $dir/etc
queue_directory = $dir/spool
data_directory = $dir/data
command_directory = $PFX_TREE/usr/sbin
daemon_directory = $PFX_LIB/sbin
shlib_directory = $PFX_LIB
meta_directory = $PFX_TREE/etc/postfix
mail_owner = postfix
setgid_group = postdrop
# The extracted binaries find their libraries only through LD_LIBRARY_PATH, and
# master passes a child only the environment named here.
import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C LD_LIBRARY_PATH
maillog_file = $dir/maillog
maillog_file_prefixes = $dir

myhostname = $host
mydomain = ${host#*.}
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
# The load generator on 127.0.0.1 is a stranger, as a remote MX client would be.
mynetworks = 192.0.2.0/24
alias_maps =
alias_database =
smtpd_tls_security_level = none

virtual_mailbox_domains = $domain
virtual_mailbox_base = $dir/mail
virtual_mailbox_maps = texthash:$dir/etc/vmailbox
virtual_uid_maps = static:$uid
virtual_gid_maps = static:$gid
${POSTFIX_EXTRA_MAIN_CF:-}
EOF
  # Upstream's master.cf services, none chrooted (the spool has no copy of /etc).
  cat >"$dir/etc/master.cf" <<EOF
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:$port inet n  -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
${POSTFIX_EXTRA_MASTER_CF:-}
EOF
}

# postfix_can_run: whether the Postfix half can run here (not --postern-only, root, its
# accounts); when not, PF_ERROR says why.
postfix_can_run() {
  PF_ERROR=""
  if [ "$POSTERN_ONLY" = yes ]; then
    PF_ERROR="not run (--postern-only)"
  elif [ "$(id -u)" != 0 ]; then
    PF_ERROR="not run: Postfix's master must be started as root (it drops to the postfix user itself); run as root, or pass --postern-only"
  elif ! postfix_ensure_accounts; then
    PF_ERROR="could not create the postfix user and the postfix/postdrop groups Postfix's master requires"
  fi
  [ -z "$PF_ERROR" ]
}

# postfix_up PORT ADDRESS: postfix_create in $PF (listening on 127.0.0.1:PORT, ADDRESS's
# Maildir written as nobody), PF_VERSION, and postfix_start; when it does not start,
# PF_ERROR says why.
postfix_up() {
  bench_note "Postfix: private instance in $PF"
  postfix_create "$PF" "$1" postfix.bench.test "$2" "$(id -u nobody)" "$(id -g nobody)"
  PF_VERSION="$(postfix_version "$PF")"
  postfix_start "$PF" "$1" || { PF_ERROR="$POSTFIX_START_ERROR"; return 1; }
}

# The postfix command with a clean environment (it would sanitise it anyway).
postfix_cmd() { # DIR ARGS...
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LD_LIBRARY_PATH="$PFX_LIB" \
    timeout 60 "$PFX_TREE/usr/sbin/postfix" -c "$1/etc" "${@:2}"
}

postfix_version() { # DIR
  env -i LD_LIBRARY_PATH="$PFX_LIB" "$PFX_TREE/usr/sbin/postconf" -c "$1/etc" -h mail_version 2>/dev/null
}

postfix_master_pid() { # DIR
  local f="$1/spool/pid/master.pid" pid
  [ -f "$f" ] || return 1
  pid="$(tr -d ' \n' <"$f")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# postfix_start DIR PORT: start, and wait (bounded) until the listener accepts.
# On failure POSTFIX_START_ERROR says why.
postfix_start() {
  local dir="$1" port="$2" out
  # The postfix command writes its errors to stderr only when that is a terminal
  # (otherwise to the log, which postlogd is not yet running to write), so give it
  # one with script(1) to be able to quote why it failed.
  if ! out="$(script -qec "$(printf '%q ' env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LD_LIBRARY_PATH="$PFX_LIB" \
      timeout 60 "$PFX_TREE/usr/sbin/postfix" -c "$dir/etc" start)" /dev/null 2>&1 </dev/null | tr -d '\r')"; then
    POSTFIX_START_ERROR="postfix start failed: $(printf '%s\n' "$out" | grep -v 'warning: not \(owned by group postdrop\|set-gid\)' | tail -n 5)"
    [ -f "$dir/maillog" ] && POSTFIX_START_ERROR+=" | maillog: $(grep -E 'fatal|error|panic' "$dir/maillog" | tail -n 3)"
    return 1
  fi
  if ! wait_for_port "$port" 30; then
    POSTFIX_START_ERROR="postfix started but nothing listens on 127.0.0.1:$port after 30 s | maillog: $(tail -n 5 "$dir/maillog" 2>/dev/null)"
    return 1
  fi
}

postfix_stop() { # DIR: postfix stop, then abort, then SIGKILL to the master, each bounded
  local dir="$1" pid i
  pid="$(postfix_master_pid "$dir")" || return 0
  postfix_cmd "$dir" stop >/dev/null 2>&1 || true
  for i in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  bench_note "postfix did not stop within 30 s; aborting"
  postfix_cmd "$dir" abort >/dev/null 2>&1 || true
  for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}

# --- Helper servers ----------------------------------------------------------
# smtp-sink, Dovecot's auth service and the loopback DNS server run in the
# background of the benchmark's shell, each under timeout(1) so that none can
# outlive a benchmark whose clean-up never ran. Their pids (timeout's, which
# passes a TERM on) are kept in BENCH_BG_PIDS for bench_stop_background.
BENCH_BG_LIMIT="${BENCH_BG_LIMIT:-7200}"
BENCH_BG_PIDS=""

bench_kill() { # PID: TERM, up to 10 s, then KILL (the pid is timeout's: TERM reaches its child)
  local pid="$1" i
  BENCH_BG_PIDS="$(echo " $BENCH_BG_PIDS " | sed "s/ $pid / /g")"   # never signal a reused pid later
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
}

bench_stop_background() { # every helper server still running
  local pid
  for pid in $BENCH_BG_PIDS; do bench_kill "$pid"; done
  BENCH_BG_PIDS=""
}

# Postfix's smtp-sink as the remote MX: it counts the messages it takes ("-c": its
# running counters, mesg=N, are what "has received them all" means) and dumps
# each one to a file under DIR/dump ("-d"), whose inode change time says when it
# arrived. sink_start DIR ADDRESS PORT; sets SINK_PID. As root smtp-sink must drop
# to another user (-u nobody).
sink_start() {
  local dir="$1" addr="$2" port="$3" user=()
  mkdir -p "$dir/dump"
  chmod 777 "$dir/dump"
  [ "$(id -u)" = 0 ] && user=(-u nobody)
  LD_LIBRARY_PATH="$PFX_LIB" timeout "$BENCH_BG_LIMIT" "$SMTP_SINK" "${user[@]}" -c -d "$dir/dump/%Y%m%d%H%M%S." \
    "$addr:$port" 256 >"$dir/sink.out" 2>&1 </dev/null &
  SINK_PID=$!
  BENCH_BG_PIDS+=" $SINK_PID"
  wait_for_port "$port" 15 "$addr" || { cat "$dir/sink.out" >&2; return 1; }
}
sink_messages() { # DIR: messages smtp-sink has taken so far
  local n
  n="$(tr '\r' '\n' <"$1/sink.out" 2>/dev/null | sed -n 's/.*mesg=\([0-9][0-9]*\).*/\1/p' | tail -n 1)"
  echo "${n:-0}"
}
sink_wait() { # DIR COUNT SECONDS: until smtp-sink has taken COUNT messages in all
  local deadline=$((SECONDS + $3))
  while [ "$SECONDS" -lt "$deadline" ]; do
    [ "$(sink_messages "$1")" -ge "$2" ] && return 0
    sleep 0.2
  done
  return 1
}
sink_dumps() { find "$1/dump" -type f | wc -l; }                      # DIR
sink_clear() { find "$1/dump" -type f -delete; }                       # DIR
sink_last_time() { last_delivery_time "$1/dump"; }                     # DIR: when the last one arrived
sink_any_dump() { find "$1/dump" -type f -print -quit; }               # DIR

# Dovecot's auth service alone (no IMAP, no POP3), as the SASL server Postfix's smtpd
# asks (smtpd_sasl_type = dovecot), checking passwords against USERS_FILE (Postern's
# passwd-file: the same users and passwords on both sides).
# dovecot_auth_start DIR USERS_FILE; sets DOVECOT_PID and DOVECOT_AUTH_SOCKET.
dovecot_auth_start() {
  local dir="$1" users="$2" i
  command -v dovecot >/dev/null || { echo "dovecot is not installed (Debian: apt-get install dovecot-core)" >&2; return 1; }
  mkdir -p "$dir"
  DOVECOT_AUTH_SOCKET="$dir/auth-client"
  cat >"$dir/dovecot.conf" <<EOF
# Written by bench/lib.sh: Dovecot's auth service only, for Postfix's smtpd.
protocols =
listen = 127.0.0.1
base_dir = $dir/run
state_dir = $dir/state
log_path = $dir/dovecot.log
ssl = no
auth_mechanisms = plain login
default_internal_user = dovecot
default_login_user = dovenull
passdb {
  driver = passwd-file
  args = scheme=SHA512-CRYPT $users
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}
# root reads the passwd-file, as Postern's own root-run sandbox does; smtpd (user
# postfix) connects to the socket.
service auth {
  user = root
  unix_listener $DOVECOT_AUTH_SOCKET {
    mode = 0666
  }
}
EOF
  timeout "$BENCH_BG_LIMIT" dovecot -F -c "$dir/dovecot.conf" >"$dir/dovecot.out" 2>&1 </dev/null &
  DOVECOT_PID=$!
  BENCH_BG_PIDS+=" $DOVECOT_PID"
  for i in $(seq 1 75); do
    [ -S "$DOVECOT_AUTH_SOCKET" ] && return 0
    kill -0 "$DOVECOT_PID" 2>/dev/null || break
    sleep 0.2
  done
  cat "$dir/dovecot.out" "$dir/dovecot.log" >&2 2>/dev/null
  return 1
}

# Dovecot's LMTP server alone (throughput.sh --lmtp): on 127.0.0.1:PORT, delivering any
# user@domain to the Maildir DIR/mail/DOMAIN/USER/Maildir/ (userdb static: Postern and
# Postfix have already checked the recipient), as nobody when run as root, else as us.
# dovecot_lmtp_start DIR PORT; sets DOVECOT_LMTP_PID and DOVECOT_LMTP_MAIL (DIR/mail).
dovecot_lmtp_start() {
  local dir="$1" port="$2" who
  command -v dovecot >/dev/null || { echo "dovecot is not installed (Debian: apt-get install dovecot-core dovecot-lmtpd)" >&2; return 1; }
  DOVECOT_LMTP_MAIL="$dir/mail"
  mkdir -p "$DOVECOT_LMTP_MAIL"
  if [ "$(id -u)" = 0 ]; then
    chown nobody:nogroup "$DOVECOT_LMTP_MAIL"
    who="default_internal_user = dovecot
default_login_user = dovenull
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=$DOVECOT_LMTP_MAIL/%d/%n allow_all_users=yes
}"
  else
    who="default_internal_user = $(id -un)
default_internal_group = $(id -gn)
default_login_user = $(id -un)
userdb {
  driver = static
  args = uid=$(id -u) gid=$(id -g) home=$DOVECOT_LMTP_MAIL/%d/%n allow_all_users=yes
}"
  fi
  cat >"$dir/dovecot.conf" <<EOF
# Written by bench/lib.sh: Dovecot's LMTP server only, the delivery target of both servers.
protocols = lmtp
listen = 127.0.0.1
base_dir = $dir/run
state_dir = $dir/state
log_path = $dir/dovecot.log
ssl = no
mail_location = maildir:~/Maildir
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $port
  }
}
# LMTP needs no password; Dovecot still wants a passdb configured
passdb {
  driver = static
  args = nopassword=y
}
$who
EOF
  timeout "$BENCH_BG_LIMIT" dovecot -F -c "$dir/dovecot.conf" >"$dir/dovecot.out" 2>&1 </dev/null &
  DOVECOT_LMTP_PID=$!
  BENCH_BG_PIDS+=" $DOVECOT_LMTP_PID"
  wait_for_port "$port" 15 && return 0
  cat "$dir/dovecot.out" "$dir/dovecot.log" >&2 2>/dev/null
  return 1
}

# The tests' DNS server (bench/dns-server.js) on ADDRESS, serving RECORDS (a JSON
# array of {name, type, value}). dns_start DIR ADDRESS RECORDS; sets DNS_PID, DNS_PORT.
dns_start() {
  local dir="$1" addr="$2" records="$3" i
  mkdir -p "$dir"
  timeout "$BENCH_BG_LIMIT" node "$BENCH_ROOT/bench/dns-server.js" "$addr" "$records" >"$dir/dns.out" 2>&1 </dev/null &
  DNS_PID=$!
  BENCH_BG_PIDS+=" $DNS_PID"
  for i in $(seq 1 75); do
    DNS_PORT="$(sed -n '1{/^[0-9][0-9]*$/p}' "$dir/dns.out" 2>/dev/null)"
    [ -n "$DNS_PORT" ] && return 0
    kill -0 "$DNS_PID" 2>/dev/null || break
    sleep 0.2
  done
  cat "$dir/dns.out" >&2
  return 1
}

# --- Machine, report ----------------------------------------------------------

# report_start NAME: DATE, MACHINE_JSON (of the spools under $WORK) and OUT, the report's
# path bench/out/NAME-TIMESTAMP.json.
report_start() {
  DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  MACHINE_JSON="$(machine_json "$WORK")"
  mkdir -p "$BENCH_ROOT/bench/out"
  OUT="$BENCH_ROOT/bench/out/$1-$(date -u +%Y%m%dT%H%M%SZ).json"
}

# machine_json DIR: what the figures depend on, as a JSON object (DIR: where the
# spools live; fsync cost depends on its filesystem).
machine_json() {
  BENCH_FS="$(stat -f -c %T "$1" 2>/dev/null || echo unknown)" node -e '
    const os = require("os"), fs = require("fs");
    const release = (fs.readFileSync("/etc/os-release", "utf8").match(/^PRETTY_NAME="?([^"\n]*)/m) || [])[1] || null;
    console.log(JSON.stringify({
      nproc: os.availableParallelism ? os.availableParallelism() : os.cpus().length,
      cpu: (os.cpus()[0] || {}).model || null,
      memory_mib: Math.round(os.totalmem() / 1048576),
      node: process.version,
      kernel: os.release(),
      os: release,
      spool_filesystem: process.env.BENCH_FS,
    }));'
}

# --- Rounds -----------------------------------------------------------------
# One run on a shared machine moves with the machine's load (bench/README.md): with
# --rounds N a benchmark measures both servers N times, alternating which goes first,
# and reports the round with the median end-to-end ratio, listing every round.

# rounds_order ROUND: which server goes first in ROUND (odd: Postern, even: Postfix),
# so that a drift in the machine's load over the run weighs on both.
rounds_order() { if (($1 % 2)); then echo postern-first; else echo postfix-first; fi; }

# rounds_add ROUND POSTERN-JSON POSTERN-CHECKS-JSON-or-null POSTFIX-JSON: one round's
# results, gathered in ROUNDS_JSON.
ROUNDS_JSON=""
rounds_add() {
  ROUNDS_JSON+="${ROUNDS_JSON:+,}{\"round\":$1,\"order\":\"$(rounds_order "$1")\",\"postern\":$2,\"postern_message_auth\":$3,\"postfix\":$4}"
}

# rounds_merge RATE-FIELD RATIO-NAME: the report's figures as a JSON object: the median
# round's postern, postern_message_auth, postfix and their ratios (RATIO-NAME: RATE-FIELD
# over Postfix's, end_to_end likewise), then median_round and rounds when there were
# several (without Postfix the median is by Postern's end-to-end rate).
rounds_merge() {
  node -e '
    const [rounds, field, name] = [JSON.parse(`[${process.argv[1]}]`), process.argv[2], process.argv[3]];
    const ratio = (a, b) => (typeof a === "number" && typeof b === "number" && b > 0 ? Math.round((a / b) * 100) / 100 : null);
    const both = (pt, pf) => pt && ({ [name]: ratio(pt[field], pf[field]), end_to_end: ratio(pt.end_to_end_per_s, pf.end_to_end_per_s) });
    const all = rounds.map((r) => ({ ...r, ratio_postern_to_postfix: both(r.postern, r.postfix),
      ratio_postern_message_auth_to_postfix: both(r.postern_message_auth, r.postfix) }));
    const key = (r) => r.ratio_postern_to_postfix.end_to_end ?? r.postern.end_to_end_per_s;
    const { round, order, ...median } = [...all].sort((a, b) => key(a) - key(b))[Math.floor((all.length - 1) / 2)];
    console.log(JSON.stringify({ ...median, ...(all.length > 1 ? { median_round: round, rounds: all } : {}) }));' \
    "$ROUNDS_JSON" "$1" "$2"
}

# print_rounds REPORT RATE-FIELD: one line per round, when the report has several.
print_rounds() {
  node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")), field = process.argv[2];
    if (!r.rounds) process.exit(0);
    const fx = (v, d) => (typeof v === "number" ? v.toFixed(d) : "-");
    const cpu = (s) => (s && s.cpu && !s.cpu.error ? s.cpu.total_ms_per_unit.toFixed(2) : "-");
    const pair = (q) => (q ? Object.values(q).map((v) => fx(v, 2)).join(" / ") : "-");
    console.log(`\n${r.rounds.length} rounds; the figures above and below come from round ${r.median_round}, the median by end-to-end ratio:`);
    for (const x of r.rounds) {
      console.log(`  round ${x.round} (${x.order}): Postern ${fx(x.postern[field], 1)} / ${fx(x.postern.end_to_end_per_s, 1)} msg/s, CPU ${cpu(x.postern)} ms/msg; ` +
        `Postfix ${fx(x.postfix[field], 1)} / ${fx(x.postfix.end_to_end_per_s, 1)}, CPU ${cpu(x.postfix)}; ratio ${pair(x.ratio_postern_to_postfix)}` +
        (x.postern_message_auth ? `; checks on ${pair(x.ratio_postern_message_auth_to_postfix)}` : ""));
    }' "$1" "$2"
}

# --- CPU per program, latency ------------------------------------------------

# cpu_start FILE ROOTPID [HELPERPID]: sample the CPU of every process below ROOTPID (a
# master), and below HELPERPID, with bench/tools/proc-cpu.js until cpu_stop; its JSON
# goes to FILE. Sets CPU_PID.
cpu_start() {
  local also=()
  [ -n "${3:-}" ] && also=(--also "$3")
  timeout "$BENCH_BG_LIMIT" node "$BENCH_ROOT/bench/tools/proc-cpu.js" --root "$2" "${also[@]}" >"$1" 2>&1 </dev/null &
  CPU_PID=$!
  BENCH_BG_PIDS+=" $CPU_PID"
  sleep 0.3   # its first sample is the baseline
}
cpu_stop() { bench_kill "$CPU_PID"; }   # the tool prints its totals on TERM

# cpu_json FILE COUNT: proc-cpu's totals divided by COUNT (messages, or sessions), as
# {per: COUNT, total_ms, by_program: {name: ms per unit}, total_ms_per_unit,
# unattributed_ms_per_unit}; {error} when the sampler failed.
cpu_json() {
  node -e '
    const fs = require("fs"), [file, n] = process.argv.slice(1);
    let r;
    try { r = JSON.parse(fs.readFileSync(file, "utf8").trim().split("\n").pop()); }
    catch (e) { console.log(JSON.stringify({ error: "CPU sampler: " + (fs.existsSync(file) ? fs.readFileSync(file, "utf8").slice(0, 200) : e.message) })); process.exit(0); }
    const per = (ms) => Math.round((ms / n) * 1000) / 1000;
    console.log(JSON.stringify({ per: +n, total_ms: r.total_ms, total_ms_per_unit: per(r.total_ms),
      unattributed_ms_per_unit: per(r.unattributed_ms),
      by_program: Object.fromEntries(Object.entries(r.by_program).map(([k, v]) => [k, per(v)])) }));' "$1" "$2"
}

# json_field FILE FIELD: FIELD of the JSON object on the last line of FILE (objects as JSON).
json_field() {
  node -e 'const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").pop());
    const v = r[process.argv[2]]; console.log(v !== null && typeof v === "object" ? JSON.stringify(v) : v);' "$1" "$2"
}

# print_cpu_latency REPORT UNIT [PATH=LABEL ...]: the lines every benchmark prints after
# its figures: CPU ms per UNIT (message, session, RCPT) of each program, and p50/p99 from
# the end of DATA to the 250 (or, for a run without messages, from RCPT to its reply).
# The runs are the report's {postern,postern_message_auth,postfix} unless PATH=LABEL
# pairs name others (PATH dotted into the report, e.g. throughput.pgsql=Postern, pgsql).
print_cpu_latency() {
  node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")), unit = process.argv[2];
    const named = process.argv.slice(3).map((a) => [a.slice(a.indexOf("=") + 1), a.slice(0, a.indexOf("=")).split(".").reduce((o, k) => o && o[k], r)]);
    const sides = (named.length ? named : [["Postern", r.postern], ["Postern, checks on", r.postern_message_auth], ["Postfix", r.postfix]])
      .filter(([, s]) => s && !s.error);
    const lat = (l, what) => `p50 ${l.p50_ms.toFixed(2)} ms, p99 ${l.p99_ms.toFixed(2)} ms (${l.count} ${what})`;
    const width = Math.max(40, ...sides.map(([name]) => name.length + 20));
    console.log("");
    for (const [name, s] of sides) {
      if (s.rcpt_latency && !s.data_to_250) console.log(`${(name + " RCPT to 250").padEnd(width)}${lat(s.rcpt_latency, "RCPTs")}`);
      else console.log(`${(name + " end of DATA to 250").padEnd(width)}${s.data_to_250 ? lat(s.data_to_250, "messages") : "-"}`);
    }
    for (const [name, s] of sides) {
      const c = s.cpu;
      if (!c || c.error) { console.log(`${name} CPU: ${c ? c.error : "not measured"}`); continue; }
      const parts = Object.entries(c.by_program).filter(([, v]) => v >= 0.005).map(([k, v]) => `${k} ${v.toFixed(2)}`);
      if (c.unattributed_ms_per_unit >= 0.005) parts.push(`exited between samples ${c.unattributed_ms_per_unit.toFixed(2)}`);
      console.log(`${(name + " CPU ms/" + unit).padEnd(width)}total ${c.total_ms_per_unit.toFixed(2)}: ${parts.join(", ")}`);
    }' "$@"
}

# raise_fd_limit N: at least N open files for this shell and what it starts.
raise_fd_limit() {
  [ "$(ulimit -n)" -ge "$1" ] && return 0
  ulimit -n "$1" 2>/dev/null && return 0
  ulimit -Hn "$1" 2>/dev/null && ulimit -n "$1" 2>/dev/null   # root may raise the hard limit
}

# Messages still queued (incoming, active, deferred) in the spool SPOOL.
queue_count() { # SPOOL [QUEUE...]
  local spool="$1" q n=0; shift
  for q in "${@:-incoming active deferred}"; do
    for q in $q; do
      [ -d "$spool/$q" ] && n=$((n + $(find "$spool/$q" -type f ! -name '.*' | wc -l)))
    done
  done
  echo "$n"
}

# wait_for_queue SPOOL QUEUE COUNT SECONDS: until QUEUE holds COUNT messages and the
# others (incoming, active, deferred) none beyond.
wait_for_queue() {
  local spool="$1" q="$2" want="$3" deadline=$((SECONDS + $4))
  while [ "$SECONDS" -lt "$deadline" ]; do
    [ "$(queue_count "$spool" "$q")" -ge "$want" ] && [ "$(queue_count "$spool")" -eq "$want" ] && return 0
    sleep 0.5
  done
  return 1
}
