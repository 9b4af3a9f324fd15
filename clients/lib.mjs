// Small helpers shared by the client tests: plain GraphQL calls, a fetch that records
// every HTTP exchange, SHA-256, and bounded waits.
import { createHash, randomBytes } from 'node:crypto';

export const REQUEST_TIMEOUT_MS = 15_000;

export const sha256 = (text) => createHash('sha256').update(text).digest('hex');

/** A short unique suffix, so names never collide between runs or tests. */
export const unique = () => randomBytes(4).toString('hex');

/** Rejects with `what` when `promise` has not settled within `ms`. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** POSTs one operation with plain fetch; returns `{ status, body }`. */
export async function post(url, payload, headers = {}) {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json', ...headers },
    body: JSON.stringify(payload),
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: response.status, body };
}

/** Runs an operation that must succeed; returns `data`. */
export async function gqlOk(url, query, variables = {}) {
  const { status, body } = await post(url, { query, variables });
  if (status !== 200 || body?.errors || !body?.data) {
    throw new Error(`GraphQL call failed (${status}): ${JSON.stringify(body)}\nquery: ${query}`);
  }
  return body.data;
}

/** Creates products through the `createProduct` mutation; returns them in order. */
export async function createProducts(url, names) {
  const created = [];
  for (const name of names) {
    const data = await gqlOk(url, 'mutation($input: CreateProductInput!) { createProduct(input: $input) { id name } }', {
      input: { name },
    });
    created.push(data.createProduct);
  }
  return created;
}

function parseMaybeJson(text) {
  if (text == null) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/**
 * A `fetch` that records every exchange as `{ method, url, body, params, status,
 * response }`: `body` is the parsed JSON request body (POST), `params` the decoded
 * GraphQL parameters of a GET (`query`, `variables`, `extensions`, `operationName`),
 * `response` the parsed answer. Every request is bounded in time.
 */
export function recordingFetch() {
  const calls = [];
  const recorder = async (input, init = {}) => {
    const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
    const method = (init.method ?? (typeof input === 'object' && 'method' in input ? input.method : 'GET')).toUpperCase();
    const call = { method, url, body: null, params: null, status: null, response: null };
    if (typeof init.body === 'string') call.body = parseMaybeJson(init.body);
    if (method === 'GET') {
      const search = new URL(url).searchParams;
      call.params = {};
      for (const key of ['query', 'operationName', 'variables', 'extensions']) {
        if (search.has(key)) call.params[key] = key === 'variables' || key === 'extensions' ? parseMaybeJson(search.get(key)) : search.get(key);
      }
    }
    calls.push(call);
    const timeout = AbortSignal.timeout(REQUEST_TIMEOUT_MS);
    const signal = init.signal ? AbortSignal.any([init.signal, timeout]) : timeout;
    const response = await fetch(input, { ...init, signal });
    call.status = response.status;
    call.response = parseMaybeJson(await response.clone().text());
    return response;
  };
  recorder.calls = calls;
  return recorder;
}

/** The GraphQL parameters of a recorded call, whichever the method. */
export function sent(call) {
  if (call.method === 'GET') return call.params;
  return call.body;
}

/** The first error code (or message) of a recorded answer. */
export function errorCodes(response) {
  const errors = Array.isArray(response?.errors) ? response.errors : [];
  return errors.map((error) => error?.extensions?.code ?? error?.message);
}
