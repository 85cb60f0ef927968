// Subscribes with the real `graphql-ws` client (the graphql-transport-ws protocol) and reports
// what arrived.
//
// Usage: node subscribe.mjs < plan.json
//
// plan:   { "url": "ws://127.0.0.1:PORT/graphql", "token": "...", "query": "...",
//           "variables": {...}, "untilIds": ["12", ...], "timeoutMs": 20000 }
//   It stops once every id of `untilIds` has appeared in some message's `events`, when the
//   server sends an error or completes, or after `timeoutMs`.
// stdout: exactly one JSON document
//   { "messages": [data, ...], "errors": [[{message, extensions}], ...] | [string],
//     "completed": bool, "timedOut": bool, "closeCode": number|null }
for (const level of ['log', 'info', 'debug']) {
  console[level] = (...args) => console.error(...args);
}

const { createClient } = await import('graphql-ws');
const { default: WebSocket } = await import('ws');

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const plan = JSON.parse(Buffer.concat(chunks).toString('utf8'));

const report = { messages: [], errors: [], completed: false, timedOut: false, closeCode: null };
const waiting = new Set(plan.untilIds ?? []);

const client = createClient({
  url: plan.url,
  webSocketImpl: WebSocket,
  connectionParams: plan.token ? { Authorization: `Bearer ${plan.token}` } : {},
  keepAlive: 2000,
  retryAttempts: 0,
  lazy: false,
  on: { closed: (event) => { report.closeCode = event?.code ?? null; } },
});

await new Promise((resolve) => {
  const timer = setTimeout(() => { report.timedOut = true; resolve(); }, plan.timeoutMs ?? 20000);
  const done = () => { clearTimeout(timer); resolve(); };
  client.subscribe(
    { query: plan.query, variables: plan.variables ?? {} },
    {
      next: (msg) => {
        if (msg.errors) report.errors.push(msg.errors);
        if (msg.data) {
          report.messages.push(msg.data);
          for (const e of msg.data.calendarChanged?.events ?? []) waiting.delete(e.id);
        }
        if (msg.errors || (waiting.size === 0 && (plan.untilIds ?? []).length > 0)) done();
      },
      error: (err) => {
        report.errors.push(Array.isArray(err) ? err : [{ message: String(err?.reason ?? err?.message ?? err), code: err?.code }]);
        if (err?.code) report.closeCode = err.code;
        done();
      },
      complete: () => { report.completed = true; done(); },
    },
  );
});

await client.dispose();
process.stdout.write(JSON.stringify(report));
process.exit(0);
