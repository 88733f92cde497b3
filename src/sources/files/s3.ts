/**
 * Object storage (AWS S3 or any S3-compatible store) as a FilesStore, with the official AWS SDK v3.
 *
 * Listing walks ListObjectsV2 pages and yields objects as each page arrives, so a prefix of a
 * million objects is never in memory at once. An object's fingerprint is its ETag and size,
 * "s3:<etag>:<size>": no download, and any rewrite changes the ETag. Every read (whole-object
 * stream or byte range) asks for that ETag with If-Match, so a read of an object replaced since
 * it was listed fails with FileChangedError instead of loading content the fingerprint does
 * not name.
 *
 * Credentials come from `<NAME>_S3_*` variables (see config.ts) or the AWS chain; they live
 * only in the SDK client of this process, never in errors or results.
 */
import {
  GetBucketVersioningCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  ListObjectVersionsCommand,
  S3Client,
  S3ServiceException,
  type GetObjectCommandOutput,
  type ListObjectsV2CommandOutput,
  type ListObjectVersionsCommandOutput,
} from '@aws-sdk/client-s3';
import { Transform, type Readable } from 'node:stream';
import picomatch from 'picomatch';
import { resolveS3Connection } from '../../config';
import { errorMessage, PermanentError, TransientError } from '../../errors';
import type { ListedEntry, ListedFile, ListProgress } from './list';
import { FileChangedError, type FileRef, type FilesStore, type RandomAccessFile } from './store';

export interface S3Location {
  bucket: string;
  /** "" or a key prefix ending in "/". */
  prefix: string;
}

/** `s3://bucket/some/prefix` -> bucket and "some/prefix/": the URL names a folder, as `path` names a directory. */
export function parseS3Url(url: string): S3Location {
  const match = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(url);
  if (!match) throw new PermanentError(`source.url ${JSON.stringify(url)} is not an s3:// URL`, 'write it as s3://bucket/prefix/');
  const rest = match[2] ?? '';
  return { bucket: match[1]!, prefix: rest === '' || rest.endsWith('/') ? rest : `${rest}/` };
}

/** `s3:<etag>:<size>`, and `@<version id>` where the bucket keeps versions. */
export function s3Fingerprint(etag: string, size: number, versionId?: string): string {
  return `s3:${etag.replace(/^"|"$/g, '')}:${size}${versionId ? `@${versionId}` : ''}`;
}

/** The ETag (quoted, as If-Match wants it), size and version id a fingerprint names. */
function parseFingerprint(fingerprint: string): { etag: string; size: number; versionId?: string } {
  const match = /^s3:(.+?):(\d+)(?:@(.+))?$/.exec(fingerprint);
  if (!match) throw new PermanentError(`fingerprint ${JSON.stringify(fingerprint)} does not name an object-storage version`);
  return { etag: `"${match[1]}"`, size: Number(match[2]), ...(match[3] ? { versionId: match[3] } : {}) };
}

const clients = new Map<string, S3Client>();

/** One client per connection name and process: the SDK keeps a pool of sockets per client. */
function clientFor(connection: string | undefined): S3Client {
  const key = connection ?? '';
  let client = clients.get(key);
  if (!client) {
    const c = resolveS3Connection(connection);
    client = new S3Client({
      region: c.region,
      ...(c.endpoint ? { endpoint: c.endpoint } : {}),
      forcePathStyle: c.forcePathStyle,
      ...(c.credentials ? { credentials: c.credentials } : {}),
      // Activities retry with backoff; a couple of quick SDK retries smooth over a dropped socket.
      maxAttempts: 3,
    });
    clients.set(key, client);
  }
  return client;
}

/**
 * S3 failures the user must fix (no such bucket, access denied, bad credentials) become
 * permanent errors with a hint; throttling, 5xx and dropped connections stay retryable.
 */
export function mapS3Error(err: unknown, what: string, connection: string | undefined): Error {
  if (err instanceof PermanentError || err instanceof TransientError) return err;
  if ((err as { name?: string })?.name === 'AbortError') return err as Error;
  if ((err as { name?: string })?.name === 'CredentialsProviderError') {
    return new PermanentError(
      `${what}: no credentials (${errorMessage(err)})`,
      connection ? `set ${connection}_S3_ACCESS_KEY_ID and ${connection}_S3_SECRET_ACCESS_KEY on the worker` : 'set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile or role) on the worker, or name a connection',
    );
  }
  const status = err instanceof S3ServiceException ? err.$metadata?.httpStatusCode : undefined;
  const name = (err as { name?: string })?.name ?? 'Error';
  const message = `${what}: ${errorMessage(err)}${name !== 'Error' && !errorMessage(err).includes(name) ? ` (${name})` : ''}`;
  const credentials = connection ? `${connection}_S3_ACCESS_KEY_ID / ${connection}_S3_SECRET_ACCESS_KEY` : 'the AWS credentials (AWS_ACCESS_KEY_ID, ...)';
  if (status !== undefined && status >= 400 && status < 500 && status !== 408 && status !== 429) {
    const hint =
      name === 'NoSuchBucket'
        ? 'check the bucket in source.url'
        : name === 'NoSuchKey'
          ? 'the object disappeared after it was listed; it is listed again on the next run'
          : status === 403 || name === 'InvalidAccessKeyId' || name === 'SignatureDoesNotMatch'
            ? `check ${credentials} and that they may list and read the bucket`
            : undefined;
    return new PermanentError(message, hint);
  }
  return new TransientError(message, { cause: err });
}

export class S3Store implements FilesStore {
  private readonly where: S3Location;
  private versioning: Promise<boolean> | undefined;

  constructor(
    readonly location: string,
    private readonly connection: string | undefined,
  ) {
    this.where = parseS3Url(location);
  }

  private get client(): S3Client {
    return clientFor(this.connection);
  }

  async *list(pattern: string, onProgress?: (p: ListProgress) => void): AsyncIterable<ListedFile> {
    for await (const entry of this.entries(pattern, undefined, onProgress)) yield await entry.fingerprinted();
  }

  /** Keys come in S3's own order (UTF-8 bytes), and StartAfter resumes a listing there. */
  async *entries(pattern: string, after: string | undefined, onProgress?: (p: ListProgress) => void): AsyncIterable<ListedEntry> {
    if (await this.versioned()) {
      yield* this.versionEntries(pattern, after, onProgress);
      return;
    }
    const { bucket, prefix } = this.where;
    const isMatch = picomatch(pattern, { dot: false });
    // A pattern without "/" or "**" selects the top level only: a delimiter spares listing the rest.
    const topLevelOnly = !pattern.includes('/') && !pattern.includes('**');
    const progress: ListProgress = { files: 0, bytesHashed: 0 };
    let token: string | undefined;
    do {
      let page: ListObjectsV2CommandOutput;
      try {
        page = await this.client.send(
          new ListObjectsV2Command({
            Bucket: bucket,
            Prefix: prefix,
            ContinuationToken: token,
            ...(token === undefined && after !== undefined ? { StartAfter: prefix + after } : {}),
            ...(topLevelOnly ? { Delimiter: '/' } : {}),
          }),
        );
      } catch (err) {
        throw mapS3Error(err, `cannot list ${this.location}`, this.connection);
      }
      for (const object of page.Contents ?? []) {
        const entry = this.entryOf(object, isMatch, progress);
        if (entry) yield entry;
      }
      onProgress?.(progress);
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  private entryOf(
    object: { Key?: string; Size?: number; LastModified?: Date; ETag?: string; VersionId?: string },
    isMatch: (path: string) => boolean,
    progress: ListProgress,
  ): ListedEntry | undefined {
    const { prefix } = this.where;
    const key = object.Key;
    if (key === undefined || !key.startsWith(prefix) || key.endsWith('/')) return undefined;
    const path = key.slice(prefix.length);
    if (!isMatch(path)) return undefined;
    const size = object.Size ?? 0;
    progress.files++;
    const file: ListedFile = { path, size, mtimeMs: object.LastModified?.getTime() ?? 0, fingerprint: s3Fingerprint(object.ETag ?? '', size, object.VersionId) };
    return { path, size, mtimeMs: file.mtimeMs, fingerprinted: async () => file };
  }

  /** Versioning on (or suspended): objects are listed with their version ids. Not allowed to ask: listed by ETag alone. */
  private versioned(): Promise<boolean> {
    this.versioning ??= this.client.send(new GetBucketVersioningCommand({ Bucket: this.where.bucket })).then(
      (answer) => answer.Status === 'Enabled' || answer.Status === 'Suspended',
      (err: unknown) => {
        const status = err instanceof S3ServiceException ? err.$metadata?.httpStatusCode : undefined;
        if (status === 403 || status === 501) return false;
        this.versioning = undefined;
        throw mapS3Error(err, `cannot read the versioning of ${this.location}`, this.connection);
      },
    );
    return this.versioning;
  }

  /** The latest version of each key after `after`, in key order (ListObjectVersions' KeyMarker resumes like StartAfter). */
  private async *versionEntries(pattern: string, after: string | undefined, onProgress?: (p: ListProgress) => void): AsyncIterable<ListedEntry> {
    const { bucket, prefix } = this.where;
    const isMatch = picomatch(pattern, { dot: false });
    const topLevelOnly = !pattern.includes('/') && !pattern.includes('**');
    const progress: ListProgress = { files: 0, bytesHashed: 0 };
    let marker: { KeyMarker?: string; VersionIdMarker?: string } = after !== undefined ? { KeyMarker: prefix + after } : {};
    for (;;) {
      let page: ListObjectVersionsCommandOutput;
      try {
        page = await this.client.send(new ListObjectVersionsCommand({ Bucket: bucket, Prefix: prefix, ...marker, ...(topLevelOnly ? { Delimiter: '/' } : {}) }));
      } catch (err) {
        throw mapS3Error(err, `cannot list ${this.location}`, this.connection);
      }
      // A key whose latest version is a delete marker has no latest entry here: it is gone.
      for (const version of page.Versions ?? []) {
        if (!version.IsLatest) continue;
        const entry = this.entryOf(version, isMatch, progress);
        if (entry) yield entry;
      }
      onProgress?.(progress);
      if (!page.IsTruncated) return;
      marker = { KeyMarker: page.NextKeyMarker, ...(page.NextVersionIdMarker ? { VersionIdMarker: page.NextVersionIdMarker } : {}) };
    }
  }

  private async get(file: FileRef, range: string | undefined, signal: AbortSignal | undefined): Promise<GetObjectCommandOutput> {
    const { bucket, prefix } = this.where;
    const { etag, versionId } = parseFingerprint(file.fingerprint);
    try {
      // A listed version id reads exactly that version, whatever was written since.
      return await this.client.send(new GetObjectCommand({ Bucket: bucket, Key: prefix + file.path, IfMatch: etag, Range: range, ...(versionId ? { VersionId: versionId } : {}) }), {
        abortSignal: signal,
      });
    } catch (err) {
      const status = err instanceof S3ServiceException ? err.$metadata?.httpStatusCode : undefined;
      if (status === 412) throw new FileChangedError(file.path, file.fingerprint, 'an object with another ETag');
      throw mapS3Error(err, `cannot read ${this.location}${file.path}`, this.connection);
    }
  }

  async open(file: FileRef, options: { signal?: AbortSignal }): Promise<Readable> {
    const response = await this.get(file, undefined, options.signal);
    const body = response.Body as Readable | undefined;
    if (!body) throw new TransientError(`cannot read ${this.location}${file.path}: the store sent no body`);
    const expected = response.ContentLength ?? parseFingerprint(file.fingerprint).size;
    let received = 0;
    const label = `${this.location}${file.path}`;
    // A connection dropped mid-object must retry the object, never end it early: count the bytes.
    const checked = new Transform({
      transform(chunk: Buffer, _encoding, done) {
        received += chunk.length;
        done(null, chunk);
      },
      flush(done) {
        done(received === expected ? null : new TransientError(`reading ${label} stopped after ${received} of ${expected} bytes`));
      },
    });
    body.on('error', (err) => checked.destroy(options.signal?.aborted ? err : new TransientError(`reading ${label} failed after ${received} of ${expected} bytes: ${errorMessage(err)}`, { cause: err })));
    checked.on('close', () => body.destroy());
    return body.pipe(checked);
  }

  async openRandomAccess(file: FileRef, options: { signal?: AbortSignal }): Promise<RandomAccessFile> {
    const { size } = parseFingerprint(file.fingerprint);
    return {
      size,
      read: async (start, end) => {
        if (end <= start) return new Uint8Array(0);
        const response = await this.get(file, `bytes=${start}-${end - 1}`, options.signal);
        let bytes: Uint8Array;
        try {
          bytes = await response.Body!.transformToByteArray();
        } catch (err) {
          throw new TransientError(`reading bytes ${start}-${end - 1} of ${this.location}${file.path} failed: ${errorMessage(err)}`, { cause: err });
        }
        if (bytes.length !== end - start) {
          throw new TransientError(`reading bytes ${start}-${end - 1} of ${this.location}${file.path} returned ${bytes.length} bytes`);
        }
        return bytes;
      },
      close: async () => undefined,
    };
  }
}
