// k6 load test of the month view: one GraphQL query per iteration that reads a calendar, a page of
// its events in a window, and each event's organizer, attendees and reserved resources. It is the
// benchmarks' instrument (`cargo xtask bench`, `bench-cluster`): it measures and never fails; the
// scripts of scenarios/ hold the same reads to the KPIs.
//
// Environment:
//   FIXTURES  path to a JSON array of {"calendarId", "userId", "token"} (required; a relative
//             path is resolved against this script's folder)
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
// Run: k6 run -e FIXTURES=$PWD/target/bench/fixtures.json loadtests/month_view.js
// (k6 also reads these from the process environment, which is how `cargo xtask bench` passes them.)

import {
  TREND_STATS,
  WINDOWS,
  loadFixtures,
  monthViewIteration,
  numberEnv,
  picker,
  summaryOutputs,
} from './lib/common.js';

const fixtures = loadFixtures((path) => open(path));
const ZIPF = numberEnv('ZIPF', 0, 0);
const WRITE_RATIO = numberEnv('WRITE_RATIO', 0, 0, 1);
const pickIndex = picker(fixtures.length * WINDOWS.length, ZIPF);

export const options = {
  scenarios: {
    month_view: {
      executor: 'constant-vus',
      vus: parseInt(__ENV.VUS || '20', 10),
      duration: __ENV.DURATION || '30s',
    },
  },
  summaryTrendStats: TREND_STATS,
  // Thresholds that always pass, only so that the summary carries the reads' own figures
  // (k6 reports a tag's sub-metric only when a threshold names it).
  thresholds: {
    'http_req_duration{name:MonthView}': ['max>=0'],
    'http_reqs{name:MonthView}': ['count>=0'],
    'http_req_duration{name:UpdateEvent}': ['max>=0'],
  },
};

export default function () {
  monthViewIteration(fixtures, pickIndex, WRITE_RATIO);
}

// The script prints its own short text summary (see `summaryOutputs`).
export function handleSummary(data) {
  return summaryOutputs(data);
}
