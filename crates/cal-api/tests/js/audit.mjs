// Runs the graphql-http GraphQL-over-HTTP server audit against a live endpoint.
//
// Usage: node audit.mjs <url> <bearer-token>
//
// stdout: exactly one JSON array, one object per audit result:
//   { "id", "name", "status": "ok"|"notice"|"warn"|"error", "reason": string|null, "httpStatus": number|null }
import { auditServer } from 'graphql-http';

// Any form fetch accepts (object, array of pairs, Headers) as a plain object, names lower-cased.
const headersToObject = (headers) => Object.fromEntries(new Headers(headers ?? {}));

async function main() {
  const [url, token] = process.argv.slice(2);
  if (!url || token === undefined) {
    throw new Error('usage: node audit.mjs <url> <bearer-token>');
  }

  const fetchFn = (input, init = {}) => {
    const headers = headersToObject(init.headers);
    headers.authorization = `Bearer ${token}`;
    return fetch(input, { ...init, headers });
  };

  const results = await auditServer({ url, fetchFn });

  const out = results.map((r) => ({
    id: r.id,
    name: r.name,
    status: r.status,
    reason: r.reason ?? null,
    // Only the status is read: the audit may already have consumed the body.
    httpStatus: r.response && typeof r.response.status === 'number' ? r.response.status : null,
  }));

  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((err) => {
  process.stderr.write(`audit.mjs failed: ${err && err.stack ? err.stack : String(err)}\n`);
  process.exit(1);
});
