// urql + Graphcache against a real node, with no `keys` configuration: relayPagination
// merges pages; a mutation's `updates.Mutation.createProduct` appends to the cached
// connection without refetch; a `node(id:)` refetch updates the same cached entity.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Client, fetchExchange, gql } from '@urql/core';
import { cacheExchange } from '@urql/exchange-graphcache';
import { relayPagination } from '@urql/exchange-graphcache/extras';

import { createProducts, recordingFetch, sent, unique, withTimeout } from '../lib.mjs';
import { startServer } from '../server.mjs';

const PRODUCTS = gql`
  query Products($first: Int, $after: String) {
    products(first: $first, after: $after) {
      edges {
        cursor
        node {
          id
          name
          registration {
            id
            status
          }
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
      registration {
        id
        status
      }
    }
  }
`;

// Every object these queries read has a global `id` (or is a `*Connection`, `*Edge` or
// `PageInfo`, which Graphcache exempts by name), so Graphcache needs no `keys` setting: a
// type it could not key would make it warn (warning 15), and this test fails on warnings.

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

const names = (connection) => connection.edges.map((edge) => edge.node.name);

test('urql Graphcache: relayPagination merges pages; updates.Mutation.createProduct appends without refetch', { timeout: 60_000 }, async () => {
  const tag = unique();
  const created = await createProducts(server.url, [`urql-${tag}-1`, `urql-${tag}-2`, `urql-${tag}-3`]);
  const warnings = [];
  const fetch = recordingFetch();
  const cache = cacheExchange({
    resolvers: { Query: { products: relayPagination() } },
    updates: {
      Mutation: {
        createProduct(result, _args, cache) {
          // Append the new product to the last cached page of `products` (the one read
          // with `after`, else the first); relayPagination then shows it at the end of the
          // merged list. `updateQuery` reads through the resolvers (the merged list) and
          // writes that page back; relayPagination drops the repeated nodes when merging.
          const pages = cache.inspectFields('Query').filter((field) => field.fieldName === 'products');
          const last = pages.findLast((page) => page.arguments?.after) ?? pages[0];
          if (!last) return;
          cache.updateQuery({ query: PRODUCTS, variables: last.arguments }, (data) => {
            if (!data?.products) return null;
            data.products.edges.push({ __typename: 'ProductEdge', cursor: '', node: result.createProduct });
            return data;
          });
        },
      },
    },
    logger: (level, message) => {
      if (level === 'warn' || level === 'error') warnings.push(message);
    },
  });
  const client = new Client({ url: server.url, fetch, exchanges: [cache, fetchExchange], preferGetMethod: false });
  const query = (variables, requestPolicy = 'network-only') =>
    withTimeout(client.query(PRODUCTS, variables, { requestPolicy }).toPromise(), 15_000, `products ${JSON.stringify(variables)}`);

  const page1 = await query({ first: 2 });
  assert.equal(page1.error, undefined, `page 1: ${page1.error}`);
  assert.deepEqual(names(page1.data.products), created.slice(0, 2).map((p) => p.name));
  assert.equal(page1.data.products.pageInfo.hasNextPage, true);
  const after = page1.data.products.pageInfo.endCursor;

  const page2 = await query({ first: 2, after });
  assert.equal(page2.error, undefined, `page 2: ${page2.error}`);
  assert.equal(fetch.calls.length, 2, 'one request per page');
  assert.equal(sent(fetch.calls[1]).variables.after, after);
  assert.deepEqual(names(page2.data.products), created.map((p) => p.name), 'page 2 reads as the merged list');
  assert.equal(page2.data.products.pageInfo.hasNextPage, false);

  const cached = await query({ first: 2 }, 'cache-only');
  assert.deepEqual(names(cached.data.products), created.map((p) => p.name), 'the cache merges both pages');

  const newName = `urql-${tag}-new`;
  const requestsBefore = fetch.calls.length;
  const mutation = await withTimeout(
    client.mutation(CREATE_PRODUCT, { input: { name: newName } }).toPromise(),
    15_000,
    'createProduct',
  );
  assert.equal(mutation.error, undefined, `mutation: ${mutation.error}`);
  assert.equal(mutation.data.createProduct.name, newName);

  const afterMutation = await query({ first: 2, after }, 'cache-only');
  assert.deepEqual(names(afterMutation.data.products), [...created.map((p) => p.name), newName]);
  const firstPageView = await query({ first: 2 }, 'cache-only');
  assert.deepEqual(names(firstPageView.data.products), [...created.map((p) => p.name), newName]);
  assert.equal(fetch.calls.length, requestsBefore + 1, 'only the mutation went to the server (no refetch)');

  if (warnings.length) console.log(`graphcache warnings:\n${warnings.map((w) => `  ${w}`).join('\n')}`);
  assert.deepEqual(warnings, [], 'Graphcache logged no warnings');
});

const NODE = gql`
  query Node($id: ID!) {
    node(id: $id) {
      __typename
      id
      ... on Product {
        name
        registration {
          id
          status
        }
      }
    }
  }
`;

const RENAME = gql`
  mutation Rename($id: ID!, $name: String!) {
    updateProduct(id: $id, input: { name: $name }) {
      id
      name
    }
  }
`;

test('urql Graphcache: global ids key every object; node(id:) refetches into the same cache entity', { timeout: 60_000 }, async () => {
  const tag = unique();
  const [created] = await createProducts(server.url, [`urql-node-${tag}`]);
  const warnings = [];
  const fetch = recordingFetch();
  const cache = cacheExchange({
    logger: (level, message) => {
      if (level === 'warn' || level === 'error') warnings.push(message);
    },
  });
  const client = new Client({ url: server.url, fetch, exchanges: [cache, fetchExchange], preferGetMethod: false });

  const viaNode = await withTimeout(client.query(NODE, { id: created.id }).toPromise(), 15_000, 'node(id:)');
  assert.equal(viaNode.error, undefined, `node: ${viaNode.error}`);
  assert.equal(viaNode.data.node.__typename, 'Product');
  assert.equal(viaNode.data.node.id, created.id);
  assert.equal(viaNode.data.node.name, created.name);
  assert.equal(typeof viaNode.data.node.registration.id, 'string');

  // A mutation answering the same object updates the entity `node(id:)` cached (both
  // keyed `Product:<id>`): the cached query shows the new name without a refetch.
  const renamed = `urql-node-${tag}-renamed`;
  const mutation = await withTimeout(client.mutation(RENAME, { id: created.id, name: renamed }).toPromise(), 15_000, 'rename');
  assert.equal(mutation.error, undefined, `rename: ${mutation.error}`);
  const requests = fetch.calls.length;
  const cached = await withTimeout(
    client.query(NODE, { id: created.id }, { requestPolicy: 'cache-only' }).toPromise(),
    15_000,
    'node from cache',
  );
  assert.equal(cached.data?.node?.name, renamed, 'the cached node shows the mutation\'s answer');
  assert.equal(fetch.calls.length, requests, 'no refetch');

  if (warnings.length) console.log(`graphcache warnings:\n${warnings.map((w) => `  ${w}`).join('\n')}`);
  assert.deepEqual(warnings, [], 'Graphcache logged no warnings');
});
