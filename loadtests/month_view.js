// k6 load test of the month view: one GraphQL query per iteration that reads a calendar, a page of
// its events in a window, and each event's organizer, attendees and reserved resources.
//
// Environment:
//   FIXTURES  path to a JSON array of {"calendarId", "userId", "token"} (required)
//   BASE_URL  server address (default http://127.0.0.1:8080)
//   VUS       virtual users (default 20)
//   DURATION  how long to run (default 30s)
//   FROM, TO  the window, RFC 3339 (default: the current UTC month)
//   MONTHS    instead of FROM/TO: several windows, `from/to` pairs separated by commas; every
//             (fixture, window) pair is one item, ranked fixture-major (item r is fixture
//             floor(r / windows), window r % windows), so the Zipf draw is over all pairs
//   SUMMARY   if set, the end-of-test summary is also written there as JSON
//   ZIPF      Zipf exponent s (e.g. 1.1): item i is picked with probability proportional to
//             1/(i+1)^s, so the first items are hot; unset: uniform
//   DEBUG_STATS  `0`: do not send `x-debug-stats` (the per-request figures below are then absent;
//             read the server's /metrics instead); default: send it
//   ADMIN_TOKEN  the server's operator secret, sent as `x-admin-token` with `x-debug-stats`: outside
//             dev mode the server adds the figures only for it
//   WRITE_RATIO  share of iterations (e.g. 0.01) that write instead of only reading: they read the
//             month view of their calendar (counted as a read), then rename one of its events
//             with `updateEvent`; unset: 0 (reads only)
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

// Zipf: the cumulative distribution over fixture indexes, computed once per VU; a draw is a binary
// search for the first index whose cumulative probability exceeds a uniform number.
const ZIPF = __ENV.ZIPF ? parseFloat(__ENV.ZIPF) : 0;
if (Number.isNaN(ZIPF) || ZIPF < 0) {
  throw new Error(`ZIPF must be a non-negative number, not ${__ENV.ZIPF}`);
}
const WRITE_RATIO = __ENV.WRITE_RATIO ? parseFloat(__ENV.WRITE_RATIO) : 0;
if (Number.isNaN(WRITE_RATIO) || WRITE_RATIO < 0 || WRITE_RATIO > 1) {
  throw new Error(`WRITE_RATIO must be between 0 and 1, not ${__ENV.WRITE_RATIO}`);
}

function zipfCdf(n, s) {
  const cdf = new Array(n);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    sum += 1 / Math.pow(i + 1, s);
    cdf[i] = sum;
  }
  for (let i = 0; i < n; i++) cdf[i] /= sum;
  cdf[n - 1] = 1; // no rounding gap at the top
  return cdf;
}

function monthStart(offset) {
  const now = new Date();
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + offset, 1)).toISOString();
}

// The windows every fixture is read in: MONTHS, else FROM/TO, else the current UTC month.
const WINDOWS = (__ENV.MONTHS || `${__ENV.FROM || monthStart(0)}/${__ENV.TO || monthStart(1)}`)
  .split(',')
  .filter((w) => w.trim() !== '')
  .map((w) => {
    const [from, to] = w.trim().split('/');
    if (!from || !to) throw new Error(`MONTHS: "${w}" is not a from/to pair`);
    return { from, to };
  });
const ITEMS = fixtures.length * WINDOWS.length;

const CDF = ZIPF > 0 ? zipfCdf(ITEMS, ZIPF) : null;

function pickIndex() {
  if (!CDF) return Math.floor(Math.random() * ITEMS);
  const u = Math.random();
  let lo = 0;
  let hi = CDF.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (CDF[mid] > u) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

// The contract query itself (k6 resolves the path against this script's folder), so the load
// test always sends exactly what clients send.
const QUERY = open('./month_view.graphql');

// The read a writing iteration starts with: the same month view plus each event's version (the
// `expectedVersion` of the update).
const QUERY_WITH_VERSIONS = QUERY.replace('id title startTime', 'id version title startTime');

const MUTATION = `mutation Rename($id: ID!, $v: Int!, $t: String!) {
  updateEvent(id: $id, expectedVersion: $v, input: { title: $t }) { id version }
}`;

// SQL statements the server sent for one request (from the x-debug-stats extension).
const sqlStatements = new Trend('sql_statements');
const sqlRows = new Trend('sql_rows');
const eventsReturned = new Counter('events_returned');
// Share of requests that failed any check (HTTP error, GraphQL errors, wrong calendar).
const errors = new Rate('errors');
// Cache figures of each read (from the x-debug-stats extension): hit ratio = (l1 + l2) / (l1 + l2 + misses).
const l1Hits = new Counter('l1_hits');
const l2Hits = new Counter('l2_hits');
const cacheMisses = new Counter('cache_misses');
// Updates that committed, and those refused with VERSION_CONFLICT (another VU renamed the same
// event first: expected under concurrency, so not an error).
const writes = new Counter('writes');
const writeConflicts = new Counter('write_conflicts');

export const options = {
  scenarios: {
    month_view: {
      executor: 'constant-vus',
      vus: parseInt(__ENV.VUS || '20', 10),
      duration: __ENV.DURATION || '30s',
    },
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
  // Thresholds that always pass, only so that the summary carries the reads' own figures
  // (k6 reports a tag's sub-metric only when a threshold names it).
  thresholds: {
    'http_req_duration{name:MonthView}': ['max>=0'],
    'http_reqs{name:MonthView}': ['count>=0'],
    'http_req_duration{name:UpdateEvent}': ['max>=0'],
  },
};

const DEBUG_STATS = __ENV.DEBUG_STATS !== '0';

function send(f, payload, name) {
  const headers = {
    'Content-Type': 'application/json',
    Authorization: `Bearer ${f.token}`,
  };
  if (DEBUG_STATS) {
    headers['x-debug-stats'] = '1';
    // Outside dev mode the figures are for operators only.
    if (__ENV.ADMIN_TOKEN) headers['x-admin-token'] = __ENV.ADMIN_TOKEN;
  }
  return http.post(`${BASE_URL}/graphql`, JSON.stringify(payload), { headers, tags: { name } });
}

function post(f, payload, name) {
  const res = send(f, payload, name);
  let body = null;
  try {
    body = res.json();
  } catch (_) {
    body = null;
  }
  return [res, body];
}

function addStats(stats) {
  if (!stats) return;
  if (typeof stats.sqlStatements === 'number') sqlStatements.add(stats.sqlStatements);
  if (typeof stats.sqlRows === 'number') sqlRows.add(stats.sqlRows);
  if (typeof stats.l1Hits === 'number') l1Hits.add(stats.l1Hits);
  if (typeof stats.l2Hits === 'number') l2Hits.add(stats.l2Hits);
  if (typeof stats.cacheMisses === 'number') cacheMisses.add(stats.cacheMisses);
}

// One month view read, with its checks and figures; returns the parsed body (for a writing
// iteration, which needs the events' versions).
function readMonth(f, w, query) {
  const [res, body] = post(
    f,
    { query, variables: { calendarId: f.calendarId, from: w.from, to: w.to } },
    'MonthView',
  );
  const ok = check(res, {
    'status is 200': (r) => r.status === 200,
    'no errors': () => body !== null && !body.errors,
    'calendar id matches': () => body !== null && !!body.data && !!body.data.calendar && body.data.calendar.id === f.calendarId,
  });
  errors.add(!ok);
  addStats(body && body.extensions && body.extensions.stats);
  const events = body && body.data && body.data.calendar && body.data.calendar.events;
  if (events && Array.isArray(events.edges)) {
    eventsReturned.add(events.edges.length);
  }
  return body;
}

// The same read and the same checks without parsing the ~66 KB body as JSON: on a machine the
// load generator shares with the server, parsing every response would make k6, not the server,
// the bottleneck. It relies on what JSON guarantees: a quote inside a string is escaped, so an
// unescaped `"errors":` can only be a key (the schema has no field of that name), and the body
// of this query starts with the calendar's id; the extensions are the last member.
function readMonthLight(f, w) {
  const res = send(
    f,
    { query: QUERY, variables: { calendarId: f.calendarId, from: w.from, to: w.to } },
    'MonthView',
  );
  const text = typeof res.body === 'string' ? res.body : '';
  const ok = check(res, {
    'status is 200': (r) => r.status === 200,
    'no errors': () => text.startsWith('{"data":{') && text.indexOf('"errors":') === -1,
    'calendar id matches': () => text.startsWith(`{"data":{"calendar":{"id":${JSON.stringify(f.calendarId)},`),
  });
  errors.add(!ok);
  const at = text.lastIndexOf(',"extensions":');
  if (at !== -1) {
    try {
      const ext = JSON.parse(`{${text.slice(at + 1)}`).extensions;
      addStats(ext && ext.stats);
    } catch (_) {
      // no figures for this one; the checks above already judged the response
    }
  }
  let n = 0;
  for (let i = text.indexOf('{"node":{'); i !== -1; i = text.indexOf('{"node":{', i + 9)) n++;
  eventsReturned.add(n);
}

// Renames one event of the calendar just read. Single events are preferred: renaming an
// occurrence of a series would turn it into a new override row each time.
function renameOne(f, body) {
  const edges = (body && body.data && body.data.calendar && body.data.calendar.events &&
    body.data.calendar.events.edges) || [];
  const nodes = edges.map((e) => e.node).filter((n) => n && typeof n.version === 'number');
  if (nodes.length === 0) return; // nothing to rename in this window
  const singles = nodes.filter((n) => !String(n.id).includes('_'));
  const pool = singles.length > 0 ? singles : nodes;
  const ev = pool[Math.floor(Math.random() * pool.length)];
  const title = `bench ${__VU}-${__ITER} ${Date.now()}`;
  const [res, out] = post(f, { query: MUTATION, variables: { id: ev.id, v: ev.version, t: title } }, 'UpdateEvent');
  const errs = (out && out.errors) || [];
  const conflict = errs.length > 0 && errs.every((e) => e.extensions && e.extensions.code === 'VERSION_CONFLICT');
  if (conflict) {
    writeConflicts.add(1);
    errors.add(false);
    return;
  }
  const ok = check(res, {
    'update: status is 200': (r) => r.status === 200,
    'update: no errors': () => out !== null && errs.length === 0,
    'update: version bumped': () => !!out && !!out.data && !!out.data.updateEvent && out.data.updateEvent.version > ev.version,
  });
  errors.add(!ok);
  if (ok) writes.add(1);
  else console.warn(`updateEvent ${ev.id} v${ev.version} failed: HTTP ${res.status} ${JSON.stringify(errs).slice(0, 400)}`);
}

export default function () {
  const item = pickIndex();
  const f = fixtures[Math.floor(item / WINDOWS.length)];
  const w = WINDOWS[item % WINDOWS.length];
  if (WRITE_RATIO > 0 && Math.random() < WRITE_RATIO) {
    renameOne(f, readMonth(f, w, QUERY_WITH_VERSIONS));
  } else {
    readMonthLight(f, w);
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
  const count = (name) => (data.metrics[name] ? data.metrics[name].values.count : 0);
  const hits = count('l1_hits') + count('l2_hits');
  const looked = hits + count('cache_misses');
  if (looked > 0) {
    lines.push(`  ${'cache hit ratio (reads) '.padEnd(34, '.')} ${((hits / looked) * 100).toFixed(2)}% (${hits} of ${looked} keys)`);
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
