//! The API over a Redis Cluster of the test's own (three primaries, three replicas) as its only
//! shared tier: the month view, whose keys span every shard, is served warm without SQL, and a
//! write is seen by the next read.

use crate::common::*;
use cal_test_support::RedisCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_view_over_a_redis_cluster_is_warm_without_sql_and_fresh_after_a_write() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let nodes: Vec<String> = cluster.nodes_list().split(',').map(str::to_owned).collect();
    let app = TestApp::spawn_full(
        |_| {},
        |c| {
            c.redis_url = None;
            c.redis_cluster_nodes = nodes;
            // No L1: the warm view comes from the cluster (key by key, or whole from the
            // shared response tier), not from process memory.
            c.l1_enabled = false;
        },
    )
    .await;
    let w = world(&app, 40, 6).await;
    let warm = cold_then_warm(&app, &w).await;
    let stats = &warm.0["extensions"]["stats"];
    assert!(
        stats["l2Hits"].as_u64().unwrap() > 0 || stats["responseCacheHit"] == true,
        "served by the cluster: {stats}"
    );
    assert_eq!(app.tiers.cache.status().epoch, 0);

    rename(&app, w.owner.id, w.events[0].id, "Renamed over the cluster").await;
    let after = app
        .gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await;
    assert!(
        after
            .data()
            .to_string()
            .contains("Renamed over the cluster"),
        "the write is read back at once"
    );
}
