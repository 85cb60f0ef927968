// Scenario write_mix: the month views of read_heavy with a share of writes (the 1-5 %):
// a writing iteration reads its calendar's month view with the events' versions (a read like
// any other, held to the same KPIs), then renames one of its events with `updateEvent`, which
// invalidates that calendar on every instance. Held to the KPIs (read latency p95 < 200 ms,
// p99 < 500 ms, SQL statements per read < 5 on average, hit ratio > 80 % of key lookups, failed
// checks < 1 %), and to at least one committed write, so that the mix really mixed.
//
// Environment (see ../lib/common.js for BASE_URL, FIXTURES, FROM/TO, MONTHS, ADMIN_TOKEN, SUMMARY):
//   VUS          virtual users (default 20)
//   DURATION     how long to run (default 30s)
//   ZIPF         Zipf exponent over the (fixture, window) items (default 1.1; 0: uniform)
//   WRITE_RATIO  share of iterations that write (default 0.05)
//
// Run: cargo xtask loadtest --scenario write_mix [--env WRITE_RATIO=0.01]

import { loadFixtures, monthViewMix, numberEnv, summaryOutputs } from '../lib/common.js';

const mix = monthViewMix(
  'write_mix',
  loadFixtures((path) => open(path)),
  numberEnv('WRITE_RATIO', 0.05, 0, 1),
  { writes: ['count>0'] },
);

export const options = mix.options;

export default mix.iterate;

export function handleSummary(data) {
  return summaryOutputs(data, true);
}
