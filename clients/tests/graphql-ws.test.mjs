// graphql-ws (with `ws`) against a real node: an `intakeProcessed` subscription receives
// the notice for a message posted to `POST /v1/intake`.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

import { unique, withTimeout } from '../lib.mjs';
import { startServer } from '../server.mjs';

const EVENT_TIMEOUT_MS = 20_000;

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

test('graphql-ws: intakeProcessed delivers the notice of a message posted to /v1/intake', { timeout: 45_000 }, async () => {
  let connected;
  const isConnected = new Promise((resolve) => (connected = resolve));
  const client = createClient({
    url: server.wsUrl,
    webSocketImpl: WebSocket,
    retryAttempts: 0,
    lazy: false,
    connectionAckWaitTimeout: 10_000,
    on: { connected: () => connected() },
  });
  const title = `ws-${unique()}`;
  const events = [];
  let received;
  const arrived = new Promise((resolve, reject) => {
    received = { resolve, reject };
  });
  let unsubscribe = () => {};
  try {
    unsubscribe = client.subscribe(
      { query: 'subscription($genre: String) { intakeProcessed(genre: $genre) { id intakeMessageId title genre bucket key storedAt } }', variables: { genre: 'scifi' } },
      {
        next: (message) => {
          events.push(message);
          if (message.errors) received.reject(new Error(`subscription errors: ${JSON.stringify(message.errors)}`));
          else if (message.data?.intakeProcessed?.title === title) received.resolve(message.data.intakeProcessed);
        },
        error: (error) => received.reject(error instanceof Error ? error : new Error(`subscription failed: ${JSON.stringify(error?.reason ?? error)}`)),
        complete: () => received.reject(new Error('the subscription completed before the event')),
      },
    );
    await withTimeout(isConnected, 10_000, 'graphql-ws connection_ack');
    // The server registers the subscription right after `subscribe` arrives; give it a
    // moment on loopback before the message it should see is posted.
    await new Promise((resolve) => setTimeout(resolve, 300));

    const response = await fetch(`${server.base}/v1/intake`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ title, genre: 'scifi' }),
      signal: AbortSignal.timeout(10_000),
    });
    const body = await response.text();
    assert.equal(response.status, 202, `POST /v1/intake: ${response.status} ${body}`);

    const notice = await withTimeout(arrived, EVENT_TIMEOUT_MS, `the intakeProcessed event for "${title}" (events so far: ${JSON.stringify(events)})`);
    assert.equal(notice.title, title);
    assert.equal(notice.genre, 'scifi');
    assert.equal(notice.key, `${title}.json`);
    assert.ok(notice.bucket, 'the notice names the bucket');
    assert.ok(JSON.parse(body).node_ids.includes(notice.intakeMessageId), 'the notice names the message POST answered');
  } finally {
    unsubscribe();
    await withTimeout(client.dispose(), 5_000, 'closing the graphql-ws client').catch(() => {});
  }
});
