// The graphql-http server audits (GraphQL over HTTP conformance) against a real node.
// The goal is every audit `ok`: the test fails listing each error, warning or notice,
// and prints the whole list either way.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { serverAudits } from 'graphql-http';

import { withTimeout } from '../lib.mjs';
import { startServer } from '../server.mjs';

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

test('graphql-http: every server audit is ok (0 errors, 0 warnings)', { timeout: 120_000 }, async () => {
  const audits = serverAudits({ url: server.url });
  assert.ok(audits.length > 0, 'graphql-http has audits');
  const results = [];
  for (const audit of audits) {
    let result;
    try {
      result = await withTimeout(audit.fn(), 15_000, audit.name);
    } catch (error) {
      result = { id: audit.id, name: audit.name, status: 'error', reason: `the audit threw: ${error.message}` };
    }
    if (result.status !== 'ok' && result.response) {
      // What the server answered, to make the reason actionable.
      let body = '';
      try {
        body = await result.response.text();
      } catch {
        body = '(body already read)';
      }
      result.reason = `${result.reason} [HTTP ${result.response.status}, ${result.response.headers.get('content-type')}: ${body.slice(0, 300)}]`;
    }
    results.push(result);
  }
  const lines = results.map(({ id, name, status, reason }) => `${status.padEnd(6)} ${id} ${name}${reason ? ` — ${reason}` : ''}`);
  const counts = results.reduce((acc, { status }) => ({ ...acc, [status]: (acc[status] ?? 0) + 1 }), {});
  console.log(`graphql-http audits (${results.length}): ${JSON.stringify(counts)}`);
  for (const line of lines) console.log(`  ${line}`);
  const failing = results.filter(({ status }) => status !== 'ok');
  assert.equal(
    failing.length,
    0,
    `${failing.length} of ${results.length} audits are not ok:\n${failing
      .map(({ status, id, name, reason }) => `  ${status} ${id} ${name}: ${reason}`)
      .join('\n')}`,
  );
});
