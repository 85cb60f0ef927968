// k6 load test of the month view: one GraphQL query per iteration that reads a calendar, a page of
// its events in a window, and each event's organizer, attendees and reserved resources.
//
// Environment:
//   FIXTURES  path to a JSON array of {"calendarId", "userId", "token"} (required)
//   BASE_URL  server address (default http://127.0.0.1:8080)
//   VUS       virtual users (default 20)
//   DURATION  how long to run (default 30s)
//   FROM, TO  the window, RFC 3339 (default: the current UTC month)
//   SUMMARY   if set, the end-of-test summary is also written there as JSON
//
// Run: k6 run -e FIXTURES=target/bench/fixtures.json loadtests/month_view.js
// (k6 also reads these from the process environment, which is how `cargo xtask bench` passes them.)

import http from 'k6/http';
import { check } from 'k6';
import { SharedArray } from 'k6/data';
import { Counter, Rate, Trend } from 'k6/metrics';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';

if (!__ENV.FIXTURES) {
  throw new Error('set FIXTURES to a JSON file of [{"calendarId","userId","token"}]');
}

// Loaded once and shared read-only between VUs (a plain array would be copied into each one).
const fixtures = new SharedArray('fixtures', () => {
  const list = JSON.parse(open(__ENV.FIXTURES));
  if (!Array.isArray(list) || list.length === 0) {
    throw new Error(`${__ENV.FIXTURES} holds no fixtures`);
  }
  return list;
});

function monthStart(offset) {
  const now = new Date();
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + offset, 1)).toISOString();
}

const FROM = __ENV.FROM || monthStart(0);
const TO = __ENV.TO || monthStart(1);

const QUERY = `query MonthView($calendarId: ID!, $from: DateTime!, $to: DateTime!) {
  calendar(id: $calendarId) {
    id name
    events(from: $from, to: $to, first: 100) {
      edges { node {
        id title startTime endTime
        organizer { id name avatarUrl }
        attendees { responseStatus user { id name avatarUrl } }
        reservations { resource { id name } }
      } }
      pageInfo { hasNextPage endCursor }
    }
  }
}`;

// SQL statements the server sent for one request (from the x-debug-stats extension).
const sqlStatements = new Trend('sql_statements');
const sqlRows = new Trend('sql_rows');
const eventsReturned = new Counter('events_returned');
// Share of requests that failed any check (HTTP error, GraphQL errors, wrong calendar).
const errors = new Rate('errors');

export const options = {
  scenarios: {
    month_view: {
      executor: 'constant-vus',
      vus: parseInt(__ENV.VUS || '20', 10),
      duration: __ENV.DURATION || '30s',
    },
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
};

export default function () {
  const f = fixtures[Math.floor(Math.random() * fixtures.length)];
  const res = http.post(
    `${BASE_URL}/graphql`,
    JSON.stringify({ query: QUERY, variables: { calendarId: f.calendarId, from: FROM, to: TO } }),
    {
      headers: {
        'Content-Type': 'application/json',
        Authorization: `Bearer ${f.token}`,
        'x-debug-stats': '1',
      },
      tags: { name: 'MonthView' },
    },
  );

  let body = null;
  try {
    body = res.json();
  } catch (_) {
    body = null;
  }
  const ok = check(res, {
    'status is 200': (r) => r.status === 200,
    'no errors': () => body !== null && !body.errors,
    'calendar id matches': () => body !== null && !!body.data && !!body.data.calendar && body.data.calendar.id === f.calendarId,
  });
  errors.add(!ok);

  if (body && body.extensions && body.extensions.stats) {
    const stats = body.extensions.stats;
    if (typeof stats.sqlStatements === 'number') sqlStatements.add(stats.sqlStatements);
    if (typeof stats.sqlRows === 'number') sqlRows.add(stats.sqlRows);
  }
  const events = body && body.data && body.data.calendar && body.data.calendar.events;
  if (events && Array.isArray(events.edges)) {
    eventsReturned.add(events.edges.length);
  }
}

// A plain-text summary in the spirit of k6's default one. Returning anything from handleSummary
// replaces the default, and the jslib that reproduces it is fetched over the network at run time,
// which a benchmark machine may not allow; so the few lines needed live here.
function textSummary(data) {
  const fmt = (m, v) => {
    const unit = m.contains === 'time' ? 'ms' : '';
    return typeof v === 'number' ? `${Number.isInteger(v) ? v : v.toFixed(2)}${unit}` : String(v);
  };
  const lines = [''];
  const checks = (data.root_group && data.root_group.checks) || [];
  for (const c of checks) {
    lines.push(`  ${c.fails === 0 ? 'ok  ' : 'FAIL'} ${c.name}: ${c.passes} passed, ${c.fails} failed`);
  }
  lines.push('');
  for (const name of Object.keys(data.metrics).sort()) {
    const m = data.metrics[name];
    const v = m.values;
    let text;
    if (m.type === 'trend') {
      text = ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)']
        .filter((k) => k in v)
        .map((k) => `${k}=${fmt(m, v[k])}`)
        .join(' ');
    } else if (m.type === 'rate') {
      text = `${(v.rate * 100).toFixed(2)}% (${v.passes} of ${v.passes + v.fails})`;
    } else if (m.type === 'counter') {
      text = `${v.count} (${v.rate.toFixed(2)}/s)`;
    } else {
      text = Object.entries(v).map(([k, x]) => `${k}=${x}`).join(' ');
    }
    lines.push(`  ${(name + ' ').padEnd(34, '.')} ${text}`);
  }
  return lines.join('\n') + '\n';
}

export function handleSummary(data) {
  const out = { stdout: textSummary(data) };
  if (__ENV.SUMMARY) {
    out[__ENV.SUMMARY] = JSON.stringify(data, null, 2);
  }
  return out;
}
