// Scenario stampede: many VUs read one hot calendar's month view (the first fixture's) while a
// writer renames one of its events every INVALIDATE_EVERY, so every instance's copy of that month
// view is invalidated again and again under load. Single-flight must turn each invalidation into
// one database load per stale key per instance, not one per reader: the scenario reads every
// instance's /metrics before (setup) and after (teardown) and records, per instance, the keys it
// loaded from the database per invalidation.
//
// What is counted: keys of the kinds `calendar_summary` and `month_bucket` loaded from the
// database (`cal_cache_hits_total` + `cal_cache_misses_total`, `tier="db"`; the leader of a
// single flight counts, its followers do not), over the invalidations
// (`cal_invalidation_published_total` summed over the instances: each write is one change-log
// row, published once and applied by every instance). A rename makes stale the calendar's
// summary (its version moves), its month buckets (keyed by that version: M new keys for a window
// of M months), and the renamed event's attendees and reservations. Only the first two kinds are
// counted: the view holds an attendee and a reservation key for every one of its events, which
// live 120 s, and their refreshes under the same kinds would be counted as if the stampede had
// caused them; a summary or a bucket is reloaded by the next invalidation long before its TTL
// (600 s, 300 s). With single-flight an instance loads 1 + M such keys per invalidation (fewer
// when another instance filled Redis first); the bound is twice that, for the one overlap the
// design allows: a load that began before the instance applied the invalidation is never joined
// by a reader that starts after it (a follower only joins a flight newer than the last
// invalidation it knows), so a key can be loaded twice for one invalidation. Without
// single-flight every reader that misses during the reload loads them itself, and the figure
// grows with the readers.
//
// Thresholds: the KPIs (read latency p95 < 200 ms, p99 < 500 ms, SQL statements per read < 5 on
// average, hit ratio > 80 % of key lookups, failed checks < 1 %); db_loads_per_invalidation
// max <= 2 x (1 + M) over the instances; invalidations count > 0 (the writer did invalidate).
//
// Environment (see ../lib/common.js for BASE_URL, INSTANCE_URLS, FIXTURES, FROM/TO, ADMIN_TOKEN,
// SUMMARY):
//   INSTANCE_URLS     every instance behind BASE_URL: each one's /metrics is read (with a
//                     single server, leave it unset)
//   VUS               reading virtual users (default 50)
//   DURATION          how long to run (default 30s)
//   INVALIDATE_EVERY  time between two renames (default 2s)
// The hot calendar is read in the first window (FROM/TO, or the first of MONTHS).
//
// Run: cargo xtask loadtest --scenario stampede

import http from 'k6/http';
import { sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import {
  BASE_URL,
  DURATION,
  INSTANCE_URLS,
  QUERY_WITH_VERSIONS,
  WINDOWS,
  constantVus,
  eventsOf,
  kpiOptions,
  loadFixtures,
  measureKpis,
  monthsCovering,
  readMonthLight,
  rename,
  send,
  singlesOf,
  summaryOutputs,
} from '../lib/common.js';

const fixtures = loadFixtures((path) => open(path));
const HOT = fixtures[0];
const WINDOW = WINDOWS[0];
// The stale keys one rename leaves in the counted kinds (see above), twice.
const BOUND = 2 * (1 + monthsCovering(WINDOW));
const COUNTED_KINDS = ['calendar_summary', 'month_bucket'];
measureKpis();

const loadsPerInvalidation = new Trend('db_loads_per_invalidation');
const invalidations = new Counter('invalidations');

export const options = kpiOptions(
  {
    readers: constantVus(50, { exec: 'read' }),
    writer: {
      executor: 'constant-arrival-rate',
      rate: 1,
      timeUnit: __ENV.INVALIDATE_EVERY || '2s',
      duration: DURATION,
      preAllocatedVUs: 1,
      maxVUs: 1,
      exec: 'invalidate',
    },
  },
  {
    db_loads_per_invalidation: [`max<=${BOUND}`],
    invalidations: ['count>0'],
  },
  // Setup waits for the instances' start-up warming to finish (up to 30 s) before it counts.
  { setupTimeout: '90s' },
);

// Sum of a metric's samples whose labels contain every one of `labels` (Prometheus text).
function promSum(text, name, labels) {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    let labelPart = '';
    let value;
    if (rest.startsWith('{')) {
      const end = rest.indexOf('}');
      if (end === -1) continue;
      labelPart = rest.slice(1, end);
      value = rest.slice(end + 1);
    } else if (rest.startsWith(' ')) {
      value = rest;
    } else {
      continue; // a longer metric name
    }
    if (!labels.every((l) => labelPart.includes(l))) continue;
    const v = parseFloat(value.trim().split(/\s+/)[0]);
    if (!Number.isNaN(v)) sum += v;
  }
  return sum;
}

// One instance's counters: keys of the counted kinds loaded from the database, rows published.
function counters(url) {
  const res = http.get(`${url}/metrics`, { tags: { name: 'Metrics' } });
  if (res.status !== 200) throw new Error(`GET ${url}/metrics answered ${res.status}`);
  const text = res.body;
  let loads = 0;
  for (const kind of COUNTED_KINDS) {
    for (const metric of ['cal_cache_hits_total', 'cal_cache_misses_total']) {
      loads += promSum(text, metric, ['tier="db"', `kind="${kind}"`]);
    }
  }
  return { loads, published: promSum(text, 'cal_invalidation_published_total', []) };
}

// A month view read that must succeed (setup's reads are tagged apart from the measured ones).
function setupRead(url, query) {
  const payload = { query, variables: { calendarId: HOT.calendarId, from: WINDOW.from, to: WINDOW.to } };
  const res = send(HOT, payload, 'Setup', url);
  if (res.status !== 200 || String(res.body).indexOf('"errors":') !== -1) {
    throw new Error(`the hot calendar's month view through ${url}: HTTP ${res.status} ${String(res.body).slice(0, 300)}`);
  }
  return res;
}

// The event to rename and its version; every instance warm; the counters once the instances have
// stopped loading (start-up warming, CACHE_WARM_CALENDARS, runs in the background after /ready).
export function setup() {
  const singles = singlesOf(eventsOf(setupRead(BASE_URL, QUERY_WITH_VERSIONS).json()));
  if (singles.length === 0) {
    throw new Error(`calendar ${HOT.calendarId} has no single event in ${WINDOW.from} .. ${WINDOW.to} to rename`);
  }
  for (const url of INSTANCE_URLS) {
    setupRead(url, QUERY_WITH_VERSIONS);
    setupRead(url, QUERY_WITH_VERSIONS);
  }
  let before = INSTANCE_URLS.map(counters);
  for (let waited = 0; ; waited++) {
    sleep(1);
    const now = INSTANCE_URLS.map(counters);
    if (now.every((c, i) => c.loads === before[i].loads)) break;
    if (waited >= 30) throw new Error('the instances kept loading from the database for 30 s before the stampede');
    before = now;
  }
  return { event: { id: singles[0].id, version: singles[0].version }, before };
}

export function read() {
  readMonthLight(HOT, WINDOW);
}

// The writer's version of the event: the one setup read, then each rename's answer (this
// scenario's one VU runs every iteration).
let version = null;

export function invalidate(data) {
  const current = version === null ? data.event.version : version;
  const r = rename(HOT, data.event.id, current, `stampede ${__ITER} ${Date.now()}`);
  // A conflict answers the version the database holds, which the next rename expects.
  if (r.version !== null) version = r.version;
}

export function teardown(data) {
  const after = INSTANCE_URLS.map(counters);
  const total = after.reduce((n, c, i) => n + c.published - data.before[i].published, 0);
  invalidations.add(total);
  if (total === 0) return; // the invalidations threshold fails the run
  after.forEach((c, i) => {
    const loads = c.loads - data.before[i].loads;
    const per = loads / total;
    loadsPerInvalidation.add(per);
    console.log(
      `${INSTANCE_URLS[i]}: ${loads} ${COUNTED_KINDS.join('/')} keys loaded from the database over ` +
        `${total} invalidations: ${per.toFixed(2)} per invalidation (bound ${BOUND})`,
    );
  });
}

export function handleSummary(data) {
  return summaryOutputs(data, true);
}
