// Apollo Client 4 against a real node: Relay pagination in InMemoryCache, a cache update
// without refetch, automatic persisted queries (POST and GET), and HTTP batching.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { ApolloClient, ApolloLink, HttpLink, InMemoryCache, gql } from '@apollo/client';
import { BatchHttpLink } from '@apollo/client/link/batch-http';
import { createPersistedQueryLink } from '@apollo/client/link/persisted-queries';
import { relayStylePagination } from '@apollo/client/utilities';

import { createProducts, errorCodes, recordingFetch, sent, sha256, unique, withTimeout } from '../lib.mjs';
import { startServer } from '../server.mjs';

const PRODUCTS = gql`
  query Products($first: Int, $after: String) {
    products(first: $first, after: $after) {
      edges {
        cursor
        node {
          id
          name
        }
      }
      pageInfo {
        hasNextPage
        endCursor
      }
    }
  }
`;

const CREATE_PRODUCT = gql`
  mutation CreateProduct($input: CreateProductInput!) {
    createProduct(input: $input) {
      id
      name
    }
  }
`;

const NEW_PRODUCT = gql`
  fragment NewProduct on Product {
    id
    name
  }
`;

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

const names = (connection) => connection.edges.map((edge) => edge.node.name);
const PQ_NOT_FOUND = (response) =>
  errorCodes(response).some((code) => code === 'PERSISTED_QUERY_NOT_FOUND' || code === 'PersistedQueryNotFound');

/**
 * Subscribes to a watched query; `until(predicate, what)` resolves with the first
 * settled (not loading) result, past or future, that satisfies `predicate`.
 */
function watch(observable) {
  const results = [];
  const waiters = [];
  let failure = null;
  const check = () => {
    for (const waiter of [...waiters]) {
      const found = results.find(waiter.predicate);
      if (found || failure) {
        waiters.splice(waiters.indexOf(waiter), 1);
        failure ? waiter.reject(failure) : waiter.resolve(found);
      }
    }
  };
  const subscription = observable.subscribe({
    next: (result) => {
      if (!result.loading) results.push(result);
      check();
    },
    error: (error) => {
      failure = error;
      check();
    },
  });
  const until = (predicate, what) =>
    withTimeout(
      new Promise((resolve, reject) => {
        waiters.push({ predicate, resolve, reject });
        check();
      }),
      15_000,
      what,
    );
  return { until, unsubscribe: () => subscription.unsubscribe() };
}

/** A query's outcome without throwing: `{ data }` or `{ error }` (bounded in time). */
const settle = (promise, what) =>
  withTimeout(
    promise.then(
      (result) => result,
      (error) => ({ error }),
    ),
    15_000,
    what,
  );

describe('Apollo Client 4', () => {
  test('relayStylePagination merges fetchMore pages; a mutation updates the list without refetch', { timeout: 60_000 }, async () => {
    const tag = unique();
    const created = await createProducts(server.url, [`apollo-${tag}-1`, `apollo-${tag}-2`, `apollo-${tag}-3`]);
    const fetch = recordingFetch();
    const client = new ApolloClient({
      link: new HttpLink({ uri: server.url, fetch }),
      cache: new InMemoryCache({ typePolicies: { Query: { fields: { products: relayStylePagination() } } } }),
    });
    try {
      const observable = client.watchQuery({ query: PRODUCTS, variables: { first: 2 } });
      const watched = watch(observable);
      try {
        const page1 = await watched.until(() => true, 'the first page of products');
        assert.equal(page1.error, undefined, `page 1 failed: ${page1.error}`);
        assert.deepEqual(names(page1.data.products), created.slice(0, 2).map((p) => p.name));
        assert.equal(page1.data.products.pageInfo.hasNextPage, true);
        const endCursor = page1.data.products.pageInfo.endCursor;
        assert.ok(endCursor, 'page 1 has an endCursor');

        const page2 = await withTimeout(observable.fetchMore({ variables: { after: endCursor } }), 15_000, 'fetchMore');
        assert.deepEqual(names(page2.data.products), [created[2].name], 'page 2 alone is the third product');
        assert.equal(page2.data.products.pageInfo.hasNextPage, false);
        assert.equal(fetch.calls.length, 2, 'one request per page');
        assert.equal(sent(fetch.calls[1]).variables.after, endCursor);

        const merged = client.readQuery({ query: PRODUCTS, variables: { first: 2 } });
        assert.deepEqual(names(merged.products), created.map((p) => p.name), 'the cache holds both pages, merged');
        assert.equal(merged.products.pageInfo.hasNextPage, false);
        const watchedMerged = await watched.until(
          (result) => result.data?.products?.edges?.length === 3,
          'the watched query to show the merged pages',
        );
        assert.deepEqual(names(watchedMerged.data.products), created.map((p) => p.name));

        // A mutation whose update appends the new product to the cached connection.
        const newName = `apollo-${tag}-new`;
        const requestsBefore = fetch.calls.length;
        const mutation = await withTimeout(
          client.mutate({
            mutation: CREATE_PRODUCT,
            variables: { input: { name: newName } },
            update(cache, { data }) {
              const node = cache.writeFragment({ fragment: NEW_PRODUCT, data: data.createProduct });
              cache.modify({
                fields: {
                  products(existing) {
                    const edges = existing?.edges ?? [];
                    return { ...existing, edges: [...edges, { __typename: 'ProductEdge', cursor: '', node }] };
                  },
                },
              });
            },
          }),
          15_000,
          'createProduct mutation',
        );
        assert.equal(mutation.data.createProduct.name, newName);
        const fromCache = await withTimeout(
          client.query({ query: PRODUCTS, variables: { first: 2 }, fetchPolicy: 'cache-only' }),
          5_000,
          'cache-only read',
        );
        assert.deepEqual(names(fromCache.data.products), [...created.map((p) => p.name), newName]);
        assert.equal(fetch.calls.length, requestsBefore + 1, 'only the mutation went to the server (no refetch)');
        assert.ok(sent(fetch.calls.at(-1)).query.includes('createProduct'));
      } finally {
        watched.unsubscribe();
      }
    } finally {
      client.stop();
    }
  });

  test('persisted queries over POST: hash-only miss, retry with the query, then a hash-only hit', { timeout: 30_000 }, async () => {
    const fetch = recordingFetch();
    const client = new ApolloClient({
      link: ApolloLink.from([createPersistedQueryLink({ sha256 }), new HttpLink({ uri: server.url, fetch })]),
      cache: new InMemoryCache(),
    });
    // A query text no other test sends, so the server cannot know its hash yet.
    const query = gql`
      query ApqPost_${unique()} {
        products(first: 1) {
          totalCount
        }
      }
    `;
    try {
      const first = await settle(client.query({ query, fetchPolicy: 'network-only' }), 'first APQ query');
      assert.ok(fetch.calls.length >= 1);
      assert.equal(sent(fetch.calls[0]).query, undefined, 'the first request carries only the hash');
      assert.ok(
        PQ_NOT_FOUND(fetch.calls[0].response),
        `the server answers PERSISTED_QUERY_NOT_FOUND; got ${fetch.calls[0].status} ${JSON.stringify(fetch.calls[0].response)}`,
      );
      assert.equal(first.error, undefined, `the query succeeds: ${first.error}`);
      assert.equal(typeof first.data.products.totalCount, 'number');
      assert.equal(fetch.calls.length, 2, `a miss then a retry; got ${JSON.stringify(fetch.calls, null, 1)}`);
      const [miss, retry] = fetch.calls;
      assert.equal(miss.method, 'POST');
      assert.equal(sent(miss).query, undefined, 'the first request carries only the hash');
      const hash = sent(miss).extensions?.persistedQuery?.sha256Hash;
      assert.match(hash ?? '', /^[0-9a-f]{64}$/);
      assert.ok(PQ_NOT_FOUND(miss.response), `the server answers PERSISTED_QUERY_NOT_FOUND; got ${miss.status} ${JSON.stringify(miss.response)}`);
      assert.equal(retry.method, 'POST');
      assert.equal(typeof sent(retry).query, 'string', 'the retry carries the full query');
      assert.equal(sent(retry).extensions?.persistedQuery?.sha256Hash, hash);
      assert.equal(sha256(sent(retry).query), hash, 'the hash is the SHA-256 of the query text sent');
      assert.equal(retry.response?.errors, undefined);

      const second = await settle(client.query({ query, fetchPolicy: 'network-only' }), 'second APQ query');
      assert.equal(fetch.calls.length, 3, `the next identical operation is one request; got ${JSON.stringify(fetch.calls.slice(2), null, 1)}`);
      const hit = fetch.calls[2];
      assert.equal(sent(hit).query, undefined, 'hash only');
      assert.equal(sent(hit).extensions?.persistedQuery?.sha256Hash, hash);
      assert.equal(hit.status, 200);
      assert.equal(hit.response?.errors, undefined, `a hit; got ${JSON.stringify(hit.response)}`);
      assert.equal(typeof hit.response?.data?.products?.totalCount, 'number');
      assert.equal(second.error, undefined);
      assert.equal(second.data.products.totalCount, first.data.products.totalCount);
    } finally {
      client.stop();
    }
  });

  test('persisted queries with useGETForHashedQueries: a hash-only GET hit', { timeout: 30_000 }, async () => {
    const fetch = recordingFetch();
    const client = new ApolloClient({
      link: ApolloLink.from([
        createPersistedQueryLink({ sha256, useGETForHashedQueries: true }),
        new HttpLink({ uri: server.url, fetch }),
      ]),
      cache: new InMemoryCache(),
    });
    const query = gql`
      query ApqGet_${unique()}($first: Int) {
        products(first: $first) {
          totalCount
        }
      }
    `;
    try {
      const first = await settle(client.query({ query, variables: { first: 1 }, fetchPolicy: 'network-only' }), 'first query');
      assert.ok(fetch.calls.length >= 1);
      assert.equal(fetch.calls[0].method, 'GET');
      assert.ok(
        PQ_NOT_FOUND(fetch.calls[0].response),
        `GET miss answers PERSISTED_QUERY_NOT_FOUND; got ${fetch.calls[0].status} ${JSON.stringify(fetch.calls[0].response)}`,
      );
      assert.equal(first.error, undefined, `the query succeeds: ${first.error}`);
      assert.equal(fetch.calls.length, 2, `a GET miss then a POST with the query; got ${JSON.stringify(fetch.calls, null, 1)}`);
      const [miss, register] = fetch.calls;
      assert.equal(miss.method, 'GET');
      assert.equal(sent(miss).query, undefined);
      assert.ok(PQ_NOT_FOUND(miss.response), `GET miss answers PERSISTED_QUERY_NOT_FOUND; got ${miss.status} ${JSON.stringify(miss.response)}`);
      assert.equal(register.method, 'POST');
      assert.equal(typeof sent(register).query, 'string');
      assert.equal(register.response?.errors, undefined);

      const again = await settle(client.query({ query, variables: { first: 1 }, fetchPolicy: 'network-only' }), 'second query');
      assert.equal(fetch.calls.length, 3, `one request; got ${JSON.stringify(fetch.calls.slice(2), null, 1)}`);
      const hit = fetch.calls[2];
      assert.equal(hit.method, 'GET', 'the hit is a GET');
      assert.equal(sent(hit).query, undefined, 'hash only');
      assert.deepEqual(sent(hit).variables, { first: 1 });
      assert.equal(sent(hit).extensions?.persistedQuery?.sha256Hash, sha256(sent(register).query));
      assert.equal(hit.status, 200);
      assert.equal(hit.response?.errors, undefined, `a hit; got ${JSON.stringify(hit.response)}`);
      assert.equal(again.error, undefined);
      assert.equal(typeof again.data.products.totalCount, 'number');
    } finally {
      client.stop();
    }
  });

  test('BatchHttpLink sends two queries in one HTTP request and both are answered', { timeout: 30_000 }, async () => {
    const fetch = recordingFetch();
    const client = new ApolloClient({
      link: new BatchHttpLink({ uri: server.url, fetch, batchMax: 10, batchInterval: 20 }),
      cache: new InMemoryCache(),
    });
    const counts = gql`
      query BatchCounts {
        jobCounts {
          queued
          succeeded
        }
      }
    `;
    const page = gql`
      query BatchProducts {
        products(first: 1) {
          totalCount
        }
      }
    `;
    try {
      const [a, b] = await withTimeout(
        Promise.all([
          client.query({ query: counts, fetchPolicy: 'network-only' }),
          client.query({ query: page, fetchPolicy: 'network-only' }),
        ]),
        15_000,
        'batched queries',
      );
      assert.equal(fetch.calls.length, 1, 'one HTTP request');
      const [call] = fetch.calls;
      assert.equal(call.method, 'POST');
      assert.ok(Array.isArray(call.body), 'the body is a JSON array');
      assert.deepEqual(call.body.map((operation) => operation.operationName).sort(), ['BatchCounts', 'BatchProducts']);
      assert.ok(Array.isArray(call.response) && call.response.length === 2, `an array of two answers; got ${JSON.stringify(call.response)}`);
      assert.equal(typeof a.data.jobCounts.queued, 'number');
      assert.equal(typeof b.data.products.totalCount, 'number');
    } finally {
      client.stop();
    }
  });
});
