/**
 * System users and groups, read from /etc/passwd and /etc/group (Node has no
 * getpwnam), and created with useradd only when asked to.
 */
import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';

export interface SystemUser { name: string; uid: number; gid: number; home: string }

function readDb(file: string): string[][] {
  try { return fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => l.split(':')); } catch { return []; }
}

export function lookupSystemUser(nameOrUid: string | number): SystemUser | null {
  const f = readDb('/etc/passwd').find((r) => (typeof nameOrUid === 'number' ? r[2] === String(nameOrUid) : r[0] === nameOrUid));
  return f ? { name: f[0], uid: parseInt(f[2], 10), gid: parseInt(f[3], 10), home: f[5] } : null;
}

export function lookupGroup(name: string): number | null {
  const f = readDb('/etc/group').find((r) => r[0] === name);
  return f ? parseInt(f[2], 10) : null;
}

export function lookupGroupName(gid: number): string | null {
  return readDb('/etc/group').find((r) => r[2] === String(gid))?.[0] ?? null;
}

export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

/** A system account with a group of its own, no login, no home. */
export function createSystemUser(name: string, home = '/nonexistent'): SystemUser {
  const existing = lookupSystemUser(name);
  if (existing) return existing;
  execFileSync('useradd', ['--system', '--user-group', '--no-create-home', '--home-dir', home, '--shell', '/usr/sbin/nologin', name], { stdio: 'pipe' });
  const u = lookupSystemUser(name);
  if (!u) throw new Error(`useradd ${name} did not create the user`);
  return u;
}
