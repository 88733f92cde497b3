/**
 * Object storage for tests: test/run.ts starts SeaweedFS (src/dev/s3-server.ts) when a test
 * file calls requireS3(), and hands its endpoint and keys over as the TEST_S3 connection.
 */
import { CreateBucketCommand, DeleteObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { randomBytes } from 'node:crypto';
import { requireEnv } from './helpers';

export const S3_CONNECTION = 'TEST_S3';

export interface TestS3 {
  client: S3Client;
  connection: string;
  /** The values that must never show up in history, logs or tables. */
  secrets: string[];
  /** A new bucket with a random name. */
  bucket(prefix: string): Promise<string>;
  put(bucket: string, key: string, body: string | Uint8Array): Promise<void>;
  remove(bucket: string, key: string): Promise<void>;
}

/** Fails (never skips) when the harness could not start the server, saying how to get it. */
export function requireS3(): TestS3 {
  if (process.env.SLUICE_TEST_S3_MISSING) throw new Error(process.env.SLUICE_TEST_S3_MISSING);
  const endpoint = requireEnv(`${S3_CONNECTION}_S3_ENDPOINT`);
  const accessKeyId = requireEnv(`${S3_CONNECTION}_S3_ACCESS_KEY_ID`);
  const secretAccessKey = requireEnv(`${S3_CONNECTION}_S3_SECRET_ACCESS_KEY`);
  const client = new S3Client({ endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId, secretAccessKey } });
  return {
    client,
    connection: S3_CONNECTION,
    secrets: [accessKeyId, secretAccessKey],
    async bucket(prefix) {
      const name = `${prefix}-${randomBytes(4).toString('hex')}`;
      await client.send(new CreateBucketCommand({ Bucket: name }));
      return name;
    },
    async put(bucket, key, body) {
      await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
    },
    async remove(bucket, key) {
      await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
    },
  };
}
