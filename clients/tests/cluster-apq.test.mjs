// Two nodes on one Postgres database and one Redis prefix: a persisted query registered
// on node A is a hash-only hit on node B. Only in cluster mode (DATABASE_URL + REDIS_URL).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { errorCodes, post, sha256, unique } from '../lib.mjs';
import { clusterMode, startNodes } from '../server.mjs';

const skip = clusterMode ? false : 'cluster mode only: set DATABASE_URL and REDIS_URL to run it';

let cluster;
before(async () => {
  if (!skip) cluster = await startNodes(2);
});
after(async () => {
  await cluster?.stop();
});

test('APQ: a query registered on node A is a hash-only hit on node B', { skip, timeout: 60_000 }, async () => {
  const [a, b] = cluster.nodes;
  const query = `query ClusterApq_${unique()} { products(first: 1) { totalCount } }`;
  const persistedQuery = { version: 1, sha256Hash: sha256(query) };

  // Unknown on B first: hash only is a miss there.
  const missOnB = await post(b.url, { extensions: { persistedQuery } });
  assert.ok(
    errorCodes(missOnB.body).includes('PERSISTED_QUERY_NOT_FOUND'),
    `an unknown hash is PERSISTED_QUERY_NOT_FOUND on node B; got ${missOnB.status} ${JSON.stringify(missOnB.body)}`,
  );

  // Registered on A: hash and query.
  const registered = await post(a.url, { query, extensions: { persistedQuery } });
  assert.equal(registered.status, 200, JSON.stringify(registered.body));
  assert.equal(registered.body.errors, undefined, `registration on A: ${JSON.stringify(registered.body)}`);
  assert.equal(typeof registered.body.data?.products?.totalCount, 'number');

  // Hash only on B: a hit, the same answer.
  const hitOnB = await post(b.url, { extensions: { persistedQuery } });
  assert.equal(hitOnB.status, 200, JSON.stringify(hitOnB.body));
  assert.equal(hitOnB.body.errors, undefined, `hash-only on B: ${JSON.stringify(hitOnB.body)}`);
  assert.deepEqual(hitOnB.body.data, registered.body.data);
});

test('APQ: a query sent with a hash that is not its own is refused and not shared', { skip, timeout: 60_000 }, async () => {
  const [a, b] = cluster.nodes;
  const query = `query ClusterApqPoison_${unique()} { products(first: 1) { totalCount } }`;
  const other = `query ClusterApqOther_${unique()} { jobCounts { queued } }`;
  const persistedQuery = { version: 1, sha256Hash: sha256(other) };

  const mismatch = await post(a.url, { query, extensions: { persistedQuery } });
  assert.ok(mismatch.body.errors?.length > 0, `a hash that does not match the query is refused; got ${mismatch.status} ${JSON.stringify(mismatch.body)}`);

  const onB = await post(b.url, { extensions: { persistedQuery } });
  assert.ok(
    errorCodes(onB.body).includes('PERSISTED_QUERY_NOT_FOUND'),
    `the mismatched pair was not registered; node B answers ${onB.status} ${JSON.stringify(onB.body)}`,
  );
});
