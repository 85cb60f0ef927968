//! Integration tests of `cal-cache`, one binary. Tests that need Redis start their own
//! `redis-server` child (or a whole Redis Cluster) on free ports (killed on drop) and use their
//! own key prefix; nothing here touches the Redis that may run on 6379.

mod helpers;

mod batch;
mod cluster;
mod degraded;
mod local;
mod race;
mod stampede;
