// Scenario read_heavy: month views only, hot calendars first (Zipf), held to the KPIs: read
// latency p95 < 200 ms and p99 < 500 ms, fewer than 5 SQL statements per read on average, a
// cache hit ratio above 80 % of key lookups, failed checks under 1 %. k6 exits with 99 when one
// is crossed.
//
// Environment (see ../lib/common.js for BASE_URL, FIXTURES, FROM/TO, MONTHS, ADMIN_TOKEN, SUMMARY):
//   VUS       virtual users (default 20)
//   DURATION  how long to run (default 30s)
//   ZIPF      Zipf exponent over the (fixture, window) items, first fixtures hot (default 1.1;
//             0: uniform)
//
// Run: cargo xtask loadtest --scenario read_heavy (or k6 run with the variables above).

import { loadFixtures, monthViewMix, summaryOutputs } from '../lib/common.js';

const mix = monthViewMix('read_heavy', loadFixtures((path) => open(path)), 0);

export const options = mix.options;

export default mix.iterate;

export function handleSummary(data) {
  return summaryOutputs(data, true);
}
