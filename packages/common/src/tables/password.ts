// Password hashing compatible with glibc crypt(3) and Dovecot's password schemes.
//
// SHA-512 crypt ($6$) and SHA-256 crypt ($5$) follow Ulrich Drepper's specification
// (https://www.akkadia.org/drepper/SHA-crypt.txt) byte for byte, so hashes made here
// verify in Dovecot, `openssl passwd -6`, /etc/shadow, and the other way round.
// Written here instead of pulling a dependency: it is ~100 lines over node:crypto.

import * as crypto from 'node:crypto';

const { createHash, randomBytes, timingSafeEqual } = crypto;

/** The crypt(3) base-64 alphabet (not RFC 4648 order). */
const ITOA64 = './0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';

const ROUNDS_DEFAULT = 5000;
const ROUNDS_MIN = 1000;
const ROUNDS_MAX = 999_999_999;
const SALT_MAX = 16;

type Alg = 'sha256' | 'sha512';

/** A random salt of 16 characters; 64 symbols means `byte & 63` is unbiased. */
function randomSalt(): string {
  let s = '';
  for (const b of randomBytes(SALT_MAX)) s += ITOA64[b & 63];
  return s;
}

/** Sequence `src` repeated to exactly `len` bytes (the spec's P and S strings). */
function stretch(src: Buffer, len: number): Buffer {
  const out = Buffer.alloc(len);
  for (let i = 0; i < len; i += src.length) src.copy(out, i, 0, Math.min(src.length, len - i));
  return out;
}

/** The crypt base-64 of three bytes, least significant 6 bits first. */
function b64From24(b2: number, b1: number, b0: number, n: number): string {
  let w = (b2 << 16) | (b1 << 8) | b0;
  let s = '';
  for (let i = 0; i < n; i++) {
    s += ITOA64[w & 63];
    w >>>= 6;
  }
  return s;
}

/** The spec's final byte permutation + encoding of the digest. */
function encodeDigest(alg: Alg, d: Buffer): string {
  let s = '';
  if (alg === 'sha512') {
    // Groups (i, i+21, i+42), rotated by i mod 3: (0,21,42) (22,43,1) (44,2,23) ...
    for (let i = 0; i < 21; i++) {
      const [a, b, c] = [d[i], d[i + 21], d[i + 42]];
      s += i % 3 === 0 ? b64From24(a, b, c, 4) : i % 3 === 1 ? b64From24(b, c, a, 4) : b64From24(c, a, b, 4);
    }
    s += b64From24(0, 0, d[63], 2);
  } else {
    // Groups (i, i+10, i+20), rotated the other way: (0,10,20) (21,1,11) (12,22,2) ...
    for (let i = 0; i < 10; i++) {
      const [a, b, c] = [d[i], d[i + 10], d[i + 20]];
      s += i % 3 === 0 ? b64From24(a, b, c, 4) : i % 3 === 1 ? b64From24(c, a, b, 4) : b64From24(b, c, a, 4);
    }
    s += b64From24(0, d[31], d[30], 3);
  }
  return s;
}

/** One-shot digest: crypto.hash where Node has it (20.12+), else a Hash object. */
const oneShot = (crypto as { hash?: (alg: string, data: Buffer, enc: 'buffer') => Buffer }).hash;
function digestOf(alg: Alg, data: Buffer): Buffer {
  return oneShot ? oneShot(alg, data, 'buffer') : createHash(alg).update(data).digest();
}

/** Drepper's algorithm proper; `salt` is already truncated and validated. */
function shaCryptDigest(alg: Alg, pw: Buffer, salt: Buffer, rounds: number): Buffer {
  const h = () => createHash(alg);
  const size = alg === 'sha512' ? 64 : 32;

  const b = h().update(pw).update(salt).update(pw).digest();
  const a = h().update(pw).update(salt);
  a.update(stretch(b, pw.length));
  for (let n = pw.length; n > 0; n >>= 1) a.update(n & 1 ? b : pw);
  let c: Buffer = a.digest();

  const dp = h();
  for (let i = 0; i < pw.length; i++) dp.update(pw);
  const p = stretch(dp.digest(), pw.length);

  const ds = h();
  for (let i = 0; i < 16 + c[0]; i++) ds.update(salt);
  const s = stretch(ds.digest(), salt.length);

  // The rounds are most of the cost: each round's input is laid out in one buffer and
  // hashed with one call (crypto.hash, Node >= 20.12), not a Hash object per round.
  const round = Buffer.allocUnsafe(2 * size + 2 * p.length + s.length);
  for (let i = 0; i < rounds; i++) {
    let o = (i & 1 ? p : c).copy(round, 0);
    if (i % 3) o += s.copy(round, o);
    if (i % 7) o += p.copy(round, o);
    o += (i & 1 ? c : p).copy(round, o);
    c = digestOf(alg, round.subarray(0, o));
  }
  if (c.length !== size) throw new Error('unexpected digest size');
  return c;
}

/**
 * Shared front end for $5$ and $6$. `salt` is either a bare salt or a setting string
 * such as `$6$rounds=10000$salt` or a complete stored hash (its tail is ignored), which is
 * how verification re-creates a hash. A `rounds=` field read from a setting string is kept
 * in the output even when it says 5000, as glibc does, so such hashes still verify.
 */
function shaCrypt(alg: Alg, password: string, salt?: string, rounds?: number): string {
  const prefix = alg === 'sha512' ? '$6$' : '$5$';
  let explicitRounds = rounds !== undefined && rounds !== ROUNDS_DEFAULT;
  let r = rounds ?? ROUNDS_DEFAULT;
  let sl = salt ?? randomSalt();
  if (sl.startsWith(prefix)) {
    sl = sl.slice(prefix.length);
    const m = /^rounds=([0-9]{1,10})\$/.exec(sl);
    if (m) {
      r = Number(m[1]);
      explicitRounds = true;
      sl = sl.slice(m[0].length);
    }
    sl = sl.split('$')[0];
  }
  if (!Number.isInteger(r) || r < 0) throw new Error(`invalid rounds: ${r}`);
  r = Math.min(ROUNDS_MAX, Math.max(ROUNDS_MIN, r)); // glibc clamps rather than rejects
  sl = sl.slice(0, SALT_MAX);
  // ASCII only so characters are bytes; no '$' / ':' / newline so the result stays one
  // field of a passwd-file line.
  if (!/^[\x21-\x7e]*$/.test(sl) || /[$:]/.test(sl)) throw new Error('invalid salt characters');

  const digest = shaCryptDigest(alg, Buffer.from(password, 'utf8'), Buffer.from(sl, 'latin1'), r);
  return `${prefix}${explicitRounds ? `rounds=${r}$` : ''}${sl}$${encodeDigest(alg, digest)}`;
}

/** glibc SHA-512 crypt (`$6$`). Default: random 16-character salt, 5000 rounds. */
export function sha512Crypt(password: string, salt?: string, rounds?: number): string {
  return shaCrypt('sha512', password, salt, rounds);
}

/** glibc SHA-256 crypt (`$5$`); only needed to verify older hashes. */
export function sha256Crypt(password: string, salt?: string, rounds?: number): string {
  return shaCrypt('sha256', password, salt, rounds);
}

/** A new password hash in Dovecot's scheme form: `{SHA512-CRYPT}$6$...`. */
export function hashPassword(password: string): string {
  return `{SHA512-CRYPT}${sha512Crypt(password)}`;
}

/**
 * Compare equal-length digests of both strings, so neither the position of the first
 * difference nor (for {PLAIN}) the stored password's length leaks through timing.
 */
function safeEqual(a: string, b: string): boolean {
  const da = createHash('sha512').update(a, 'utf8').digest();
  const db = createHash('sha512').update(b, 'utf8').digest();
  return timingSafeEqual(da, db) && a === b;
}

/** Verify a crypt(3)-style hash; only $6$ and $5$ are supported. */
function verifyCrypt(password: string, hash: string): boolean {
  try {
    if (hash.startsWith('$6$')) return safeEqual(sha512Crypt(password, hash), hash);
    if (hash.startsWith('$5$')) return safeEqual(sha256Crypt(password, hash), hash);
  } catch {
    // A malformed stored hash is a non-match, never an exception at login time.
  }
  return false;
}

/**
 * Check `password` against a stored Dovecot-style value `{SCHEME}data`. Supported:
 * SHA512-CRYPT, SHA256-CRYPT, CRYPT (with $6$/$5$ hashes), PLAIN/CLEARTEXT. A value
 * without `{SCHEME}` is CRYPT, Dovecot's default for passwd-files. Unknown schemes,
 * locked hashes (`!`, `*`) and empty passwords never match, as in Dovecot.
 */
export function verifyPassword(password: string, stored: string): boolean {
  if (password === '' || stored === '') return false;
  const m = /^\{([A-Za-z0-9.-]+)\}/.exec(stored);
  const scheme = m ? m[1].toUpperCase() : 'CRYPT';
  const data = m ? stored.slice(m[0].length) : stored;
  switch (scheme) {
    case 'SHA512-CRYPT':
      return data.startsWith('$6$') && verifyCrypt(password, data);
    case 'SHA256-CRYPT':
      return data.startsWith('$5$') && verifyCrypt(password, data);
    case 'CRYPT':
      return verifyCrypt(password, data);
    case 'PLAIN':
    case 'CLEARTEXT':
      return safeEqual(password, data);
    default:
      return false;
  }
}
