// Scenario freshness: a write through one instance, read through another. Beside a read load
// (read_heavy's month views through BASE_URL), one prober VU repeats, over the instances in turn
// (writer i, reader i + 1):
//   1. reads the hot calendar's month view (the first fixture's) through the reader, which caches
//      it, and picks one of its single events;
//   2. renames it through the writer and notes the moment the acknowledgement arrives;
//   3. on one round in two, polls the reader without a consistency token until the new title
//      shows, and records in `staleness_ms` the time from the acknowledgement to the start of
//      that first fresh read (resolution: POLL_MS plus one read);
//      on the other, reads the reader once with the write's token (`x-consistency-token`) and
//      counts in `stale_with_token` an answer without the new title.
// The two probes alternate because a token read makes the reader wait until it has applied the
// write, after which a read without the token proves nothing.
//
// Thresholds: the KPIs on the read load (read latency p95 < 200 ms, p99 < 500 ms, SQL
// statements per read < 5 on average, hit ratio > 80 % of key lookups, failed checks < 1 %);
// staleness_ms max < INVALIDATION_LIVENESS_MS: without a token an instance serves an old value
// for at most the liveness bound (an instance that has not heard the stream for that long
// distrusts and flushes its L1, README "Across instances"), for every read, hence `max` rather
// than a percentile; stale_with_token count == 0: with the token, read-your-writes holds on any
// instance; writes count > 0, so that the probes measured something.
//
// Environment (see ../lib/common.js for BASE_URL, INSTANCE_URLS, FIXTURES, FROM/TO, MONTHS,
// ADMIN_TOKEN, SUMMARY):
//   INSTANCE_URLS  at least two instances (required)
//   VUS            reading virtual users besides the prober (default 10)
//   DURATION       how long to run (default 30s)
//   ZIPF           Zipf exponent of the read load (default 1.1)
//   POLL_MS        pause between two polls of the reader (default 10)
//   PAUSE_MS       pause between two rounds of the prober (default 500)
//   INVALIDATION_LIVENESS_MS  the instances' liveness bound (default 2000, the server's default)
// The hot calendar is read in the first window (FROM/TO, or the first of MONTHS).
//
// Run: cargo xtask loadtest --scenario freshness

import { check, sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import {
  BASE_URL,
  DURATION,
  INSTANCE_URLS,
  QUERY_WITH_VERSIONS,
  WINDOWS,
  constantVus,
  errors,
  eventsOf,
  kpiOptions,
  loadFixtures,
  measureKpis,
  monthViewIteration,
  numberEnv,
  picker,
  readMonth,
  rename,
  singlesOf,
  summaryOutputs,
} from '../lib/common.js';

if (INSTANCE_URLS.length < 2) {
  throw new Error('freshness writes through one instance and reads through another: set INSTANCE_URLS to two or more');
}

const fixtures = loadFixtures((path) => open(path));
const pick = picker(fixtures.length * WINDOWS.length, numberEnv('ZIPF', 1.1, 0));
const HOT = fixtures[0];
const WINDOW = WINDOWS[0];
const POLL_MS = numberEnv('POLL_MS', 10, 0);
const PAUSE_MS = numberEnv('PAUSE_MS', 500, 0);
const LIVENESS_MS = numberEnv('INVALIDATION_LIVENESS_MS', 2000, 1);
// A reader still stale this long after the acknowledgement is recorded as this (far past the
// bound) rather than polled for ever.
const GIVE_UP_MS = 5 * LIVENESS_MS;
measureKpis();

const staleness = new Trend('staleness_ms', true);
const staleWithToken = new Counter('stale_with_token');

export const options = kpiOptions(
  {
    readers: constantVus(10, { exec: 'read' }),
    // One prober, whatever VUS says.
    prober: { executor: 'constant-vus', vus: 1, duration: DURATION, exec: 'probe' },
  },
  {
    staleness_ms: [`max<${LIVENESS_MS}`],
    stale_with_token: ['count==0'],
    writes: ['count>0'],
  },
);

export function setup() {
  const body = readMonth(HOT, WINDOW, QUERY_WITH_VERSIONS, { url: BASE_URL, name: 'Setup' });
  if (singlesOf(eventsOf(body)).length === 0) {
    throw new Error(`calendar ${HOT.calendarId} has no single event in ${WINDOW.from} .. ${WINDOW.to} to rename`);
  }
}

export function read() {
  monthViewIteration(fixtures, pick, 0);
}

// The title event `id` has in a month view body (undefined when it is not there).
function titleOf(body, id) {
  const node = eventsOf(body).find((n) => n.id === id);
  return node && node.title;
}

function readThrough(url, headers) {
  return readMonth(HOT, WINDOW, QUERY_WITH_VERSIONS, { url, name: 'Probe', headers });
}

// Milliseconds from `acked` to the start of the first read through `url` that shows `title`.
function pollUntilFresh(url, id, title, acked) {
  for (;;) {
    const started = Date.now();
    if (titleOf(readThrough(url), id) === title) return started - acked;
    if (started - acked >= GIVE_UP_MS) {
      console.warn(`${url} still served the old title of event ${id} ${started - acked} ms after the write`);
      return started - acked;
    }
    sleep(POLL_MS / 1000);
  }
}

// The prober's round, counted across its iterations (one VU runs them all).
let round = 0;

export function probe() {
  const n = INSTANCE_URLS.length;
  const writer = INSTANCE_URLS[round % n];
  const reader = INSTANCE_URLS[(round + 1) % n];
  const withToken = Math.floor(round / n) % 2 === 1;
  round++;

  const singles = singlesOf(eventsOf(readThrough(reader)));
  if (singles.length > 0) {
    const ev = singles[Math.floor(Math.random() * singles.length)];
    const title = `fresh ${__ITER} ${Date.now()}`;
    // A conflict (the reader had not yet heard an earlier round's write) is counted and skipped.
    const r = rename(HOT, ev.id, ev.version, title, writer);
    const acked = Date.now();
    if (r.committed && withToken) {
      const ok = check(r, { 'update: consistency token': (x) => !!x.token });
      errors.add(!ok);
      if (ok) {
        const fresh = titleOf(readThrough(reader, { 'x-consistency-token': r.token }), ev.id) === title;
        staleWithToken.add(fresh ? 0 : 1);
        if (!fresh) console.warn(`${reader} served the old title of event ${ev.id} to a read with token ${r.token}`);
      }
    } else if (r.committed) {
      staleness.add(pollUntilFresh(reader, ev.id, title, acked));
    }
  }
  sleep(PAUSE_MS / 1000);
}

export function handleSummary(data) {
  return summaryOutputs(data, true);
}
