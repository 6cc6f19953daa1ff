/**
 * local: the LMTP server that writes mailboxes. Looks each recipient up in
 * the user table, answers per recipient, and writes Maildir (default) or
 * mbox with Return-Path: and Delivered-To: added. Touches the mailbox tree
 * only: no queue, no network.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { SMTPServer, SMTPServerDataStream, SMTPServerSession } from 'smtp-server';
import {
  runService, ServiceContext, RunningService, MainConfig, UserDb, UserInfo, userDbOf, validateMailboxAddress, mailboxOf,
  installEnhancedCodeShim, smtpError, headerSafe,
} from '@postern/common';
import { deliverToMaildir, deliverToMbox, MailboxError, DeliveryInput } from './mailbox.js';

installEnhancedCodeShim();

/** The user's entry, or an SMTP error saying why there is none. */
async function findUser(users: UserDb, address: string): Promise<UserInfo> {
  const bad = validateMailboxAddress(address);
  if (bad) throw smtpError(550, '5.1.3', `<${address}>: bad address: ${bad}`);
  let entry: UserInfo | undefined;
  try { entry = await users.userInfo(address); } catch (e) {
    throw smtpError(451, '4.3.0', `user table unavailable: ${(e as Error).message}`);
  }
  if (!entry) throw smtpError(550, '5.1.1', `<${address}>: no such user`);
  return entry;
}

async function start(ctx: ServiceContext): Promise<RunningService> {
  const { log } = ctx;
  let users = userDbOf(ctx.config);
  const servers: SMTPServer[] = [];
  const myUid = process.getuid!();

  async function deliverOne(entry: UserInfo, rcpt: string, session: SMTPServerSession, open: () => NodeJS.ReadableStream): Promise<string> {
    if (myUid !== 0 && entry.uid !== null && entry.uid !== myUid) {
      throw smtpError(451, '4.3.0', `<${rcpt}>: mailbox belongs to uid ${entry.uid} but local runs as uid ${myUid}`);
    }
    const box = mailboxOf(entry);
    const sender = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
    const input: DeliveryInput = {
      prefix: Buffer.from(`Return-Path: <${headerSafe(sender)}>\r\nDelivered-To: ${headerSafe(rcpt)}\r\n`),
      open, sender, arrival: new Date(), uid: entry.uid, gid: entry.gid,
    };
    try {
      if (box.format === 'mbox') {
        const r = await deliverToMbox(box.path, input, { lockTimeoutMs: ctx.config.seconds('mailbox_lock_timeout') * 1000 });
        log.info({ to: `<${rcpt}>`, mailbox: box.path, size: r.size, locks: r.locks.join('+') }, 'delivered to mbox');
        return `2.0.0 <${rcpt}> delivered to mbox`;
      }
      const r = await deliverToMaildir(box.path, input);
      log.info({ to: `<${rcpt}>`, mailbox: r.path, size: r.size }, 'delivered to maildir');
      return `2.0.0 <${rcpt}> delivered to maildir`;
    } catch (e) {
      const temporary = !(e instanceof MailboxError) || e.temporary;
      log.warn({ to: `<${rcpt}>`, mailbox: box.path, err: (e as Error).message }, 'mailbox delivery failed');
      throw temporary ? smtpError(451, '4.2.0', `<${rcpt}>: cannot write mailbox: ${(e as Error).message}`)
        : smtpError(554, '5.2.0', `<${rcpt}>: cannot write mailbox: ${(e as Error).message}`);
    }
  }

  /** One reply per recipient; a message for several recipients is spooled once to a private temp file. */
  async function receive(stream: SMTPServerDataStream, session: SMTPServerSession): Promise<(string | Error)[]> {
    const rcpts = session.envelope.rcptTo.map((r) => r.address);
    let open: () => NodeJS.ReadableStream;
    let tmp: string | null = null;
    if (rcpts.length === 1) {
      let used = false;
      open = () => { if (used) throw new Error('message stream already read'); used = true; return stream; };
    } else {
      const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'postern-local-'));
      tmp = path.join(dir, 'message');
      await pipeline(stream, fs.createWriteStream(tmp, { mode: 0o600 }));
      open = () => fs.createReadStream(tmp!);
    }
    try {
      const replies: (string | Error)[] = [];
      for (const rcpt of rcpts) {
        try {
          replies.push(await deliverOne(await findUser(users, rcpt), rcpt, session, open));
        } catch (e) {
          replies.push(e as Error);
        }
      }
      return replies;
    } finally {
      if (!stream.readableEnded) stream.resume();
      if (tmp) await fsp.rm(path.dirname(tmp), { recursive: true, force: true });
    }
  }

  const makeServer = (config: MainConfig) => {
    const server = new SMTPServer({
      lmtp: true, name: config.get('myhostname'), logger: false, authOptional: true,
      disabledCommands: ['AUTH', 'STARTTLS'], disableReverseLookup: true, hideSTARTTLS: true,
      socketTimeout: config.seconds('delivery_timeout') * 1000,
      onRcptTo(address, _session, cb) {
        findUser(users, address.address).then(() => cb(), (e) => cb(e as Error));
      },
      onData(stream, session, cb) {
        receive(stream, session).then((replies) => cb(null, replies as any), (err) => cb(err));
      },
    });
    server.on('error', (err) => log.warn({ err: err.message }, 'LMTP connection error'));
    return server;
  };

  return {
    listen(h) {
      const s = makeServer(ctx.config);
      s.listen(h as any);
      servers.push(s);
    },
    reload(config) {
      users = userDbOf(config);
    },
    stop() {
      return Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r())))).then(() => undefined);
    },
  };
}

runService('local', start);
