// Introspection against a real node: the schema a client tool builds from it must be the
// committed `schema.graphql`, both printed by graphql-js (so formatting cannot differ).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';

import { buildClientSchema, buildSchema, getIntrospectionQuery, printSchema } from 'graphql';

import { post } from '../lib.mjs';
import { startServer } from '../server.mjs';

const committed = printSchema(buildSchema(readFileSync(new URL('../../schema.graphql', import.meta.url), 'utf8')));

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

// async-graphql 7 answers `__schema { description }` with the documentation of the
// `__Schema` type itself, hard-coded, instead of the schema's description (which the SDL
// export leaves out: there is none). Only that exact text is set aside before comparing;
// the `todo` test below tracks it.
const ASYNC_GRAPHQL_SCHEMA_DOC =
  'A GraphQL Schema defines the capabilities of a GraphQL server. It exposes all available types and directives on the server, as well as the entry points for query, mutation, and subscription operations.';

/** POSTs an introspection query and prints the schema graphql-js builds from the answer. */
async function introspect(query) {
  const { status, body } = await post(server.url, { query });
  assert.equal(status, 200, `introspection answered ${status}: ${JSON.stringify(body).slice(0, 500)}`);
  assert.equal(body.errors, undefined, `introspection errors: ${JSON.stringify(body.errors)}`);
  const data = structuredClone(body.data);
  if (data.__schema.description === ASYNC_GRAPHQL_SCHEMA_DOC) data.__schema.description = null;
  return { printed: printSchema(buildClientSchema(data)), data: body.data };
}

/** The first differing line of two printed schemas, with a little context. */
function firstDifference(actual, expected) {
  const a = actual.split('\n');
  const e = expected.split('\n');
  const index = a.findIndex((line, i) => line !== e[i]);
  const at = index === -1 ? Math.min(a.length, e.length) : index;
  return `first difference at line ${at + 1}:\n  introspected: ${JSON.stringify(a.slice(Math.max(0, at - 2), at + 3))}\n  schema.graphql: ${JSON.stringify(e.slice(Math.max(0, at - 2), at + 3))}`;
}

test('introspection (graphql-js, every option) prints as schema.graphql', { timeout: 30_000 }, async () => {
  const query = getIntrospectionQuery({
    descriptions: true,
    specifiedByUrl: true,
    directiveIsRepeatable: true,
    schemaDescription: true,
    inputValueDeprecation: true,
  });
  const { printed, data } = await introspect(query);
  assert.ok(data.__schema.types.some((type) => type.name === 'Query'));
  assert.ok(printed === committed, firstDifference(printed, committed));
});

test('__schema.description is null, as in schema.graphql', { timeout: 30_000, todo: 'async-graphql 7 hard-codes the __Schema type doc as the schema description' }, async () => {
  const { status, body } = await post(server.url, { query: '{ __schema { description } }' });
  assert.equal(status, 200);
  assert.equal(body.data?.__schema?.description, null, `got ${JSON.stringify(body.data?.__schema?.description)}`);
});

// Apollo Rover's `rover graph introspect` sends graphql-js's query with deprecated input
// values and without the newer options (no schema description, `specifiedByURL` or
// `isRepeatable`), under its own operation name: the same query, built here rather than
// copied. The server must answer it and give the same schema.
test('introspection as Apollo Rover sends it prints as schema.graphql', { timeout: 30_000 }, async () => {
  const query = getIntrospectionQuery({ descriptions: true, inputValueDeprecation: true }).replace(
    'query IntrospectionQuery',
    'query GraphIntrospectQuery',
  );
  assert.ok(query.includes('query GraphIntrospectQuery'));
  const { printed } = await introspect(query);
  // Without `specifiedByURL` in the query, scalars come back without `@specifiedBy`.
  const expected = committed.replace(/ @specifiedBy\(url: "[^"]*"\)/g, '');
  assert.ok(expected !== committed, 'schema.graphql specifies a scalar, so this compares something');
  assert.ok(printed === expected, firstDifference(printed, expected));
});
