/**
 * A TCP proxy a test controls: it forwards to a real server at a bounded rate (so a read is
 * still under way when the test acts) and can cut every connection and refuse new ones, the
 * way a server that goes away does.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { Transform } from 'node:stream';

export interface TcpProxy {
  endpoint: string;
  /** Destroys every open connection and refuses new ones until `open()`. */
  cut(): void;
  open(): void;
  close(): Promise<void>;
}

/** Forwards 127.0.0.1:<port> to `target` (host:port); server-to-client bytes at most `bytesPerSecond`. */
export async function startProxy(target: { host: string; port: number }, bytesPerSecond: number): Promise<TcpProxy> {
  const sockets = new Set<Socket>();
  let refusing = false;
  const server: Server = createServer((client) => {
    if (refusing) return client.destroy();
    const upstream = connect(target.port, target.host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(throttle(bytesPerSecond)).pipe(client);
  });
  await new Promise<void>((resolveListen) => server.listen(0, '127.0.0.1', resolveListen));
  const address = server.address();
  if (!address || typeof address === 'string') throw new Error('the proxy has no port');
  return {
    endpoint: `http://127.0.0.1:${address.port}`,
    cut() {
      refusing = true;
      for (const s of sockets) s.destroy();
    },
    open() {
      refusing = false;
    },
    close: () =>
      new Promise((resolveClose) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolveClose());
      }),
  };
}

/** Passes chunks on no faster than `bytesPerSecond`, in slices of a tenth of a second. */
function throttle(bytesPerSecond: number): Transform {
  const slice = Math.max(1, Math.floor(bytesPerSecond / 10));
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      const send = (offset: number): void => {
        if (offset >= chunk.length) return done();
        this.push(chunk.subarray(offset, offset + slice));
        setTimeout(() => send(offset + slice), 100);
      };
      send(0);
    },
  });
}
