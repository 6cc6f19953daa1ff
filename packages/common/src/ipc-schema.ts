/**
 * Schemas for the JSON frames services send each other, and one small
 * validator for them. A server checks every request against the schema of
 * the socket it arrived on: only the fields that client may set, each of its
 * type and within its length, strings that are safe to put in a header. What
 * the validator returns is a fresh object holding only those fields, so
 * nothing else in a frame (`__proto__`, `origin`, `uid`, ...) can reach the
 * code that uses it. This is the seed of one typed protocol in common.
 */

export type Schema =
  | { type: 'string'; max: number; min?: number; pattern?: RegExp; values?: readonly string[]; multiline?: boolean }
  | { type: 'integer'; min: number; max: number }
  | { type: 'boolean' }
  | { type: 'null' }
  | { type: 'array'; items: Schema; max: number; min?: number }
  | { type: 'object'; fields: Record<string, Field> }
  | { type: 'either'; of: Schema[] };

export type Field = Schema & { optional?: boolean };

export class SchemaError extends Error {
  constructor(readonly path: string, problem: string) {
    super(`${path}: ${problem}`);
    this.name = 'SchemaError';
  }
}

/** C0 controls and DEL: a CR or LF would start a new header line, a NUL ends C strings. */
const CONTROL = /[\x00-\x08\x0a-\x1f\x7f]/;

const describe = (v: unknown) => (v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v);

/** The value as the schema allows it, rebuilt from the fields it names; throws SchemaError naming the first problem. */
export function validate<T = any>(schema: Schema, value: unknown, path = 'request'): T {
  switch (schema.type) {
    case 'string': {
      if (typeof value !== 'string') throw new SchemaError(path, `expected a string, got ${describe(value)}`);
      if (value.length > schema.max) throw new SchemaError(path, `longer than ${schema.max} characters`);
      if (value.length < (schema.min ?? 0)) throw new SchemaError(path, `shorter than ${schema.min} characters`);
      // multi-line text (header fields) is checked by its own pattern
      if (!schema.multiline && CONTROL.test(value)) throw new SchemaError(path, 'contains a control character (CR, LF, NUL, ...)');
      if (schema.values && !schema.values.includes(value)) throw new SchemaError(path, `not one of ${schema.values.join(', ')}`);
      if (schema.pattern && !schema.pattern.test(value)) throw new SchemaError(path, 'not in the expected form');
      return value as T;
    }
    case 'integer':
      if (typeof value !== 'number' || !Number.isInteger(value)) throw new SchemaError(path, `expected an integer, got ${describe(value)}`);
      if (value < schema.min || value > schema.max) throw new SchemaError(path, `outside ${schema.min}..${schema.max}`);
      return value as T;
    case 'boolean':
      if (typeof value !== 'boolean') throw new SchemaError(path, `expected true or false, got ${describe(value)}`);
      return value as T;
    case 'null':
      if (value !== null) throw new SchemaError(path, `expected null, got ${describe(value)}`);
      return value as T;
    case 'array': {
      if (!Array.isArray(value)) throw new SchemaError(path, `expected an array, got ${describe(value)}`);
      if (value.length > schema.max) throw new SchemaError(path, `more than ${schema.max} entries`);
      if (value.length < (schema.min ?? 0)) throw new SchemaError(path, `fewer than ${schema.min} entries`);
      return value.map((v, i) => validate(schema.items, v, `${path}[${i}]`)) as T;
    }
    case 'object': {
      if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new SchemaError(path, `expected an object, got ${describe(value)}`);
      // own keys only: JSON.parse makes "__proto__" an ordinary own key, refused here like any unknown one
      for (const key of Object.keys(value)) {
        if (!Object.prototype.hasOwnProperty.call(schema.fields, key)) throw new SchemaError(`${path}.${key}`, 'field not allowed here');
      }
      const out: Record<string, unknown> = {};
      for (const [key, field] of Object.entries(schema.fields)) {
        const v = (value as Record<string, unknown>)[key];
        if (v === undefined) {
          if (!field.optional) throw new SchemaError(`${path}.${key}`, 'missing');
          continue;
        }
        out[key] = validate(field, v, `${path}.${key}`);
      }
      return out as T;
    }
    case 'either': {
      let first: SchemaError | null = null;
      for (const s of schema.of) {
        try { return validate(s, value, path); } catch (e) {
          if (!(e instanceof SchemaError)) throw e;
          first ??= e;
        }
      }
      throw first ?? new SchemaError(path, 'no schema matches');
    }
  }
}

// ---------------------------------------------------------------- cleanup

const opt = <S extends Schema>(s: S): S & { optional: true } => ({ ...s, optional: true });

/** An envelope address (RFC 5321 4.5.3.1.3: a path is at most 256 octets; room for quoting). */
const address = { type: 'string', max: 512 } as const;
const recipientAddress: Schema = { ...address, min: 1 };
/** What a client called itself (HELO) or its checked DNS name: one line, within a DNS name's length and some. */
const hostText: Schema = { type: 'string', max: 255 };
/** DSN NOTIFY (RFC 3461). */
const notify: Schema = { type: 'array', max: 8, min: 1, items: { type: 'string', max: 7, values: ['NEVER', 'SUCCESS', 'FAILURE', 'DELAY'] } };
const dsn: Schema = {
  type: 'object', fields: {
    ret: opt({ type: 'string', max: 4, values: ['FULL', 'HDRS'] }),
    // RFC 3461 4.4: ENVID is at most 100 characters; as sendmail takes it (maildrop.ts)
    envid: opt({ type: 'string', max: 100, pattern: /^[^\s\x00-\x1f\x7f]*$/ }),
  },
};

/**
 * Requests on `private/cleanup`: smtpd's. origin is `smtpd` because of the
 * socket; a recipient is just an address (ORCPT, alias results are cleanup's
 * own); uid and user do not exist for it.
 */
export function smtpdMessageRequest(recipientLimit: number): Schema {
  return {
    type: 'object', fields: {
      type: { type: 'string', max: 16, values: ['message'] },
      envelope: {
        type: 'object', fields: {
          sender: address,
          recipients: { type: 'array', min: 1, max: recipientLimit, items: { type: 'object', fields: { address: recipientAddress } } },
          client: {
            type: 'object', fields: {
              // the peer's IP address as the socket reported it
              address: { type: 'string', max: 45, pattern: /^[0-9A-Fa-f:.]+$/ },
              name: hostText,
              helo: hostText,
            },
          },
          protocol: { type: 'string', max: 16, pattern: /^[A-Z]+$/ },
          tls: { type: 'either', of: [{ type: 'null' }, { type: 'string', max: 200 }] },
          sasl: opt({ type: 'string', max: 320, min: 1 }),
        },
      },
    },
  };
}

/**
 * sendmail's limits, not smtpd's: maildrop takes addresses of up to 1000
 * characters (pickup adds @$myorigin) and any number of recipients within its
 * 4 MiB header line; what pickup sends must never be refused for less.
 */
const localAddress = { type: 'string', max: 1000 + 256 } as const;
const LOCAL_RECIPIENT_LIMIT = 1_000_000;

/**
 * Requests on `private/cleanup.local`, whose only clients are the queue owner
 * (pickup, qmgr's notifications) and root: they say which of the two they are,
 * and pickup passes on the maildrop file owner's uid and login, the identity it
 * alone can see.
 */
export function localMessageRequest(): Schema {
  return {
    type: 'object', fields: {
      type: { type: 'string', max: 16, values: ['message'] },
      envelope: {
        type: 'object', fields: {
          sender: localAddress,
          recipients: {
            type: 'array', min: 1, max: LOCAL_RECIPIENT_LIMIT, items: {
              type: 'object', fields: { address: { ...localAddress, min: 1 }, notify: opt(notify) },
            },
          },
          origin: { type: 'string', max: 16, values: ['pickup', 'bounce'] },
          protocol: opt({ type: 'string', max: 16, pattern: /^[A-Z]+$/ }),
          uid: opt({ type: 'integer', min: 0, max: 0xffffffff }),
          user: opt({ type: 'string', max: 256, min: 1 }),
          dsn: opt(dsn),
        },
      },
    },
  };
}

/**
 * Header fields smtpd may put in front of a message: its own verdicts
 * (Authentication-Results:, spamd's X-Spam-*, X-Postern-Quarantine:), each
 * line CRLF-terminated, continuation lines folded, no empty line.
 */
const AFTER_BODY_HEADERS = /^(?:(?:Authentication-Results|X-Spam-[A-Za-z0-9-]+|X-Postern-Quarantine):[^\r\n\x00]*\r\n(?:[ \t][^\r\n\x00]*\r\n)*)*$/i;

export const afterBodyRequest: Schema = {
  type: 'object', fields: {
    type: { type: 'string', max: 16, values: ['after-body'] },
    headers: opt({ type: 'string', max: 64 * 1024, multiline: true, pattern: AFTER_BODY_HEADERS }),
    notes: opt({
      type: 'object', fields: {
        auth: opt({
          type: 'object', fields: {
            spf: opt({ type: 'string', max: 16, pattern: /^[a-z]+$/ }),
            dkimAligned: opt({ type: 'boolean' }),
            dmarc: opt({ type: 'string', max: 16, pattern: /^[a-z]+$/ }),
          },
        }),
      },
    }),
  },
};
