/**
 * The client side of proxymap: under master, every service but proxymap asks
 * the proxymap service (private/proxymap) for database-backed tables, so it
 * never reads the .cf file with the database password and holds no database
 * connection. One request per connection: {op, spec, key} -> {ok, value} or
 * {ok:false, unavailable, error}. Anything going wrong is TableUnavailable:
 * the caller answers 4xx or defers, never 5xx.
 */
import * as path from 'node:path';
import { requestJson } from '../ipc/connection.js';
import { MainConfig } from '../config/config.js';
import { Credentials, Table, TableUnavailable, UserDb, UserInfo } from './types.js';

export type ProxyOp = 'lookup' | 'exists' | 'credentials' | 'userInfo';

/** A service under master that is not proxymap itself goes through proxymap. */
export function useProxy(): boolean {
  return !!process.env.POSTERN_SERVICE && process.env.POSTERN_COMMAND !== 'proxymap';
}

let socketPath: string | undefined;
function proxySocket(): string {
  if (!socketPath) {
    const config = MainConfig.load(process.env.POSTERN_CONFIG!);
    socketPath = path.join(config.get('queue_directory'), 'private', 'proxymap');
  }
  return socketPath;
}

async function ask(op: ProxyOp, spec: string, key: string): Promise<any> {
  let reply: any;
  try {
    reply = await requestJson(proxySocket(), { op, spec, key }, 15000);
  } catch (e) {
    throw new TableUnavailable(`${spec}: proxymap: ${(e as Error).message}`);
  }
  // always temporary, even a table proxymap refuses: after a reload smtpd may ask before
  // proxymap has re-read main.cf, and a lookup problem must never become a 5xx
  if (!reply?.ok) throw new TableUnavailable(`${spec}: proxymap: ${reply?.error ?? 'no answer'}`);
  return reply.value ?? undefined;
}

export function proxyTable(spec: string): Table {
  return { spec, lookup: (key) => ask('lookup', spec, key) };
}

export function proxyUserDb(spec: string): UserDb & Table {
  return {
    spec,
    lookup: (key) => ask('lookup', spec, key),
    exists: async (a) => (await ask('exists', spec, a)) === true,
    credentials: (a): Promise<Credentials | undefined> => ask('credentials', spec, a),
    userInfo: (a): Promise<UserInfo | undefined> => ask('userInfo', spec, a),
  };
}
