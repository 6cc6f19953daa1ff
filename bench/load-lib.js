// bench/load-lib.js: what the benchmarks' Node load generators share (submit-load.js,
// mx-load.js, hold-load.js) and the /proc readings of bench/tools/proc-cpu.js: argument
// parsing, the message body, latency percentiles, a minimal SMTP reply reader, and the
// CPU time and memory of a process tree.
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const net = require('node:net');

/**
 * parseArgs(argv, defaults, {numeric, required}): "--name value" pairs into an object.
 * Only names present in defaults or required are taken; numeric ones must be positive
 * whole numbers. Throws an Error whose message says what is wrong.
 */
function parseArgs(argv, defaults, { numeric = [], required = [] } = {}) {
  const o = { ...defaults };
  const known = new Set([...Object.keys(defaults), ...required]);
  const nums = new Set(numeric);
  for (let i = 0; i < argv.length; i += 2) {
    const name = (argv[i] || '').replace(/^--/, '');
    const value = argv[i + 1];
    if (!known.has(name) || value === undefined) {
      throw new Error(`bad argument ${argv[i]}${value === undefined ? ' (no value)' : ''}`);
    }
    if (nums.has(name) && !/^[1-9][0-9]*$/.test(value)) throw new Error(`--${name} must be a positive whole number, not "${value}"`);
    o[name] = nums.has(name) ? parseInt(value, 10) : value;
  }
  for (const k of required) if (o[k] === undefined) throw new Error(`--${k} is required`);
  return o;
}

/** Parse the arguments or exit 2 with "PROGRAM: message" (a usage error). */
function argsOrExit(program, argv, defaults, rules) {
  try {
    return parseArgs(argv, defaults, rules);
  } catch (e) {
    console.error(`${program}: ${e.message}`);
    process.exit(2);
  }
}

/** SIZE bytes of 78-character lines (CRLF included), as smtp-source -l makes. */
function makeBody(size) {
  const line = 'X'.repeat(76) + '\r\n';
  let body = line.repeat(Math.floor(size / line.length));
  const rest = size - body.length;
  if (rest > 0) body += rest > 2 ? 'X'.repeat(rest - 2) + '\r\n' : '\r\n'.slice(0, rest);
  return body;
}

/** RFC 5322 date of now, as the generators put in Date:. */
function rfcDate() {
  return new Date().toUTCString().replace(/GMT$/, '+0000');
}

/**
 * One message as the MX generators send it after DATA: five header fields (complete, so
 * that no server adds any), the body, and the final dot. TAG names the generator.
 */
function mxMessage(tag, n, from, to, body) {
  return [
    `From: <${from}>`,
    `To: <${to}>`,
    `Subject: ${tag} benchmark message ${n}`,
    `Date: ${rfcDate()}`,
    `Message-ID: <${tag}.${process.pid}.${n}@${os.hostname()}>`,
  ].join('\r\n') + '\r\n\r\n' + body + '.\r\n';
}

/**
 * sendOne(wire, socket, from, to, data): MAIL, RCPT, DATA, the message, on a session
 * past EHLO; resolves with the ms from writing the final dot to the 250, rejects with
 * an Error (its .reply the refusal, if the server refused).
 */
function expectReply(reply, code, what) {
  if (reply.code !== code) throw Object.assign(new Error(`${what}: ${reply.text}`), { reply });
}
async function sendOne(wire, socket, from, to, data) {
  const expect = expectReply;
  expect(await wire.command(`MAIL FROM:<${from}>`), 250, 'MAIL');
  expect(await wire.command(`RCPT TO:<${to}>`), 250, 'RCPT');
  expect(await wire.command('DATA'), 354, 'DATA');
  socket.write(data);
  const t = nowMs();
  expect(await wire.next(), 250, 'end of DATA');
  return nowMs() - t;
}

/** The greeting (220) and EHLO (250); rejects as sendOne does. Resolves with the greeting's arrival (nowMs). */
async function greetAndEhlo(wire, helo) {
  expectReply(await wire.next(), 220, 'greeting');
  const t = nowMs();
  expectReply(await wire.command(`EHLO ${helo}`), 250, 'EHLO');
  return t;
}

/**
 * Latency summary of an array of milliseconds: count, p50, p90, p99, max, mean (ms,
 * three decimals), nearest-rank percentiles. null for an empty array.
 */
function latencySummary(ms) {
  if (!ms.length) return null;
  const s = Float64Array.from(ms).sort();
  const rank = (p) => s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
  const r3 = (x) => Math.round(x * 1000) / 1000;
  let sum = 0;
  for (const x of s) sum += x;
  return { count: s.length, p50_ms: r3(rank(50)), p90_ms: r3(rank(90)), p99_ms: r3(rank(99)), max_ms: r3(s[s.length - 1]), mean_ms: r3(sum / s.length) };
}

/** Milliseconds since an arbitrary origin, sub-millisecond (process.hrtime). */
function nowMs() {
  return Number(process.hrtime.bigint()) / 1e6;
}

/** The CPU this process used so far, in milliseconds (user + system). */
function ownCpuMs() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/**
 * A minimal SMTP client wire on a connected socket: next() resolves with the next
 * complete reply {code, text} (multi-line replies joined), or rejects when the
 * connection closes or fails first. Replies that arrive before anyone asks are kept.
 */
class SmtpWire {
  constructor(socket) {
    this.socket = socket;
    this.buffer = '';
    this.lines = [];
    this.replies = [];
    this.waiters = [];
    this.closed = null;
    socket.setEncoding('latin1');
    socket.on('data', (d) => this.onData(d));
    socket.on('error', (e) => this.fail(e));
    socket.on('close', () => this.fail(new Error('connection closed')));
  }

  onData(d) {
    this.buffer += d;
    let i;
    while ((i = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, i).replace(/\r$/, '');
      this.buffer = this.buffer.slice(i + 1);
      this.lines.push(line);
      // "250-..." continues a reply, "250 ..." or a bare "250" ends it
      if (!/^\d{3}-/.test(line)) {
        const reply = { code: parseInt(line.slice(0, 3), 10) || 0, text: this.lines.join(' ') };
        this.lines = [];
        const w = this.waiters.shift();
        if (w) w.resolve(reply); else this.replies.push(reply);
      }
    }
  }

  fail(e) {
    if (!this.closed) this.closed = e;
    for (const w of this.waiters.splice(0)) w.reject(this.closed);
  }

  next() {
    if (this.replies.length) return Promise.resolve(this.replies.shift());
    if (this.closed) return Promise.reject(this.closed);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** Write LINE (CRLF added) and wait for the reply. */
  command(line) {
    this.socket.write(line + '\r\n');
    return this.next();
  }
}

// --- a message load run ----------------------------------------------------------

/** The running count of a message load (mx-load.js, submit-load.js). */
function newRun(opts) {
  return {
    remaining: opts.messages, sent: 0, failed: 0, timedOut: false, start: Date.now(),
    firstConnect: null, lastAccepted: null, errors: [], latencies: [], open: new Set(),
    noteError(where, e) {
      if (this.errors.length < 5) this.errors.push(`${where}: ${String((e && (e.response || e.message)) || e).replace(/\s+/g, ' ')}`);
    },
  };
}

/**
 * withSession(opts, run, id, body): one session of a load run, if any work is left:
 * connect to opts.host:opts.port, greeting and EHLO (opts.helo), body(wire, socket),
 * QUIT. The connection is in run.open while it lasts; a failure is noted in run.errors.
 */
async function withSession(opts, run, id, body) {
  if (run.remaining <= 0 || run.timedOut) return;
  if (run.firstConnect === null) run.firstConnect = Date.now();
  const socket = net.connect({ host: opts.host, port: opts.port });
  run.open.add(socket);
  const wire = new SmtpWire(socket);
  try {
    await greetAndEhlo(wire, opts.helo);
    await body(wire, socket);
    await wire.command('QUIT').catch(() => undefined);
  } catch (e) {
    run.noteError(`session ${id}`, e);
  } finally {
    socket.destroy();
    run.open.delete(socket);
  }
}

/**
 * runLoad(opts, run, session, close, extra): opts.sessions parallel session(id) calls,
 * bounded by opts.timeout (then close(connection) for every one in run.open, and the
 * report 5 s later should they not wind up); then one JSON line: the counts, first
 * connect to last 250, the first errors, the client's CPU, data_to_250, and extra()'s
 * fields. Exit 0 when all opts.messages were accepted.
 */
function runLoad(opts, run, session, close, extra = () => ({})) {
  let reported = false;
  const report = () => {
    if (reported) return;
    reported = true;
    clearTimeout(timer);
    const t0 = run.firstConnect ?? run.start;
    const t1 = run.lastAccepted ?? Date.now();
    console.log(JSON.stringify({
      requested: opts.messages, sent: run.sent, failed: run.failed, sessions: opts.sessions, body_bytes: opts.size,
      start_ms: t0, end_ms: t1, seconds: (t1 - t0) / 1000, timed_out: run.timedOut, ...extra(), errors: run.errors,
      data_to_250: latencySummary(run.latencies), client_cpu_ms: Math.round(ownCpuMs()),
    }));
    process.exit(run.sent === opts.messages ? 0 : 1);
  };
  const timer = setTimeout(() => {
    run.timedOut = true;
    run.noteError('run', `time limit of ${opts.timeout} s reached`);
    for (const c of run.open) close(c);
    setTimeout(report, 5000);
  }, opts.timeout * 1000);
  // exit non-zero whatever way the process ends, unless report() says all went well
  process.exitCode = 1;
  Promise.all(Array.from({ length: opts.sessions }, (_, i) => session(i + 1))).then(report);
}

// --- /proc -------------------------------------------------------------------------

const CLK_TCK = 100; // USER_HZ: 100 on every Linux the project runs on (getconf CLK_TCK)

/** /proc/PID/stat of a process: {pid, comm, ppid, cpuTicks (utime+stime), childTicks (cutime+cstime), start}, or null. */
function procStat(pid) {
  let s;
  try {
    s = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return null;
  }
  // comm is in parentheses and may hold spaces or parentheses: split after the last ')'
  const close = s.lastIndexOf(')');
  const comm = s.slice(s.indexOf('(') + 1, close);
  const f = s.slice(close + 2).split(' '); // f[0] is field 3 (state)
  return { pid: +pid, comm, ppid: +f[1], cpuTicks: +f[11] + +f[12], childTicks: +f[13] + +f[14], start: +f[19] };
}

/**
 * CPU time of PID in nanoseconds: the sum over its threads of the scheduler's run time
 * (/proc/PID/task/TID/schedstat), exact where utime+stime count whole clock ticks (a
 * short-lived process of a few ms shows 0 ticks). null when it is gone.
 */
function procCpuNs(pid) {
  let total = 0;
  let tasks;
  try {
    tasks = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return null;
  }
  for (const tid of tasks) {
    try {
      total += Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'latin1').split(' ')[0]);
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return total;
}

/** Every process below ROOT (ROOT itself included), as procStat objects keyed by pid. */
function procTree(root) {
  const all = new Map();
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const st = procStat(name);
    if (st) all.set(st.pid, st);
  }
  const tree = new Map();
  const rootStat = all.get(+root);
  if (!rootStat) return tree;
  tree.set(rootStat.pid, rootStat);
  let grew = true;
  while (grew) {
    grew = false;
    for (const st of all.values()) {
      if (!tree.has(st.pid) && tree.has(st.ppid)) { tree.set(st.pid, st); grew = true; }
    }
  }
  return tree;
}

/** Resident (RSS) and proportional (PSS: shared pages split between sharers) KiB of PID, or null. */
function procMemoryKiB(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'latin1');
    const field = (n) => +((new RegExp(`^${n}:\\s+(\\d+) kB`, 'm').exec(s) || [])[1] || 0);
    return { rss: field('Rss'), pss: field('Pss') };
  } catch {
    return null;
  }
}

/** Total memory of the tree below ROOT: {processes, rss_mib, pss_mib}. */
function treeMemory(root) {
  let rss = 0;
  let pss = 0;
  let n = 0;
  for (const pid of procTree(root).keys()) {
    const m = procMemoryKiB(pid);
    if (m) { rss += m.rss; pss += m.pss; n++; }
  }
  return { processes: n, rss_mib: Math.round(rss / 102.4) / 10, pss_mib: Math.round(pss / 102.4) / 10 };
}

module.exports = {
  parseArgs, argsOrExit, makeBody, rfcDate, mxMessage, sendOne, greetAndEhlo, latencySummary, newRun, runLoad, withSession, nowMs, ownCpuMs, SmtpWire,
  CLK_TCK, procStat, procCpuNs, procTree, treeMemory,
};
