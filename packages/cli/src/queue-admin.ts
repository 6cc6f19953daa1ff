/**
 * `postern queue flush|deliver|delete|hold|release|requeue|expire|show|check`:
 * postqueue -f/-s/-i, postsuper -d/-h/-H/-r/-e/-s and postcat -q in one place.
 *
 * While the mail system runs, qmgr owns the queue: every change is a request on
 * its socket (private/qmgr, reachable by root and the queue owner), and qmgr
 * applies it between deliveries. When the system is down the command changes
 * the spool itself with the same code (common/queue/queue-ops.ts). Only `show` and
 * `check` read the spool directly in both cases.
 */
import * as fs from 'node:fs';
import { Command, Option } from 'commander';
import {
  MainConfig, Spool, QueueName, QueueOp, QueueOpOutcome, QUEUE_OP_SOURCES, QUEUE_OP_DONE, isQueueId, applyQueueOp,
  findQueued, listQueued, requestJson, serviceAccounts, prepareSpool, isRoot,
} from '@postern/common';
import { masterPid } from './control.js';
import { showMessage } from './queue-show.js';
import { checkSpool } from './spool-check.js';

export class BadQueueId extends Error {
  constructor(id: string) { super(`bad queue id "${id}"`); }
}

/**
 * Queue ids from the command line: ids, `ALL`, or `-` for standard input (one
 * id per line, first word; a trailing `*` or `!` from mailq output is dropped).
 * Every id is checked before anything is touched.
 */
export function parseQueueIds(args: string[], stdin: () => string): string[] | 'ALL' {
  if (args.length === 1 && args[0] === 'ALL') return 'ALL';
  let ids = args;
  if (args.length === 1 && args[0] === '-') {
    ids = stdin().split('\n').map((l) => l.trim().split(/\s+/)[0]).filter(Boolean).map((x) => x.replace(/[*!]$/, ''));
  }
  for (const id of ids) if (!isQueueId(id)) throw new BadQueueId(id);
  return ids;
}

const ADMIN_QUEUES: QueueName[] = ['incoming', 'active', 'deferred', 'hold'];

function parseQueues(value: string | undefined): QueueName[] | undefined {
  if (value === undefined) return undefined;
  const names = value.split(/[\s,]+/).filter(Boolean);
  for (const n of names) {
    if (!ADMIN_QUEUES.includes(n as QueueName)) throw new Error(`--queue: "${n}" is not one of ${ADMIN_QUEUES.join(', ')}`);
  }
  return names as QueueName[];
}

interface QueueTarget { config: MainConfig; spool: Spool; running: number | null }

function target(configDir: string): QueueTarget {
  const config = MainConfig.load(configDir);
  const spool = new Spool(config.get('queue_directory'));
  return { config, spool, running: masterPid(spool) };
}

/** One request to the running qmgr; the error says what to do when it does not answer. */
async function askQmgr(t: QueueTarget, req: object, timeoutMs = 60000): Promise<any> {
  const sock = t.spool.privateSocket('qmgr');
  let reply: any;
  try {
    reply = await requestJson(sock, req, timeoutMs);
  } catch (e) {
    const why = /EACCES/.test((e as Error).message) ? 'permission denied (run as root or the queue owner)' : (e as Error).message;
    throw new Error(`the mail system is running (master pid ${t.running}) but qmgr cannot be asked: ${why}`);
  }
  if (!reply?.ok) throw new Error(`qmgr: ${reply?.error ?? 'no answer'}`);
  return reply;
}

/** Refuse up front, rather than report an unreadable queue as an empty one. */
function requireSpoolAccess(spool: Spool, queues: readonly QueueName[], write: boolean): void {
  for (const q of queues) {
    try { fs.accessSync(spool.dir(q), fs.constants.R_OK | fs.constants.X_OK | (write ? fs.constants.W_OK : 0)); } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new Error(`${spool.dir(q)}: ${code === 'ENOENT' ? 'no such directory (is queue_directory right?)' : 'permission denied (run as root or the queue owner)'}`);
    }
  }
}

/** The same operations on a stopped system, straight on the spool. */
async function applyDirectly(t: QueueTarget, op: QueueOp, ids: string[] | 'ALL', queues: readonly QueueName[]): Promise<QueueOpOutcome[]> {
  requireSpoolAccess(t.spool, ['incoming', 'deferred', 'hold'], true);
  const list = ids === 'ALL' ? (await listQueued(t.spool, queues)).map((x) => x.id) : ids;
  const out: QueueOpOutcome[] = [];
  for (const id of list) {
    try {
      const from = await findQueued(t.spool, id, queues);
      if (!from) {
        const elsewhere = await findQueued(t.spool, id, ADMIN_QUEUES);
        if (!elsewhere) { out.push({ id, result: 'not found' }); continue; }
        const why = elsewhere === 'hold' ? 'is on hold (release it first)' : op === 'release' ? `is not on hold (in ${elsewhere}/)` : `is in ${elsewhere}/`;
        out.push({ id, queue: elsewhere, result: 'refused', detail: why });
        continue;
      }
      await applyQueueOp(t.spool, op, id, from);
      out.push({ id, queue: from, result: QUEUE_OP_DONE[op] });
      appendLog(t.config, { queue_id: id, queue: from, status: QUEUE_OP_DONE[op] }, `${op}: done by the administrator while the mail system was down`);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      out.push({ id, result: 'refused', detail: err.code === 'EACCES' ? 'permission denied (run as root or the queue owner)' : err.message });
    }
  }
  // a new deferred/ hash directory made by root must belong to the queue owner
  if (isRoot()) { try { prepareSpool(t.spool, serviceAccounts(t.config)); } catch { /* check reports it */ } }
  return out;
}

/** With master down nobody collects log lines: append ours to maillog_file, best effort. */
function appendLog(config: MainConfig, fields: Record<string, unknown>, msg: string): void {
  const file = config.get('maillog_file');
  if (!file) return;
  const line = JSON.stringify({ level: 'info', time: new Date().toISOString(), service: 'postern', pid: process.pid, ...fields, msg });
  try { fs.appendFileSync(file, line + '\n'); } catch { /* not ours to create or write */ }
}

const SUMMARY: Record<QueueOp, string> = {
  hold: 'Placed on hold', release: 'Released from hold', delete: 'Deleted', expire: 'Expired', requeue: 'Requeued', deliver: 'Scheduled',
};

/** Prints one line per message (only the exceptions for ALL) and postsuper's summary; returns the exit status. */
function report(op: QueueOp, outcomes: QueueOpOutcome[], all: boolean): number {
  let status = 0;
  let done = 0;
  let pending = 0;
  for (const o of outcomes) {
    switch (o.result) {
      case 'not found':
        if (!all) { process.stderr.write(`postern: ${o.id}: not in the queue\n`); status = 1; }
        break;
      case 'refused':
        process.stderr.write(`postern: ${o.id}: ${op} refused: ${o.detail ?? 'refused'}\n`);
        status = 1;
        break;
      case 'pending':
        pending++;
        console.log(`postern: ${o.id}: being delivered; ${op} applies when that attempt ends`);
        break;
      default:
        done++;
        if (!all) console.log(`postern: ${o.id}: ${o.result}${o.queue ? ` (was in ${o.queue}/)` : ''}${o.detail ? `, ${o.detail}` : ''}`);
    }
  }
  console.log(`postern: ${SUMMARY[op]}: ${done} message${done === 1 ? '' : 's'}${pending ? `, ${pending} pending` : ''}`);
  return status;
}

function readStdin(): string {
  return fs.readFileSync(0, 'utf8');
}

export function addQueueAdminCommands(queue: Command, configDir: () => string, setExit: (code: number) => void): void {
  const fail = (msg: string): void => { process.stderr.write(`postern: ${msg}\n`); setExit(1); };

  /** The body of delete/hold/release/requeue/expire/deliver. */
  async function operate(op: QueueOp, args: string[], queueOpt?: string): Promise<void> {
    let ids: string[] | 'ALL';
    let queues: readonly QueueName[];
    try {
      ids = parseQueueIds(args, readStdin);
      const asked = parseQueues(queueOpt);
      queues = asked ? QUEUE_OP_SOURCES[op].filter((q) => asked.includes(q)) : QUEUE_OP_SOURCES[op];
      if (asked && !queues.length) throw new Error(`--queue: ${op} takes messages only from ${QUEUE_OP_SOURCES[op].join(', ')}`);
    } catch (e) { return fail((e as Error).message); }
    if (Array.isArray(ids) && !ids.length) return fail('no queue ids given');
    const t = target(configDir());
    let outcomes: QueueOpOutcome[];
    if (t.running) {
      outcomes = (await askQmgr(t, { type: op, ids, queues })).results;
    } else {
      if (op === 'deliver') return fail('cannot deliver: the mail system is down (postern start)');
      outcomes = await applyDirectly(t, op, ids, queues);
    }
    setExit(report(op, outcomes, ids === 'ALL'));
  }

  const idsHelp = 'queue ids, ALL, or - to read ids from standard input';
  const queueOption = () => new Option('--queue <names>', 'only messages in these queues (incoming, active, deferred, hold)');

  queue.command('flush').description('retry deferred mail now (postqueue -f); --site: only mail for one domain (postqueue -s)')
    .option('--site <domain>', 'only messages with a pending recipient in DOMAIN')
    .action(async (o) => {
      const t = target(configDir());
      if (!t.running) return fail('cannot flush the mail queue: the mail system is down (postern start)');
      if (o.site === undefined) {
        await askQmgr(t, { type: 'flush' });
        console.log('postern: flush requested: every deferred message is retried now, hosts marked dead included');
        return;
      }
      const reply = await askQmgr(t, { type: 'flush', site: o.site });
      for (const id of reply.scheduled) console.log(`postern: ${id}: scheduled`);
      console.log(`postern: ${reply.scheduled.length} message${reply.scheduled.length === 1 ? '' : 's'} for ${o.site} scheduled`);
    });

  queue.command('deliver <id>').description('deliver one deferred message now (postqueue -i)')
    .action((id: string) => operate('deliver', [id]));

  queue.command('delete <ids...>').description(`delete messages (postsuper -d): ${idsHelp}`).addOption(queueOption())
    .action((ids: string[], o) => operate('delete', ids, o.queue));
  queue.command('hold <ids...>').description(`put messages on hold, where nothing delivers them (postsuper -h): ${idsHelp}`)
    .addOption(queueOption()).action((ids: string[], o) => operate('hold', ids, o.queue));
  queue.command('release <ids...>').description(`release held messages for delivery now (postsuper -H): ${idsHelp}`)
    .action((ids: string[]) => operate('release', ids));
  queue.command('requeue <ids...>').description(`send messages through the queue again with the current configuration (postsuper -r): ${idsHelp}`)
    .addOption(queueOption()).action((ids: string[], o) => operate('requeue', ids, o.queue));
  queue.command('expire <ids...>').description(`return messages to their senders at the next attempt (postsuper -e): ${idsHelp}`)
    .addOption(queueOption()).action((ids: string[], o) => operate('expire', ids, o.queue));

  queue.command('show <id>').description('a queued message: envelope, recipients\' status, content (postcat -q)')
    .option('--envelope', 'the envelope and each recipient\'s status')
    .option('--headers', 'the message header section')
    .option('--body', 'the message body')
    .option('--json', 'one JSON object')
    .action(async (id: string, o) => {
      if (!isQueueId(id)) return fail(new BadQueueId(id).message);
      const t = target(configDir());
      try { requireSpoolAccess(t.spool, ['incoming', 'active', 'deferred', 'hold'], false); } catch (e) { return fail((e as Error).message); }
      const parts = { envelope: !!o.envelope, headers: !!o.headers, body: !!o.body };
      if (!parts.envelope && !parts.headers && !parts.body) Object.assign(parts, { envelope: true, headers: true, body: true });
      const found = await showMessage(t.spool, id, parts, !!o.json, process.stdout);
      if (!found) fail(`${id}: not in the queue`);
    });

  queue.command('check').description('repair the spool: owners and modes, stale temporary files, misplaced and corrupt files (postsuper -s)')
    .action(async () => {
      const t = target(configDir());
      try { requireSpoolAccess(t.spool, ['incoming', 'active', 'deferred', 'hold', 'corrupt'], true); } catch (e) { return fail((e as Error).message); }
      const actions = await checkSpool(t.config, t.spool, !!t.running);
      for (const a of actions) console.log(`postern: ${a}`);
      console.log(`postern: spool check: ${actions.length ? `${actions.length} repair${actions.length === 1 ? '' : 's'}` : 'nothing to repair'}`);
    });
}
