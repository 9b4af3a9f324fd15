// GraphiQL in a real browser: Debian's Chromium, headless, driven by playwright-core,
// against a spawned node. The page at `GET /graphql` renders with its example query; a
// typed query runs and its result shows; the docs explorer finds `Product`; a subscription
// started from the page shows the `intakeProcessed` event of a message posted to
// `/v1/intake`. Every request the page makes (scripts, workers, fetches, the WebSocket)
// must go to the node's own origin, and no page error or console error may happen.
//
// The screenshot `docs/graphiql.png` is rewritten only with UPDATE_SCREENSHOT=1 (otherwise
// it goes to a temp file, so CI leaves the tree clean). Without a Chromium the test is
// skipped, except under CI, where that is a failure. CHROMIUM overrides the executable.
import assert from 'node:assert/strict';
import { existsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { createProducts, unique, withTimeout } from '../lib.mjs';
import { startServer } from '../server.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const haveChromium = existsSync(CHROMIUM);
const inCI = Boolean(process.env.CI);
const skip = !haveChromium && !inCI ? `no Chromium at ${CHROMIUM} (install it: apt-get install chromium, or set CHROMIUM)` : false;

const here = dirname(fileURLToPath(import.meta.url));
const SCREENSHOT = resolve(here, '../../docs/graphiql.png');
const VIEWPORT = { width: 1400, height: 900 };
const EVENT_TIMEOUT_MS = 20_000;
const STEP_TIMEOUT_MS = 20_000;

let server;
let browser;
before(async () => {
  if (skip) return;
  if (!haveChromium) throw new Error(`CI is set but there is no Chromium at ${CHROMIUM}: install it (apt-get install chromium)`);
  server = await startServer();
  const { chromium } = await import('playwright-core');
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'], timeout: 30_000 });
});
after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop();
});

/** Monaco draws spaces as U+00A0; its text, with spaces, as shown on screen. */
const screenText = (text) => text.replace(/\u00a0/g, ' ');
/** Whitespace-insensitive form, to compare a typed query with what the editor holds. */
const squash = (text) => screenText(text).replace(/\s+/g, '');

/** Polls `read()` until `ok(value)`; fails after `ms` with `what` and the last value. */
async function waitFor(read, ok, ms, what) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await read();
      if (ok(last)) return last;
    } catch (error) {
      last = `(error: ${error.message})`;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}; last seen: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('GraphiQL in headless Chromium: render, query, docs, subscription, same origin only', { skip, timeout: 90_000 }, async (t) => {
  const origin = new URL(server.base).origin; // http://127.0.0.1:PORT
  const wsOrigin = origin.replace(/^http:/, 'ws:');
  const context = await browser.newContext({ viewport: VIEWPORT });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);

  // Everything the page does, recorded: requests (documents, scripts, workers, fetches),
  // WebSockets, bad answers, page errors and console errors.
  const requests = [];
  const sockets = [];
  const frames = []; // graphql-ws messages both ways, for the failure messages
  const problems = [];
  context.on('request', (request) => requests.push(request.url()));
  context.on('requestfailed', (request) => problems.push(`request failed: ${request.method()} ${request.url()}: ${request.failure()?.errorText}`));
  context.on('response', (response) => {
    if (response.status() >= 400) problems.push(`HTTP ${response.status()} for ${response.request().method()} ${response.url()}`);
  });
  page.on('pageerror', (error) => problems.push(`page error: ${error.stack || error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console error: ${message.text()}`);
  });
  let subscribed; // resolves once the page has sent a graphql-ws `subscribe` and got the ack
  const subscribeSent = new Promise((r) => (subscribed = r));
  page.on('websocket', (socket) => {
    sockets.push(socket.url());
    let acked = false;
    let subscribing = false;
    socket.on('framereceived', ({ payload }) => {
      frames.push(`<- ${payload}`);
      if (String(payload).includes('"connection_ack"')) acked = true;
      if (acked && subscribing) subscribed();
    });
    socket.on('framesent', ({ payload }) => {
      frames.push(`-> ${payload}`);
      if (String(payload).includes('"subscribe"')) subscribing = true;
      if (acked && subscribing) subscribed();
    });
  });

  /** Each request went to the node itself; nothing went wrong in the page. */
  const assertClean = (when) => {
    const foreign = requests.filter((url) => new URL(url).origin !== origin);
    const foreignSockets = sockets.filter((url) => !url.startsWith(`${wsOrigin}/`));
    assert.deepEqual(foreign, [], `${when}: requests to another origin than ${origin}`);
    assert.deepEqual(foreignSockets, [], `${when}: WebSockets to another origin than ${wsOrigin}`);
    assert.deepEqual(problems, [], `${when}: problems in the page`);
  };

  const queryEditor = page.locator('.graphiql-query-editor .monaco-editor').first();
  const resultPane = page.locator('.graphiql-response .result-window');
  const executeButton = page.locator('button.graphiql-execute-button');
  const editorText = async () => screenText(await queryEditor.locator('.view-lines').innerText());
  const resultText = async () => screenText(await resultPane.locator('.view-lines').innerText());

  /** Replaces the operation with `query` as a user does: click into it, Ctrl+A, enter the text. */
  const typeQuery = async (query) => {
    await queryEditor.locator('.view-lines').click();
    await page.keyboard.press('Control+A');
    await page.keyboard.press('Delete');
    await waitFor(editorText, (text) => squash(text) === '', 5_000, 'the operation editor to be empty');
    // insertText, not type(): Monaco's bracket auto-closing and completion popup react to
    // key strokes, and would turn a typed `{ a }` into `{ a }}` now and then.
    await page.keyboard.insertText(query);
    await waitFor(editorText, (text) => squash(text) === squash(query), 5_000, `the operation editor to hold ${query}`);
    // GraphiQL re-parses the operation 100 ms after the last edit (debounced), and picks
    // HTTP or graphql-ws from that parse: run before it, and a fresh `subscription` goes
    // over HTTP (which the server refuses). The same callback stores the text under
    // `graphiql:query`, so once that holds the new text the parse is done.
    await page.waitForFunction((text) => localStorage.getItem('graphiql:query') === text, query, { timeout: 5_000 });
  };

  let failed = null;
  const step = (name, fn, timeout = STEP_TIMEOUT_MS + 10_000) =>
    t.test(name, { timeout }, async (s) => {
      if (failed) return s.skip(`an earlier step failed: ${failed}`);
      try {
        await fn();
        assertClean(name);
      } catch (error) {
        failed = name;
        throw error;
      }
    });

  try {
    const tag = unique();
    // Each run has a fresh data directory (or database): fixed names keep the screenshot stable.
    const names = ['Desk lamp', 'Espresso kettle'];

    await step('1. GET /graphql as a browser: GraphiQL renders with the example query', async () => {
      const response = await page.goto(server.url, { waitUntil: 'load' });
      assert.equal(response.status(), 200, `GET ${response.url()}`);
      assert.match(response.headers()['content-type'] ?? '', /^text\/html/);
      await executeButton.waitFor({ state: 'visible' });
      await queryEditor.waitFor({ state: 'visible' });
      await waitFor(editorText, (text) => text.includes('query ProductsWithOffers'), STEP_TIMEOUT_MS, 'the example query in the editor');
      assert.match(await editorText(), /Welcome to Emporium/);
    });

    await step('2. a typed query runs and its result shows', async () => {
      await createProducts(server.url, names);
      await typeQuery('query Products { products(first: 2) { totalCount nodes { id name } } }');
      // Prettify (as a user would before a screenshot), then run with the button.
      await page.locator('button[aria-label^="Prettify"]').click();
      await waitFor(editorText, (text) => text.split('\n').length > 3, 5_000, 'the prettified operation');
      await executeButton.click();
      const text = await waitFor(resultText, (value) => names.every((name) => value.includes(name)), STEP_TIMEOUT_MS, `${names} in the result pane`);
      assert.match(text, /"data"/);
      assert.doesNotMatch(text, /"errors"/);

      const path = process.env.UPDATE_SCREENSHOT === '1' ? SCREENSHOT : join(tmpdir(), `emporium-graphiql-${process.pid}.png`);
      // A blinking caret or a hover tooltip would make the picture differ from run to run.
      await page.mouse.move(0, VIEWPORT.height - 1);
      await page.locator('body').evaluate(() => document.activeElement?.blur());
      await page.waitForTimeout(300);
      writeFileSync(path, await page.screenshot({ type: 'png' }));
      t.diagnostic(`screenshot: ${path}`);
    });

    await step('3. the docs explorer shows Product', async () => {
      await page.locator('button[aria-label="Show Documentation Explorer"]').click();
      const docs = page.locator('.graphiql-doc-explorer');
      await docs.waitFor({ state: 'visible' });
      const title = docs.locator('.graphiql-doc-explorer-title');
      await docs.getByRole('link', { name: 'Query', exact: true }).first().click();
      await waitFor(() => title.innerText(), (text) => text.trim() === 'Query', STEP_TIMEOUT_MS, 'the docs of the Query type');
      // Query.product(id: ID!): Product — then on to the Product type itself.
      const productField = docs
        .locator('.graphiql-doc-explorer-item')
        .filter({ has: page.locator('a.graphiql-doc-explorer-field-name', { hasText: /^product$/ }) });
      const productType = productField.locator('a.graphiql-doc-explorer-type-name', { hasText: /^Product$/ });
      await productType.waitFor({ state: 'visible' });
      await productType.click();
      await waitFor(() => title.innerText(), (text) => text.trim() === 'Product', STEP_TIMEOUT_MS, 'the docs of the Product type');
      await waitFor(() => docs.innerText(), (text) => /\bname: String!/.test(text), STEP_TIMEOUT_MS, 'the fields of Product');
    });

    await step('4. a subscription started in the page shows an intakeProcessed event', async () => {
      await typeQuery('subscription { intakeProcessed { title genre } }');
      await page.keyboard.press('Control+Enter'); // the focus is still in the editor
      await withTimeout(subscribeSent, 10_000, 'the page subscribing over graphql-ws').catch(async (error) => {
        throw new Error(`${error.message}; WebSockets: ${JSON.stringify(sockets)}, frames: ${JSON.stringify(frames)}, result pane: ${JSON.stringify(await resultText().catch(() => null))}`);
      });
      // The server registers the subscription right after `subscribe` arrives.
      await new Promise((r) => setTimeout(r, 300));
      const title = `browser-${tag}`;
      const response = await fetch(`${server.base}/v1/intake`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ title, genre: 'scifi' }),
        signal: AbortSignal.timeout(10_000),
      });
      assert.equal(response.status, 202, `POST /v1/intake: ${response.status} ${await response.text()}`);
      const text = await waitFor(resultText, (value) => value.includes(title), EVENT_TIMEOUT_MS, `"${title}" in the result pane`);
      assert.match(text, /"scifi"/);
      assert.ok(sockets.length > 0, 'the subscription went over a WebSocket');
    }, EVENT_TIMEOUT_MS + 25_000);

    assertClean('the end');
    assert.ok(requests.length > 5, `the page loaded its assets (${requests.length} requests)`);
  } finally {
    await context.close().catch(() => {});
  }
});
