import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { z } from 'zod';
import { ProgressWatch, StalledError, toFailure } from '../src/activities/context';
import { MissingConnectionError, stallTimeoutMs } from '../src/config';
import { isPermanent, PermanentError } from '../src/errors';

function pgError(code: string, extra: Record<string, unknown> = {}): Error {
  return Object.assign(new Error(`pg says ${code}`), { code, ...extra });
}

function nodeError(code: string): Error {
  return Object.assign(new Error(`${code}: something`), { code });
}

describe('error classification: only known-permanent errors are non-retryable', () => {
  const permanent: [string, unknown][] = [
    ['PermanentError', new PermanentError('frozen schema')],
    ['non-retryable ApplicationFailure', ApplicationFailure.nonRetryable('bad', 'InvalidInput')],
    ['zod error (invalid input)', z.object({ a: z.string() }).safeParse({}).error],
    ['unset connection variable', new MissingConnectionError('NOPE_URL')],
    ['22P02 invalid text representation', pgError('22P02')],
    ['22003 numeric out of range', pgError('22003')],
    ['23505 duplicate key in a user table', pgError('23505', { constraint: 'orders_pkey' })],
    ['23502 not null', pgError('23502')],
    ['42P01 undefined table', pgError('42P01')],
    ['42703 undefined column', pgError('42703')],
    ['42501 insufficient privilege', pgError('42501')],
    ['28P01 bad password', pgError('28P01')],
    ['3D000 no such database', pgError('3D000')],
    ['3F000 no such schema', pgError('3F000')],
    ['0A000 feature not supported', pgError('0A000')],
    ['ENOENT missing file', nodeError('ENOENT')],
    ['EACCES unreadable file', nodeError('EACCES')],
  ];
  const transient: [string, unknown][] = [
    ['worker shutdown (CancelledFailure)', new CancelledFailure('WORKER_SHUTDOWN')],
    ['AbortError', Object.assign(new Error('The operation was aborted'), { name: 'AbortError' })],
    ['retryable ApplicationFailure', ApplicationFailure.retryable('flaky')],
    ['premature stream close', Object.assign(new Error('Premature close'), { code: 'ERR_STREAM_PREMATURE_CLOSE' })],
    ['XX000 internal error', pgError('XX000')],
    ['TypeError', new TypeError("Cannot read properties of undefined (reading 'x')")],
    ['an error with no code', new Error('something odd')],
    ['a thrown string', 'oops'],
    ['undefined', undefined],
    ['40001 serialization failure', pgError('40001')],
    ['40P01 deadlock', pgError('40P01')],
    ['55P03 lock timeout', pgError('55P03')],
    ['57014 statement timeout', pgError('57014')],
    ['57P01 admin shutdown', pgError('57P01')],
    ['53300 too many connections', pgError('53300')],
    ['08006 connection failure', pgError('08006')],
    ['25P02 in failed transaction', pgError('25P02')],
    ['ECONNRESET', nodeError('ECONNRESET')],
    ['ECONNREFUSED', nodeError('ECONNREFUSED')],
    ['concurrent CREATE TABLE IF NOT EXISTS (42P07)', pgError('42P07')],
    ['concurrent CREATE ... IF NOT EXISTS on a catalog index (23505)', pgError('23505', { constraint: 'pg_type_typname_nsp_index' })],
    ['a stall', new StalledError(300_000)],
  ];

  for (const [what, err] of permanent) {
    test(`permanent: ${what}`, () => {
      assert.equal(isPermanent(err), true);
      const failure = toFailure(err) as ApplicationFailure;
      assert.ok(failure instanceof ApplicationFailure);
      assert.equal(failure.nonRetryable, true);
    });
  }
  for (const [what, err] of transient) {
    test(`retryable: ${what}`, () => {
      assert.equal(isPermanent(err), false);
      const failure = toFailure(err) as ApplicationFailure;
      assert.ok(failure instanceof ApplicationFailure);
      assert.equal(failure.nonRetryable, false);
    });
  }

  test('a failure carries the hint in its message and names the error type', () => {
    const failure = toFailure(Object.assign(new Error('relation "x" does not exist'), { code: '42P01' })) as ApplicationFailure;
    assert.match(failure.message, /SQLSTATE 42P01.*hint: table does not exist/);
    assert.equal(failure.type, 'Error');
    assert.equal((toFailure(new CancelledFailure('WORKER_SHUTDOWN')) as ApplicationFailure).type, 'CancelledFailure');
  });

  test('a hint is redacted like the message: a connection password in it never leaves the activity', () => {
    const secret = 'postgres://loader:Hint-S3cret-pw@db.internal:5432/warehouse';
    process.env.HINT_TEST_URL = secret;
    try {
      const failure = toFailure(new PermanentError('cannot load', `check ${secret} (password Hint-S3cret-pw)`)) as ApplicationFailure;
      const everything = JSON.stringify({ message: failure.message, details: failure.details });
      assert.ok(!everything.includes('Hint-S3cret-pw'), everything);
      assert.match(failure.message, /hint: check \*\*\*/);
    } finally {
      delete process.env.HINT_TEST_URL;
    }
  });
});

describe('stall detection', () => {
  test('only details that change are progress; the same details again are not', () => {
    let now = 0;
    const watch = new ProgressWatch(10_000, () => now);
    assert.equal(watch.record({ rows: 10 }), true);
    now = 9_999;
    assert.equal(watch.record({ rows: 10 }), false, 'a repeat is not progress');
    assert.equal(watch.stalledFor(), undefined, 'not yet');
    now = 10_000;
    assert.equal(watch.stalledFor(), 10_000, 'stalled once nothing moved for the timeout');
    assert.equal(watch.record({ rows: 11 }), true);
    assert.equal(watch.stalledFor(), undefined, 'moving again');
    now = 19_999;
    assert.equal(watch.stalledFor(), undefined);
    now = 25_000;
    assert.equal(watch.stalledFor(), 15_000);
  });

  test('a watch that was never told anything stalls from its start; a zero timeout never stalls', () => {
    let now = 1_000;
    const watch = new ProgressWatch(5_000, () => now);
    now = 6_000;
    assert.equal(watch.stalledFor(), 5_000);
    const off = new ProgressWatch(0, () => now);
    now = 1e12;
    assert.equal(off.stalledFor(), undefined);
  });

  test('SLUICE_STALL_TIMEOUT is a duration, with a default of five minutes', () => {
    assert.equal(stallTimeoutMs({}), 300_000);
    assert.equal(stallTimeoutMs({ SLUICE_STALL_TIMEOUT: '90s' }), 90_000);
    assert.equal(stallTimeoutMs({ SLUICE_STALL_TIMEOUT: '0' }), 0);
    assert.throws(() => stallTimeoutMs({ SLUICE_STALL_TIMEOUT: 'soon' }), /SLUICE_STALL_TIMEOUT=soon must be a duration/);
  });
});
