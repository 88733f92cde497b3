import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseInstant, partitionAt, partitionCount, partitionFromKey } from '../src/plan/partitions';

describe('partitions', () => {
  test('days: end date inclusive, half-open UTC ranges', () => {
    assert.equal(partitionCount('2024-01-01', '2024-03-31', 'day'), 91);
    assert.equal(partitionCount('2024-01-01', '2024-01-01', 'day'), 1);
    assert.equal(partitionCount('2024-01-02', '2024-01-01', 'day'), 0);
    assert.deepEqual(partitionAt('2024-01-01', 'day', 0), { key: '2024-01-01', start: '2024-01-01T00:00:00.000Z', end: '2024-01-02T00:00:00.000Z' });
    assert.equal(partitionAt('2024-01-01', 'day', 59).key, '2024-02-29', 'leap day');
    assert.equal(partitionAt('2024-01-01', 'day', 90).key, '2024-03-31');
  });

  test('hours and months', () => {
    assert.equal(partitionCount('2024-01-01T00', '2024-01-01T23', 'hour'), 24);
    assert.equal(partitionCount('2024-01-01', '2024-01-02', 'hour'), 25);
    assert.deepEqual(partitionAt('2024-01-01T22', 'hour', 3), { key: '2024-01-02T01', start: '2024-01-02T01:00:00.000Z', end: '2024-01-02T02:00:00.000Z' });
    assert.equal(partitionCount('2024-01-15', '2024-12-01', 'month'), 12);
    assert.deepEqual(partitionAt('2024-01-31', 'month', 1), { key: '2024-02', start: '2024-02-01T00:00:00.000Z', end: '2024-03-01T00:00:00.000Z' });
    assert.equal(partitionAt('2023-11-05', 'month', 2).key, '2024-01');
  });

  test('100,000 partitions are addressed by index without a list', () => {
    const last = partitionAt('2000-01-01T00', 'hour', 99_999);
    assert.equal(last.key, '2011-05-29T15');
    assert.equal(partitionCount('2000-01-01T00', last.start, 'hour'), 100_000);
  });

  test('keys round-trip and bad keys are refused', () => {
    assert.deepEqual(partitionFromKey('2024-02-29', 'day'), partitionAt('2024-01-01', 'day', 59));
    assert.equal(partitionFromKey('2024-02', 'month').end, '2024-03-01T00:00:00.000Z');
    assert.equal(partitionFromKey('2024-01-05T13', 'hour').start, '2024-01-05T13:00:00.000Z');
    assert.throws(() => partitionFromKey('2024-02-30', 'day'), /not a valid day/);
    assert.throws(() => partitionFromKey('2024-01-05', 'hour'), /not a hour partition key/);
  });

  test('instants: offsets are honoured, bare timestamps are UTC', () => {
    assert.equal(parseInstant('2024-01-01T02:00:00+02:00'), Date.UTC(2024, 0, 1));
    assert.equal(parseInstant('2024-01-01 05:30'), Date.UTC(2024, 0, 1, 5, 30));
    assert.throws(() => parseInstant('yesterday'));
  });
});
