/**
 * The per-message copy for several recipients: the LMTP stream can be read
 * only once, so a message for more than one recipient is spooled once to a
 * private file (0600) and each mailbox written from it. Removed after the
 * delivery. Never touches a mailbox.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';

export interface MessageCopy {
  /** A fresh stream of the copy. */
  open(): NodeJS.ReadableStream;
  remove(): Promise<void>;
}

/** Writes the message to a private file. */
export async function copyMessage(stream: NodeJS.ReadableStream): Promise<MessageCopy> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'postern-local-'));
  const tmp = path.join(dir, 'message');
  await pipeline(stream, fs.createWriteStream(tmp, { mode: 0o600 }));
  return {
    open: () => fs.createReadStream(tmp),
    remove: () => fsp.rm(dir, { recursive: true, force: true }),
  };
}
