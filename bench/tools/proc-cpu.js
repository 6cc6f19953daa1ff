#!/usr/bin/env node
// bench/tools/proc-cpu.js: the CPU time (user + system, all threads) each process of a
// mail system spends while it runs, by program, for CPU milliseconds per message.
//
//   node bench/tools/proc-cpu.js --root PID [--also PID] [--interval MS] [--timeout SECONDS]
//
// Samples the process tree below PID (PID included: Postern's or Postfix's master),
// and the one below --also's PID if given (a helper the server needs, such as the
// Dovecot auth service Postfix's smtpd asks; its programs named "helper:NAME", and
// counted from samples only), every --interval ms (default 200) until SIGTERM or SIGINT (or --timeout, default
// 7200 s), then prints one JSON object:
//   by_program  ms of CPU per program name (/proc comm: Postern's "postern/smtpd" is
//               "smtpd", Postfix's daemons are named as themselves), each process
//               counted from its first sample (or from 0 when it started after this
//               tool) to its last, from the scheduler's run time of all its threads
//               (/proc/PID/task/*/schedstat, in ns: clock ticks would show a process
//               that lived a few ms as 0);
//   total_ms    the total, which also counts processes that started and exited
//               between two samples: the root's own CPU, that of the children it
//               reaped (cutime+cstime, in clock ticks, so to 10 ms per process), and
//               the live processes'; never less than the sum of by_program;
//   unattributed_ms  total_ms minus the sum of by_program: CPU of processes that
//               exited between two samples (Postfix's cleanup and smtpd exit after
//               max_use requests), which no sample saw;
//   processes   how many distinct processes were seen.
'use strict';
const fs = require('fs');
const { argsOrExit, CLK_TCK, procStat, procCpuNs, procTree } = require('../load-lib');

const opts = argsOrExit('proc-cpu', process.argv.slice(2), { interval: 200, timeout: 7200, also: undefined },
  { numeric: ['root', 'also', 'interval', 'timeout'], required: ['root'] });

// the start time (clock ticks since boot) of this tool: a process that started later
// spent all its CPU during the measurement
const self = procStat(process.pid);
const rootFirst = procStat(opts.root);
if (!rootFirst) {
  console.error(`proc-cpu: no process ${opts.root}`);
  process.exit(1);
}
const seen = new Map(); // pid -> {name, start, first, last (ns), existedBefore}
let rootLast = rootFirst;

const alsoPids = new Set(); // processes of the --also tree

/** The program's name: /proc comm is cut at 15 bytes ("postern/proxymap" is "postern/proxyma"), the title in cmdline is not. */
function programName(st) {
  if (st.comm.length < 15) return st.comm;
  try {
    const title = fs.readFileSync(`/proc/${st.pid}/cmdline`, 'latin1').split('\0')[0].split(' ')[0];
    if (title.startsWith(st.comm)) return title;
  } catch { /* gone meanwhile */ }
  return st.comm;
}

function sample() {
  const rootTree = procTree(opts.root);
  const all = [...rootTree.values()];
  if (opts.also) {
    for (const st of procTree(opts.also).values()) if (!rootTree.has(st.pid)) { alsoPids.add(st.pid); all.push(st); }
  }
  for (const st of all) {
    const ns = procCpuNs(st.pid);
    if (ns === null) continue;
    if (st.pid === opts.root) rootLast = st;
    const s = seen.get(st.pid);
    if (s && s.start === st.start) { s.last = ns; continue; }
    const newer = st.start > self.start;
    const name = (alsoPids.has(st.pid) ? 'helper:' : '') + programName(st).replace(/^postern\//, '');
    seen.set(st.pid, { name, start: st.start, first: newer ? 0 : ns, last: ns, existedBefore: !newer });
  }
}

function finish() {
  sample();
  const alive = procTree(opts.root);
  const byProgram = {};
  let attributed = 0;
  let total = ((rootLast.childTicks - rootFirst.childTicks) * 1000) / CLK_TCK; // reaped during the run
  for (const [pid, s] of seen) {
    const ms = (s.last - s.first) / 1e6;
    byProgram[s.name] = (byProgram[s.name] || 0) + ms;
    attributed += ms;
    if (alsoPids.has(pid)) { total += ms; continue; } // sampled only: no exact total for it
    if (pid === opts.root || alive.has(pid)) total += ms;
    else if (s.existedBefore) total -= s.first / 1e6; // what it spent before the run is in cutime too
  }
  total = Math.max(total, attributed);
  const out = {};
  for (const [k, v] of Object.entries(byProgram).sort((a, b) => b[1] - a[1])) if (v >= 0.5) out[k] = Math.round(v);
  console.log(JSON.stringify({ by_program: out, total_ms: Math.round(total), unattributed_ms: Math.round(total - attributed), processes: seen.size }));
  process.exit(0);
}

sample();
const timer = setInterval(sample, opts.interval);
setTimeout(() => { clearInterval(timer); finish(); }, opts.timeout * 1000).unref();
process.on('SIGTERM', finish);
process.on('SIGINT', finish);
