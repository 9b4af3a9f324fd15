// Spawns real `emporium serve` processes for the client tests, black-box: a free loopback
// port, a fresh temp DATA_DIR, and — when DATABASE_URL / REDIS_URL are set — a fresh
// Postgres database and a unique REDIS_PREFIX per run. Every node is killed at the end,
// even when a test fails or the test process dies of an error or a signal.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.EMPORIUM_BIN || resolve(here, '../target/debug/emporium');
const READY_TIMEOUT_MS = 60_000;
const STOP_GRACE_MS = 5_000;

/** Cluster mode: both a Postgres database and Redis are configured. */
export const clusterMode = Boolean(process.env.DATABASE_URL && process.env.REDIS_URL);

// Every child still running, so that an exit, an uncaught error or a signal kills it.
const running = new Set();
function killAll() {
  for (const child of running) {
    try {
      child.kill('SIGKILL');
    } catch {}
  }
  running.clear();
}
process.on('exit', killAll);
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(signal, () => {
    killAll();
    process.exit(128 + ({ SIGINT: 2, SIGTERM: 15, SIGHUP: 1 })[signal]);
  });
}

export function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A fresh Postgres database next to the one DATABASE_URL names; returns its URL and a dropper. */
async function freshDatabase(baseUrl) {
  const { default: pg } = await import('pg');
  const name = `emporium_clients_${randomBytes(8).toString('hex')}`;
  const admin = new pg.Client({ connectionString: baseUrl, connectionTimeoutMillis: 5_000, query_timeout: 15_000 });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE "${name}"`);
  } finally {
    await admin.end().catch(() => {});
  }
  const url = new URL(baseUrl);
  url.pathname = `/${name}`;
  const drop = async () => {
    const client = new pg.Client({ connectionString: baseUrl, connectionTimeoutMillis: 5_000, query_timeout: 15_000 });
    try {
      await client.connect();
      await client.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
    } catch (error) {
      console.error(`# could not drop ${name}: ${error.message}`);
    } finally {
      await client.end().catch(() => {});
    }
  };
  return { url: url.toString(), name, drop };
}

/** The environment every node of one deployment shares. */
function baseEnv(deployment) {
  const env = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: process.env.HOME ?? '/tmp',
    DATA_DIR: join(deployment.dir, 'data'),
    OBJECT_STORE_URL: `file://${join(deployment.dir, 'objects')}`,
    JOB_POLL_INTERVAL: '50ms',
    SHUTDOWN_GRACE: '1s',
    RUST_LOG: process.env.TEST_LOG || 'warn',
    // Several nodes may share one test Postgres: keep each pool small.
    DATABASE_MAX_CONNECTIONS: '6',
  };
  if (deployment.databaseUrl) env.DATABASE_URL = deployment.databaseUrl;
  if (deployment.redisUrl) {
    env.REDIS_URL = deployment.redisUrl;
    env.REDIS_PREFIX = deployment.redisPrefix;
  }
  return env;
}

/** Starts one node on a free port and waits until GET /health answers 200. */
async function startNode(deployment, index, extraEnv) {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const env = { ...baseEnv(deployment), LISTEN: `127.0.0.1:${port}`, NODE_ID: `clients-node${index}`, ...extraEnv };
    const child = spawn(BIN, ['serve'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(child);
    let log = '';
    const keep = (chunk) => {
      log = (log + chunk.toString()).slice(-20_000);
      if (process.env.TEST_LOG) process.stderr.write(`[node${index}] ${chunk}`);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
    child.once('error', (error) => keep(`spawn error: ${error.message}\n`));
    exited.then(() => running.delete(child));

    const base = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + READY_TIMEOUT_MS;
    let lastStatus = 'no answer';
    let outcome = null;
    while (Date.now() < deadline && !outcome) {
      const done = await Promise.race([exited, sleep(0).then(() => null)]);
      if (done) {
        outcome = { exited: done };
        break;
      }
      try {
        const response = await fetch(`${base}/health`, { signal: AbortSignal.timeout(2_000) });
        lastStatus = `${response.status} ${(await response.text()).slice(0, 500)}`;
        if (response.status === 200) outcome = { ready: true };
      } catch (error) {
        lastStatus = error.cause?.code ?? error.message;
      }
      if (!outcome) await sleep(100);
    }
    if (outcome?.ready) {
      return {
        index,
        port,
        base,
        url: `${base}/graphql`,
        wsUrl: `ws://127.0.0.1:${port}/graphql/ws`,
        child,
        exited,
        log: () => log,
      };
    }
    if (outcome?.exited) {
      if (attempt < 3 && /address already in use|AddrInUse/i.test(log)) continue; // the port was taken meanwhile
      throw new Error(
        `emporium (${BIN}) exited before it was ready (code ${outcome.exited.code}, signal ${outcome.exited.signal}):\n${log}`,
      );
    }
    await stopNode({ child, exited });
    throw new Error(`emporium on ${base} was not healthy within ${READY_TIMEOUT_MS} ms (last: ${lastStatus}):\n${log}`);
  }
}

/** SIGTERM, then SIGKILL after a grace period; resolves when the process is gone. */
async function stopNode(node) {
  if (node.child.exitCode !== null || node.child.signalCode !== null) return;
  node.child.kill('SIGTERM');
  const gone = await Promise.race([node.exited.then(() => true), sleep(STOP_GRACE_MS).then(() => false)]);
  if (!gone) {
    node.child.kill('SIGKILL');
    await Promise.race([node.exited, sleep(STOP_GRACE_MS)]);
  }
  running.delete(node.child);
}

/**
 * Starts `count` nodes of one deployment (they share the database, Redis prefix and
 * object store). More than one node needs cluster mode (DATABASE_URL and REDIS_URL).
 * Returns `{ nodes: [{ url, wsUrl, base }], stop() }`.
 */
export async function startNodes(count = 1, { env: extraEnv = {} } = {}) {
  if (count > 1 && !clusterMode) throw new Error('several nodes need DATABASE_URL and REDIS_URL (cluster mode)');
  const dir = mkdtempSync(join(tmpdir(), 'emporium-clients-'));
  const deployment = { dir, databaseUrl: null, redisUrl: null, redisPrefix: null, dropDatabase: null };
  const nodes = [];
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await Promise.all(nodes.map(stopNode));
    if (deployment.dropDatabase) await deployment.dropDatabase();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    if (process.env.DATABASE_URL) {
      const database = await freshDatabase(process.env.DATABASE_URL);
      deployment.databaseUrl = database.url;
      deployment.dropDatabase = database.drop;
    }
    if (process.env.REDIS_URL) {
      deployment.redisUrl = process.env.REDIS_URL;
      deployment.redisPrefix = `emporium-clients-${randomBytes(8).toString('hex')}`;
    }
    // One at a time: the first node migrates the database.
    for (let i = 0; i < count; i++) nodes.push(await startNode(deployment, i + 1, extraEnv));
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    nodes: nodes.map(({ url, wsUrl, base, log }) => ({ url, wsUrl, base, log })),
    mode: deployment.databaseUrl ? 'postgres' : 'embedded',
    stop,
  };
}

/** One node: `{ url, wsUrl, base, stop() }`. */
export async function startServer(options) {
  const { nodes, stop, mode } = await startNodes(1, options);
  return { ...nodes[0], mode, stop };
}
