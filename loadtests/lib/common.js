// What the k6 scripts of loadtests/ share: the fixtures, the Zipf draw, the windows, the month-view
// query and its reads (checks and the server's `x-debug-stats` figures), the rename, the KPI
// thresholds of the scenarios and the text summary. `month_view.js` (the benchmark's instrument)
// and every script of `scenarios/` import it, so that all of them measure the same thing the
// same way.
//
// Environment read here (each script's header lists the ones it uses):
//   BASE_URL     server address (default http://127.0.0.1:8080); requests go to $BASE_URL/graphql
//   INSTANCE_URLS  every instance's address, comma-separated, for what must talk to each one (a
//                scrape of /metrics, a read through another instance); default: BASE_URL alone
//   FIXTURES     JSON array of {"calendarId", "userId", "token"} (required)
//   FROM, TO     the window, RFC 3339 (default: the current UTC month)
//   MONTHS       instead of FROM/TO: several windows, `from/to` pairs separated by commas
//   DEBUG_STATS  `0`: do not send `x-debug-stats` (no per-request figures; the scenarios refuse it)
//   ADMIN_TOKEN  the server's operator secret, sent as `x-admin-token` with `x-debug-stats`:
//                outside dev mode the server adds the figures only for it
//   SUMMARY      if set, the end-of-test summary is also written there as JSON

import http from 'k6/http';
import { check } from 'k6';
import { SharedArray } from 'k6/data';
import { Counter, Rate, Trend } from 'k6/metrics';

export const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';

export const INSTANCE_URLS = (__ENV.INSTANCE_URLS || BASE_URL)
  .split(',')
  .map((u) => u.trim())
  .filter((u) => u !== '');

const DEBUG_STATS = __ENV.DEBUG_STATS !== '0';

// The statistics of every Trend in the summary (and in its text).
export const TREND_STATS = ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'];

// A number from the environment, `fallback` when unset; anything outside [min, max] stops the run.
export function numberEnv(name, fallback, min, max = Infinity) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return fallback;
  const v = parseFloat(raw);
  if (Number.isNaN(v) || v < min || v > max) {
    const range = max === Infinity ? `at least ${min}` : `between ${min} and ${max}`;
    throw new Error(`${name} must be a number ${range}, not ${raw}`);
  }
  return v;
}

// The fixtures, loaded once and shared read-only between VUs (a plain array would be copied into
// each one). `read` is the calling script's own `(path) => open(path)`: k6 resolves a relative
// path against the script whose code calls `open`, so a relative FIXTURES is resolved against the
// folder of the script being run, as it always was for `month_view.js`.
export function loadFixtures(read) {
  if (!__ENV.FIXTURES) {
    throw new Error('set FIXTURES to a JSON file of [{"calendarId","userId","token"}]');
  }
  return new SharedArray('fixtures', () => {
    const list = JSON.parse(read(__ENV.FIXTURES));
    if (!Array.isArray(list) || list.length === 0) {
      throw new Error(`${__ENV.FIXTURES} holds no fixtures`);
    }
    return list;
  });
}

// Zipf: the cumulative distribution over n indexes with exponent s.
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

// A draw of an index in [0, n): Zipf with exponent s (index i with probability proportional to
// 1/(i+1)^s, so the first indexes are hot), uniform when s is 0. The distribution is computed
// once per VU; a draw is a binary search for the first index whose cumulative probability
// exceeds a uniform number.
export function picker(n, s) {
  const cdf = s > 0 ? zipfCdf(n, s) : null;
  return () => {
    if (!cdf) return Math.floor(Math.random() * n);
    const u = Math.random();
    let lo = 0;
    let hi = cdf.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cdf[mid] > u) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  };
}

function monthStart(offset) {
  const now = new Date();
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + offset, 1)).toISOString();
}

// The windows every fixture is read in: MONTHS, else FROM/TO, else the current UTC month.
export const WINDOWS = (__ENV.MONTHS || `${__ENV.FROM || monthStart(0)}/${__ENV.TO || monthStart(1)}`)
  .split(',')
  .filter((w) => w.trim() !== '')
  .map((w) => {
    const [from, to] = w.trim().split('/');
    if (!from || !to) throw new Error(`MONTHS: "${w}" is not a from/to pair`);
    return { from, to };
  });

// The UTC months a window touches: the server reads one month bucket for each.
export function monthsCovering({ from, to }) {
  const start = new Date(from);
  const end = new Date(to).getTime();
  let n = 0;
  for (let m = start.getUTCMonth(); Date.UTC(start.getUTCFullYear(), m, 1) < end; m++) n++;
  return n;
}

// The contract query itself, so the load tests always send exactly what clients send (resolved
// against this file: k6 will resolve `open` against the module that calls it).
export const QUERY = open(import.meta.resolve('../month_view.graphql'));

// The same month view plus each event's version (the `expectedVersion` of a rename).
export const QUERY_WITH_VERSIONS = QUERY.replace('id title startTime', 'id version title startTime');

const RENAME = `mutation Rename($id: ID!, $v: Int!, $t: String!) {
  updateEvent(id: $id, expectedVersion: $v, input: { title: $t }) { id version }
}`;

// SQL statements the server sent for one request (from the x-debug-stats extension).
const sqlStatements = new Trend('sql_statements');
const sqlRows = new Trend('sql_rows');
const eventsReturned = new Counter('events_returned');
// Share of requests that failed any check (HTTP error, GraphQL errors, wrong calendar; in KPI
// mode also an answer without the x-debug-stats figures).
export const errors = new Rate('errors');
// Cache figures of each read (from the x-debug-stats extension): hit ratio = (l1 + l2) / (l1 + l2 + misses).
const l1Hits = new Counter('l1_hits');
const l2Hits = new Counter('l2_hits');
const cacheMisses = new Counter('cache_misses');
// Updates that committed, and those refused with VERSION_CONFLICT (another VU renamed the same
// event first: expected under concurrency, so not an error).
const writes = new Counter('writes');
const writeConflicts = new Counter('write_conflicts');
// The hit ratio as a Rate, for a threshold: key lookups, true for a hit in either tier (an answer
// from the whole-response cache counts its dependencies as hits, as the server reports it), false
// for a key found in neither. A month view looks up hundreds of keys, and a sample per key would
// load k6, which shares the server's cores: samples stand for KEYS_PER_SAMPLE lookups each, the
// remainders carried over per VU, so the ratio is exact but for fewer than KEYS_PER_SAMPLE keys per
// VU at the end.
const cacheHitRatio = new Rate('cache_hit_ratio');
const KEYS_PER_SAMPLE = 20;
let hitCarry = 0;
let missCarry = 0;
let kpis = false;

// Makes every read of this VU record what the KPI thresholds judge: `cache_hit_ratio`, and a
// failed check (`x-debug-stats figures`) for an answer without the figures, since k6 passes a
// threshold on a metric that got no samples at all. The scenarios call it at init;
// `month_view.js` does not, so that the benchmark's checks and cost per request stay what they
// were.
export function measureKpis() {
  kpis = true;
}

// The check a read adds in KPI mode (see `measureKpis`).
function figuresCheck(stats) {
  return kpis ? { 'x-debug-stats figures': () => !!stats } : {};
}

function addHitRatio(hits, misses) {
  hitCarry += hits;
  missCarry += misses;
  for (; hitCarry >= KEYS_PER_SAMPLE; hitCarry -= KEYS_PER_SAMPLE) cacheHitRatio.add(true);
  for (; missCarry >= KEYS_PER_SAMPLE; missCarry -= KEYS_PER_SAMPLE) cacheHitRatio.add(false);
}

// POSTs one GraphQL request to `url`/graphql, tagged `name`, as fixture `f`'s owner, with the
// debug-stats headers unless DEBUG_STATS is 0, and `headers`.
export function send(f, payload, name, url = BASE_URL, headers = {}) {
  const all = {
    'Content-Type': 'application/json',
    Authorization: `Bearer ${f.token}`,
    ...headers,
  };
  if (DEBUG_STATS) {
    all['x-debug-stats'] = '1';
    // Outside dev mode the figures are for operators only.
    if (__ENV.ADMIN_TOKEN) all['x-admin-token'] = __ENV.ADMIN_TOKEN;
  }
  return http.post(`${url}/graphql`, JSON.stringify(payload), { headers: all, tags: { name } });
}

function post(f, payload, name, url, headers) {
  const res = send(f, payload, name, url, headers);
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
  if (kpis) addHitRatio((stats.l1Hits || 0) + (stats.l2Hits || 0), stats.cacheMisses || 0);
}

// One month view read of fixture `f`'s calendar in window `w`, with its checks and figures;
// returns the parsed body. `opts`: `url` (default BASE_URL), `name` (the tag, default
// MonthView), `headers`.
export function readMonth(f, w, query, opts = {}) {
  const [res, body] = post(
    f,
    { query, variables: { calendarId: f.calendarId, from: w.from, to: w.to } },
    opts.name || 'MonthView',
    opts.url,
    opts.headers,
  );
  const stats = body && body.extensions && body.extensions.stats;
  const ok = check(res, {
    'status is 200': (r) => r.status === 200,
    'no errors': () => body !== null && !body.errors,
    'calendar id matches': () => body !== null && !!body.data && !!body.data.calendar && body.data.calendar.id === f.calendarId,
    ...figuresCheck(stats),
  });
  errors.add(!ok);
  addStats(stats);
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
// `opts.url` as for `readMonth`.
export function readMonthLight(f, w, opts = {}) {
  const res = send(
    f,
    { query: QUERY, variables: { calendarId: f.calendarId, from: w.from, to: w.to } },
    'MonthView',
    opts.url,
  );
  const text = typeof res.body === 'string' ? res.body : '';
  let stats;
  const at = text.lastIndexOf(',"extensions":');
  if (at !== -1) {
    try {
      const ext = JSON.parse(`{${text.slice(at + 1)}`).extensions;
      stats = ext && ext.stats;
    } catch (_) {
      // no figures for this one; the checks below judge the response
    }
  }
  const ok = check(res, {
    'status is 200': (r) => r.status === 200,
    'no errors': () => text.startsWith('{"data":{') && text.indexOf('"errors":') === -1,
    'calendar id matches': () => text.startsWith(`{"data":{"calendar":{"id":${JSON.stringify(f.calendarId)},`),
    ...figuresCheck(stats),
  });
  errors.add(!ok);
  addStats(stats);
  let n = 0;
  for (let i = text.indexOf('{"node":{'); i !== -1; i = text.indexOf('{"node":{', i + 9)) n++;
  eventsReturned.add(n);
}

// The events of a month view read with QUERY_WITH_VERSIONS (those with a version).
export function eventsOf(body) {
  const edges = (body && body.data && body.data.calendar && body.data.calendar.events &&
    body.data.calendar.events.edges) || [];
  return edges.map((e) => e.node).filter((n) => n && typeof n.version === 'number');
}

// The single events among `nodes`: an occurrence's id is `seriesId_originalStart`, and renaming
// one turns it into a new override row.
export function singlesOf(nodes) {
  return nodes.filter((n) => !String(n.id).includes('_'));
}

// Renames event `id`, at `version`, to `title` through `url`. A VERSION_CONFLICT counts in
// write_conflicts (another writer was first: expected under concurrency, not an error), a commit
// in writes. Returns `{committed, version, token}`: the new version and the consistency token
// (`extensions.consistencyToken`) after a commit; after a conflict, the version the server
// reports as current (`currentVersion`), when it does.
export function rename(f, id, version, title, url = BASE_URL) {
  const [res, out] = post(f, { query: RENAME, variables: { id, v: version, t: title } }, 'UpdateEvent', url);
  const errs = (out && out.errors) || [];
  const conflict = errs.length > 0 && errs.every((e) => e.extensions && e.extensions.code === 'VERSION_CONFLICT');
  if (conflict) {
    writeConflicts.add(1);
    errors.add(false);
    const current = errs[0].extensions.currentVersion;
    return { committed: false, version: typeof current === 'number' ? current : null, token: null };
  }
  const ok = check(res, {
    'update: status is 200': (r) => r.status === 200,
    'update: no errors': () => out !== null && errs.length === 0,
    'update: version bumped': () => !!out && !!out.data && !!out.data.updateEvent && out.data.updateEvent.version > version,
  });
  errors.add(!ok);
  if (!ok) {
    console.warn(`updateEvent ${id} v${version} failed: HTTP ${res.status} ${JSON.stringify(errs).slice(0, 400)}`);
    return { committed: false, version: null, token: null };
  }
  writes.add(1);
  const token = (out.extensions && out.extensions.consistencyToken) || null;
  return { committed: true, version: out.data.updateEvent.version, token };
}

// Renames one event of the calendar just read. Single events are preferred (see `singlesOf`);
// a page with occurrences only renames one of them.
function renameOne(f, body) {
  const nodes = eventsOf(body);
  if (nodes.length === 0) return; // nothing to rename in this window
  const singles = singlesOf(nodes);
  const pool = singles.length > 0 ? singles : nodes;
  const ev = pool[Math.floor(Math.random() * pool.length)];
  rename(f, ev.id, ev.version, `bench ${__VU}-${__ITER} ${Date.now()}`);
}

// One iteration of the month-view mix: a (fixture, window) item drawn by `pick` (item r is
// fixture floor(r / windows), window r % windows); with probability `writeRatio` a parsed read
// of it then a rename of one of its events, else a light read.
export function monthViewIteration(fixtures, pick, writeRatio) {
  const item = pick();
  const f = fixtures[Math.floor(item / WINDOWS.length)];
  const w = WINDOWS[item % WINDOWS.length];
  if (writeRatio > 0 && Math.random() < writeRatio) {
    renameOne(f, readMonth(f, w, QUERY_WITH_VERSIONS));
  } else {
    readMonthLight(f, w);
  }
}

// How long a scenario's load lasts: DURATION, by default 30 s.
export const DURATION = __ENV.DURATION || '30s';

// A constant-VUs k6 scenario: `vus` users unless VUS says otherwise, for DURATION, with the other
// fields of `extra` (`exec`, ...).
export function constantVus(vus, extra = {}) {
  return { executor: 'constant-vus', vus: numberEnv('VUS', vus, 1), duration: DURATION, ...extra };
}

// The month-view mix of `read_heavy` and `write_mix`: (fixture, window) items drawn by Zipf (ZIPF,
// default 1.1; 0: uniform), `writeRatio` of the iterations writing, 20 VUs by default, the KPIs
// and `thresholds`. Returns the script's `options` and its default function `iterate`.
export function monthViewMix(name, fixtures, writeRatio, thresholds = {}) {
  const pick = picker(fixtures.length * WINDOWS.length, numberEnv('ZIPF', 1.1, 0));
  measureKpis();
  return {
    options: kpiOptions({ [name]: constantVus(20) }, thresholds),
    iterate: () => monthViewIteration(fixtures, pick, writeRatio),
  };
}

// The KPIs every scenario is held to (loadtests/README.md says why each statistic): latency of
// the month-view reads, SQL statements per read, the cache hit ratio over key lookups, failed
// checks.
const KPI_THRESHOLDS = {
  'http_req_duration{name:MonthView}': ['p(95)<200', 'p(99)<500'],
  sql_statements: ['avg<5'],
  cache_hit_ratio: ['rate>0.8'],
  errors: ['rate<0.01'],
};

// A scenario script's options: its k6 `scenarios`, the KPI thresholds and its own `thresholds`,
// and any other options in `extra`.
export function kpiOptions(scenarios, thresholds = {}, extra = {}) {
  if (!DEBUG_STATS) {
    throw new Error('the scenarios read SQL statements and cache lookups from x-debug-stats: unset DEBUG_STATS');
  }
  return {
    ...extra,
    scenarios,
    summaryTrendStats: TREND_STATS,
    thresholds: { ...KPI_THRESHOLDS, ...thresholds },
  };
}

// The statistic a threshold expression tests: `p(95)` of `p(95)<200`.
function statOf(expression) {
  return expression.split(/[<>=!]/)[0].trim();
}

// A plain-text summary in the spirit of k6's default one. Returning anything from handleSummary
// replaces the default, and the jslib that reproduces it is fetched over the network at run time,
// which a benchmark machine may not allow; so the few lines needed live here. With
// `withThresholds`, it ends with every threshold, passed (`ok`) or crossed (`FAIL`), and the
// value it was judged on.
function textSummary(data, withThresholds) {
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
      text = TREND_STATS
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
  if (withThresholds) {
    lines.push('', '  thresholds:');
    for (const name of Object.keys(data.metrics).sort()) {
      const m = data.metrics[name];
      const thresholds = m.thresholds || {};
      for (const expression of Object.keys(thresholds).sort()) {
        const stat = statOf(expression);
        const value = stat in m.values ? ` (${stat} = ${fmt(m, m.values[stat])})` : '';
        lines.push(`  ${thresholds[expression].ok ? 'ok  ' : 'FAIL'} ${name} ${expression}${value}`);
      }
    }
  }
  return lines.join('\n') + '\n';
}

// handleSummary's outputs: the text summary on stdout (`withThresholds`: see `textSummary`), and
// the summary as JSON at SUMMARY when it is set.
export function summaryOutputs(data, withThresholds = false) {
  const out = { stdout: textSummary(data, withThresholds) };
  if (__ENV.SUMMARY) {
    out[__ENV.SUMMARY] = JSON.stringify(data, null, 2);
  }
  return out;
}
