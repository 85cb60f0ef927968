//! Deterministic seed data (demo and large scale). Filled in below.
