// Executes a "plan" of GraphQL client steps (real Apollo Client 4 + plain fetch)
// against a live endpoint and reports what happened.
//
// Usage: node clients.mjs < plan.json
//
// plan:   { "url": "http://127.0.0.1:PORT/graphql", "token": "...", "steps": [step, ...] }
// step:   { "kind": "apollo", "operation": "query"|"mutation", "document": "...", "variables": {...} }
//       | { "kind": "fetch", "method": "GET"|"POST", "path_and_query": "/graphql?...",
//           "headers": {...}, "body": "..."|null }
// stdout: exactly one JSON document { "steps": [result, ...], "exchanges": [exchange, ...] }
//   apollo result:  { "data": object|null, "error": string|null }
//   fetch result:   { "status", "headers": {lower-case: value}, "body": text, "rawBytes": n }
//   exchange (every network request made by Apollo, in order):
//     { "method", "url", "requestHeaders", "status", "etag", "contentType", "bodyText" }
import { createHash } from 'node:crypto';

// Keep stdout clean for the single JSON document: anything a library logs goes to stderr.
for (const level of ['log', 'info', 'debug']) {
  console[level] = (...args) => console.error(...args);
}

const { ApolloClient, InMemoryCache, HttpLink, gql } = await import('@apollo/client');
const { PersistedQueryLink } = await import('@apollo/client/link/persisted-queries');

// Any form fetch accepts (object, array of pairs, Headers) as a plain object, names lower-cased.
const headersToObject = (headers) => Object.fromEntries(new Headers(headers ?? {}));

// Statuses for which a Response must not have a body.
const NULL_BODY_STATUSES = new Set([101, 103, 204, 205, 304]);

function rebuildResponse(text, status, statusText, headers) {
  return new Response(NULL_BODY_STATUSES.has(status) ? null : text, {
    status,
    statusText,
    headers,
  });
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

function errorToString(err) {
  try {
    return String(err);
  } catch {
    return Object.prototype.toString.call(err);
  }
}

async function main() {
  const raw = await readStdin();
  const plan = JSON.parse(raw);
  const { url, token } = plan;
  const steps = Array.isArray(plan.steps) ? plan.steps : [];
  if (typeof url !== 'string') throw new Error('plan.url must be a string');

  const exchanges = [];
  // Browser-like HTTP cache for GET: url -> { etag, bodyText, headers }
  const etagCache = new Map();

  async function recordingFetch(input, init = {}) {
    const urlString =
      typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
    const method = String(
      init.method || (typeof input === 'object' && input.method) || 'GET',
    ).toUpperCase();
    const requestHeaders = headersToObject(
      init.headers || (typeof input === 'object' && !(input instanceof URL) ? input.headers : undefined),
    );

    const cached = method === 'GET' ? etagCache.get(urlString) : undefined;
    if (cached) requestHeaders['if-none-match'] = cached.etag;

    const exchange = {
      method,
      url: urlString,
      requestHeaders,
      status: null,
      etag: null,
      contentType: null,
      bodyText: '',
    };
    exchanges.push(exchange);

    let res;
    try {
      res = await fetch(urlString, { ...init, method, headers: requestHeaders });
    } catch (err) {
      exchange.error = errorToString(err);
      throw err;
    }

    const etag = res.headers.get('etag');
    exchange.status = res.status;
    exchange.etag = etag;
    exchange.contentType = res.headers.get('content-type');

    const text = await res.text();
    exchange.bodyText = res.status === 304 ? '' : text;

    if (res.status === 304 && cached) {
      // What a browser cache would hand to the page: the stored 200.
      return new Response(cached.bodyText, { status: 200, headers: cached.headers });
    }

    const headers = new Headers(res.headers);
    if (method === 'GET' && res.status === 200 && etag) {
      etagCache.set(urlString, { etag, bodyText: text, headers: new Headers(res.headers) });
    }
    return rebuildResponse(text, res.status, res.statusText, headers);
  }

  let client = null;
  function getClient() {
    if (!client) {
      const pqLink = new PersistedQueryLink({
        sha256: (s) => createHash('sha256').update(s).digest('hex'),
        useGETForHashedQueries: true,
      });
      const httpLink = new HttpLink({
        uri: url,
        headers: { authorization: 'Bearer ' + token },
        fetch: recordingFetch,
      });
      client = new ApolloClient({ link: pqLink.concat(httpLink), cache: new InMemoryCache() });
    }
    return client;
  }

  async function runApollo(step) {
    try {
      const c = getClient();
      const doc = gql(step.document);
      const variables = step.variables ?? undefined;
      let result;
      if (step.operation === 'mutation') {
        result = await c.mutate({ mutation: doc, variables });
      } else if (step.operation === 'query' || step.operation === undefined) {
        result = await c.query({ query: doc, variables, fetchPolicy: 'network-only' });
      } else {
        throw new Error(`unknown apollo operation: ${step.operation}`);
      }
      return {
        data: result?.data ?? null,
        error: result?.error ? errorToString(result.error) : null,
      };
    } catch (err) {
      return { data: null, error: errorToString(err) };
    }
  }

  async function runFetch(step) {
    const target = new URL(step.path_and_query, url);
    const headers = { ...(step.headers || {}), authorization: 'Bearer ' + token };
    const method = String(step.method || 'GET').toUpperCase();
    const init = { method, headers };
    if (step.body !== null && step.body !== undefined) init.body = step.body;
    const res = await fetch(target, init);
    const body = await res.text();
    return {
      status: res.status,
      headers: headersToObject(res.headers),
      body,
      rawBytes: Buffer.byteLength(body, 'utf8'),
    };
  }

  const results = [];
  for (const step of steps) {
    if (step.kind === 'apollo') {
      results.push(await runApollo(step));
    } else if (step.kind === 'fetch') {
      results.push(await runFetch(step));
    } else {
      throw new Error(`unknown step kind: ${JSON.stringify(step.kind)}`);
    }
  }

  if (client) client.stop();
  return { steps: results, exchanges };
}

try {
  const out = await main();
  process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(0));
} catch (err) {
  process.stderr.write(`clients.mjs failed: ${err && err.stack ? err.stack : String(err)}\n`);
  process.exit(1);
}
