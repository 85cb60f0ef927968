//! A Redis Cluster of a test's own: six `redis-server --cluster-enabled yes` processes on
//! loopback (three primaries, three replicas) in a temporary folder, which the test may kill,
//! pause, resume and fail over (the shared Redis on 6379 must never be disturbed by a failure
//! test).
//!
//! Everything is asked of the nodes with `redis-cli` (from PATH, like `redis-server`), and the
//! cluster's layout is read from `CLUSTER NODES`: one line per node, which parses simply, where
//! `CLUSTER SLOTS` in redis-cli's non-tty output is a flat list of words. Which replica serves
//! which primary is whatever `redis-cli --cluster create` chose (it shuffles replicas for
//! "anti-affinity"), so ask [`RedisCluster::replica_of`] rather than assume. After a node is
//! killed or paused every question goes to a node that is neither.
//!
//! The methods block (they poll `redis-cli`): from an async test, call them inside
//! `tokio::task::block_in_place` (multi-threaded runtime) or `spawn_blocking`.

use std::hash::BuildHasher;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Three primaries and one replica each.
const NODES: usize = 6;
/// Redis puts a node's cluster bus on its client port + 10000 (unless `cluster-port` says
/// otherwise, which `redis-cli --cluster create`'s `CLUSTER MEET` would not know of).
const BUS_OFFSET: u16 = 10000;
/// Client ports are drawn from here, so that they and their bus ports (up to 32000) stay below
/// Linux's default ephemeral range (32768-60999): every other test server binds port 0, and
/// every client connection takes a local port, from that range.
const PORTS: std::ops::RangeInclusive<u16> = 12000..=22000;
/// How long the cluster may take to form, to fail over, to agree.
const DEADLINE: Duration = Duration::from_secs(30);
/// How long one `redis-cli` call may take: a node that does not answer (paused, or wedged)
/// must fail the test rather than hang it.
const CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// The number of hash slots.
const SLOTS: u16 = 16384;

#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    /// The temporary folder: each node's `nodes-<port>.conf`, `node-<port>.log` and
    /// `dump-<port>.rdb` (what a replica's full sync writes). Kept after a failing test, for
    /// reading.
    dir: PathBuf,
}

#[derive(Debug)]
struct Node {
    port: u16,
    /// `None` once killed.
    child: Option<Child>,
    /// Stopped with SIGSTOP ([`RedisCluster::pause`]): it answers nothing until resumed.
    paused: AtomicBool,
}

impl RedisCluster {
    /// Starts 3 primaries + 3 replicas (`redis-server --cluster-enabled yes`, each with its own
    /// `--cluster-config-file` in a fresh temporary folder, `--cluster-node-timeout 1000`, no
    /// persistence, no delay before a full sync, on 127.0.0.1), joins them with
    /// `redis-cli --cluster create … --cluster-replicas 1 --cluster-yes`, and waits until every
    /// node reports `cluster_state:ok` and every replica `master_link_status:up` (about 2 s).
    pub fn start() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!(
            "cal-redis-cluster-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        // The struct exists before anything is waited for, so that a failed start still kills
        // what it started (on drop).
        let mut cluster = RedisCluster {
            nodes: Vec::with_capacity(NODES),
            dir,
        };
        for port in pick_ports() {
            let child = cluster.spawn_node(port);
            cluster.nodes.push(Node {
                port,
                child: Some(child),
                paused: AtomicBool::new(false),
            });
        }
        for i in 0..NODES {
            cluster.wait_listening(i);
        }

        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create").args(&addrs).args([
            "--cluster-replicas",
            "1",
            "--cluster-yes",
        ]);
        if let Err(e) = run(create, DEADLINE) {
            panic!(
                "redis-cli --cluster create failed (node logs in {}): {e}",
                cluster.dir.display()
            );
        }
        // `--cluster create` waits for the join, not for the replicas' first sync, and a node
        // may report the state of the cluster a moment after another.
        cluster.wait_until("every node cluster_state:ok, 3 replicas linked up", || {
            cluster.health(Some(NODES / 2))
        });
        cluster
    }

    /// `127.0.0.1:P1,127.0.0.1:P2,…`: the client addresses of all six nodes (the value of
    /// `REDIS_CLUSTER_NODES`), killed ones included.
    pub fn nodes_list(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client port of node `node` (0..6); its cluster bus is on that + 10000.
    pub fn port(&self, node: usize) -> u16 {
        self.node(node).port
    }

    /// The index of the node that is the primary for `slot` now, as `CLUSTER NODES` of a live
    /// node says. A primary flagged `fail`, or one this cluster killed, owns nothing: while the
    /// slot has no other owner (its primary died and a replica is being promoted) this waits,
    /// for up to 30 s. A paused primary the cluster has not yet flagged `fail` is still the
    /// owner.
    pub fn primary_for_slot(&self, slot: u16) -> usize {
        assert!(slot < SLOTS, "slot {slot}: there are {SLOTS} slots");
        self.wait_until(&format!("a live primary for slot {slot}"), || {
            let asked = self.first_live();
            let (raw, view) = self.view(asked)?;
            view.iter()
                .filter(|l| l.has("master") && !l.has("fail") && l.owns(slot))
                .find_map(|l| self.index_of(l.port).filter(|&i| !self.is_killed(i)))
                .ok_or_else(|| format!("CLUSTER NODES of node {asked}:\n{raw}"))
        })
    }

    /// The index of a replica of primary `primary` (the cluster has one each; a paused one
    /// counts, a killed one does not), from `CLUSTER NODES` of a live node. Waits up to 30 s
    /// for one: right after a takeover the old primary becomes the new one's replica only once
    /// it has heard of it.
    pub fn replica_of(&self, primary: usize) -> usize {
        let port = self.port(primary);
        self.wait_until(
            &format!("a replica of node {primary} (port {port})"),
            || {
                let asked = self.first_live();
                let (raw, view) = self.view(asked)?;
                let of = view.iter().find(|l| l.port == port).ok_or_else(|| {
                    format!("port {port} is not in CLUSTER NODES of node {asked}:\n{raw}")
                })?;
                let replicas: Vec<usize> = view
                    .iter()
                    .filter(|l| l.has("slave") && l.master_id.as_deref() == Some(of.id.as_str()))
                    .filter_map(|l| self.index_of(l.port))
                    .filter(|&i| !self.is_killed(i))
                    .collect();
                // One that answers, if there is one.
                replicas
                    .iter()
                    .copied()
                    .find(|&i| !self.is_paused(i))
                    .or(replicas.first().copied())
                    .ok_or_else(|| format!("CLUSTER NODES of node {asked}:\n{raw}"))
            },
        )
    }

    /// Kills node `node` (SIGKILL): it is gone, and everything it held with it. Killing it again
    /// does nothing.
    pub fn kill(&mut self, node: usize) {
        let n = self.node(node);
        let paused = n.paused.swap(false, Ordering::Relaxed);
        let Some(mut child) = self.nodes[node].child.take() else {
            return;
        };
        if paused {
            // A stopped process dies of SIGKILL too, but thaw it so nothing lingers half-dead.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Freezes node `node` (SIGSTOP): its connections stay open and nothing is answered; after
    /// the node timeout (1 s) the others flag it `fail?`, then `fail`, and a paused primary's
    /// replica takes over its slots. Nothing here asks a paused node anything.
    pub fn pause(&self, node: usize) {
        self.signal(node, "-STOP");
        self.nodes[node].paused.store(true, Ordering::Relaxed);
    }

    /// Thaws a paused node (SIGCONT). A primary that was failed over meanwhile comes back as a
    /// replica of its successor.
    pub fn resume(&self, node: usize) {
        self.signal(node, "-CONT");
        self.nodes[node].paused.store(false, Ordering::Relaxed);
    }

    /// `CLUSTER FAILOVER TAKEOVER` on `replica` (promoted at once, without its primary's
    /// agreement, which works with the primary paused), then waits until it reports
    /// `role:master` in `INFO replication`, and every live node reports `cluster_state:ok` and
    /// lists `replica` as a primary owning the slots it says it owns.
    pub fn takeover(&self, replica: usize) {
        let answer = self.cli(replica, &["CLUSTER", "FAILOVER", "TAKEOVER"]);
        assert_eq!(
            answer.trim(),
            "OK",
            "CLUSTER FAILOVER TAKEOVER on node {replica} (port {})",
            self.port(replica)
        );
        let port = self.port(replica);
        self.wait_until(
            &format!("node {replica} (port {port}) owning its old primary's slots everywhere"),
            || {
                let repl = self.try_cli(replica, &["INFO", "replication"])?;
                if field(&repl, "role") != Some("master") {
                    return Err(format!("INFO replication of node {replica}:\n{repl}"));
                }
                let (raw, own) = self.view(replica)?;
                let me = own
                    .iter()
                    .find(|l| l.has("myself"))
                    .filter(|l| l.has("master") && !l.slots.is_empty())
                    .ok_or_else(|| format!("CLUSTER NODES of node {replica}:\n{raw}"))?;
                for i in self.live() {
                    let info = self.try_cli(i, &["CLUSTER", "INFO"])?;
                    if field(&info, "cluster_state") != Some("ok") {
                        return Err(format!("CLUSTER INFO of node {i}:\n{info}"));
                    }
                    let (raw, view) = self.view(i)?;
                    let agrees = view.iter().any(|l| {
                        l.port == port && l.has("master") && !l.has("fail") && l.slots == me.slots
                    });
                    if !agrees {
                        return Err(format!(
                            "node {i} does not list node {replica} with slots {:?}; its CLUSTER \
                             NODES:\n{raw}",
                            me.slots
                        ));
                    }
                }
                Ok(())
            },
        );
    }

    /// Waits (up to 30 s) until every live node reports `cluster_state:ok` and every live
    /// replica `master_link_status:up`: after a failover, or after a resumed node rejoined.
    pub fn wait_healthy(&self) {
        self.wait_until(
            "every live node cluster_state:ok, replicas linked up",
            || self.health(None),
        );
    }

    /// Runs `redis-cli -e -p <port of node> <args…>` and returns its stdout (raw replies, one a
    /// line), asserting that the node is live and that the command succeeded (`-e`: an error
    /// reply fails too).
    pub fn cli(&self, node: usize, args: &[&str]) -> String {
        assert!(
            !self.is_killed(node),
            "redis-cli {args:?} on node {node}: it was killed"
        );
        assert!(
            !self.is_paused(node),
            "redis-cli {args:?} on node {node}: it is paused, it would not answer"
        );
        self.try_cli(node, args)
            .unwrap_or_else(|e| panic!("on node {node}: {e}"))
    }

    fn try_cli(&self, node: usize, args: &[&str]) -> Result<String, String> {
        let mut c = Command::new("redis-cli");
        c.args(["-e", "-p", &self.port(node).to_string()])
            .args(args);
        run(c, CLI_TIMEOUT)
    }

    /// `CLUSTER NODES` of node `asked`: the text (for messages) and its lines.
    fn view(&self, asked: usize) -> Result<(String, Vec<NodeLine>), String> {
        let raw = self.try_cli(asked, &["CLUSTER", "NODES"])?;
        let lines = parse_cluster_nodes(&raw)
            .map_err(|e| format!("CLUSTER NODES of node {asked}: {e}:\n{raw}"))?;
        Ok((raw, lines))
    }

    /// `Ok` when every live node reports `cluster_state:ok` and every live replica is linked
    /// to its primary (and, with `replicas`, there are that many).
    fn health(&self, replicas: Option<usize>) -> Result<(), String> {
        let mut seen = 0;
        for i in self.live() {
            let info = self.try_cli(i, &["CLUSTER", "INFO"])?;
            if field(&info, "cluster_state") != Some("ok") {
                return Err(format!("CLUSTER INFO of node {i}:\n{info}"));
            }
            let repl = self.try_cli(i, &["INFO", "replication"])?;
            if field(&repl, "role") == Some("slave") {
                seen += 1;
                if field(&repl, "master_link_status") != Some("up") {
                    return Err(format!("INFO replication of node {i}:\n{repl}"));
                }
            }
        }
        match replicas {
            Some(n) if n != seen => Err(format!("{seen} replicas, not {n}")),
            _ => Ok(()),
        }
    }

    /// Polls `probe` every 20 ms until it gives a value, for up to [`DEADLINE`]; then fails
    /// with `what` and the probe's last word.
    fn wait_until<T>(&self, what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match probe() {
                Ok(v) => return v,
                Err(last) => {
                    assert!(
                        Instant::now() < deadline,
                        "Redis Cluster: no {what} within {DEADLINE:?} (node logs in {}); last \
                         seen: {last}",
                        self.dir.display()
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    fn spawn_node(&self, port: u16) -> Child {
        let log_path = self.dir.join(format!("node-{port}.log"));
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let err = log.try_clone().unwrap();
        Command::new("redis-server")
            // `--dir` makes the server chdir there, so the config file lands there either way.
            .current_dir(&self.dir)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
                "--cluster-node-timeout",
                "1000",
                // As the service asks of a production cluster: a shard that is down leaves the
                // others answering (by default every node refuses while any slot is uncovered).
                "--cluster-require-full-coverage",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                // Each its own: a replica's full sync goes through this file, and six sharing one
                // could load each other's.
                "--dbfilename",
                &format!("dump-{port}.rdb"),
                // A primary otherwise waits 5 s for more replicas before it streams the first
                // full sync to one, and start() waits for that sync.
                "--repl-diskless-sync-delay",
                "0",
                "--dir",
                path_str(&self.dir),
            ])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting redis-server (is it installed?): {e}"))
    }

    /// Waits until node `i` accepts TCP connections, failing at once if it exited (its port
    /// was taken after all, say) with its log.
    fn wait_listening(&mut self, i: usize) {
        let port = self.nodes[i].port;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = self.nodes[i]
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                let log = std::fs::read_to_string(self.dir.join(format!("node-{port}.log")))
                    .unwrap_or_default();
                panic!("redis-server on {port} exited ({status}) before listening:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {port} (log in {})",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, node: usize, sig: &str) {
        let pid = self
            .node(node)
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("kill {sig} on node {node}: it was killed"))
            .id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid} (node {node}) failed");
    }

    fn node(&self, i: usize) -> &Node {
        assert!(
            i < self.nodes.len(),
            "node {i}: the cluster has nodes 0..{}",
            self.nodes.len()
        );
        &self.nodes[i]
    }

    fn index_of(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port == port)
    }

    fn is_killed(&self, i: usize) -> bool {
        self.node(i).child.is_none()
    }

    fn is_paused(&self, i: usize) -> bool {
        self.node(i).paused.load(Ordering::Relaxed)
    }

    /// The nodes that answer: neither killed nor paused.
    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&i| !self.is_killed(i) && !self.is_paused(i))
    }

    fn first_live(&self) -> usize {
        self.live()
            .next()
            .expect("every node of the Redis Cluster is killed or paused: none to ask")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        // Keep the logs of a failed test for reading; drop the others'.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Six distinct client ports P, drawn at random from [`PORTS`], such that P and P + 10000 both
/// bind on 127.0.0.1 now. The listeners are held until all six are chosen, so no port (client
/// or bus) is chosen twice.
fn pick_ports() -> Vec<u16> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    let span = u64::from(PORTS.end() - PORTS.start()) + 1;
    let mut tries = 0;
    while ports.len() < NODES {
        tries += 1;
        assert!(
            tries <= 1000,
            "no free pair of ports P, P+{BUS_OFFSET} on 127.0.0.1 with P in {PORTS:?} after \
             {tries} tries (found {ports:?})"
        );
        let random = std::collections::hash_map::RandomState::new()
            .hash_one(COUNTER.fetch_add(1, Ordering::Relaxed));
        let port = PORTS.start() + (random % span) as u16;
        let client = TcpListener::bind(("127.0.0.1", port));
        let bus = TcpListener::bind(("127.0.0.1", port + BUS_OFFSET));
        if let (Ok(client), Ok(bus)) = (client, bus) {
            held.push(client);
            held.push(bus);
            ports.push(port);
        }
    }
    ports
}

/// Runs `command` to its end, for at most `timeout`: `Ok(stdout)` if it succeeded, else what it
/// printed and how it ended.
fn run(mut command: Command, timeout: Duration) -> Result<String, String> {
    let what = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    // Read both pipes meanwhile, so a long answer cannot block the command on a full pipe.
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => break Err(format!("no answer within {timeout:?}")),
            Err(e) => break Err(format!("waiting for it: {e}")),
        }
    };
    if status.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    match status {
        Ok(s) if s.success() => Ok(out),
        Ok(s) => Err(format!("{what} failed ({s}): {out}{err}")),
        Err(e) => Err(format!("{what}: {e}: {out}{err}")),
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// The value of `name:value` in `INFO` or `CLUSTER INFO` text (lines end in `\r\n`).
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.trim_end().strip_prefix(name)?.strip_prefix(':'))
}

/// One line of `CLUSTER NODES`:
/// `<id> <ip:port@cport[,hostname]> <flags> <master id or -> <ping-sent> <pong-recv>
/// <config-epoch> <link-state> <slot or range>…`.
#[derive(Debug, PartialEq)]
struct NodeLine {
    id: String,
    port: u16,
    /// `myself`, `master`, `slave`, `fail?`, `fail`, `handshake`, `noaddr`, `nofailover`.
    flags: Vec<String>,
    /// The primary's id, for a replica.
    master_id: Option<String>,
    /// Inclusive ranges, ascending. Slots being migrated (`[slot->-id]`, `[slot-<-id]`) are
    /// left out: they are still the listing node's until the migration ends.
    slots: Vec<(u16, u16)>,
}

impl NodeLine {
    /// Whether it has exactly that flag (`fail` is not `fail?`).
    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

fn parse_cluster_nodes(text: &str) -> Result<Vec<NodeLine>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|line| {
            let words: Vec<&str> = line.split_ascii_whitespace().collect();
            if words.len() < 8 {
                return Err(format!("short line {line:?}"));
            }
            let port = words[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok())
                .ok_or_else(|| format!("no port in {:?}", words[1]))?;
            let mut slots = Vec::new();
            for s in words[8..].iter().copied().filter(|s| !s.starts_with('[')) {
                let (a, b) = s.split_once('-').unwrap_or((s, s));
                match (a.parse::<u16>(), b.parse::<u16>()) {
                    (Ok(a), Ok(b)) if a <= b && b < SLOTS => slots.push((a, b)),
                    _ => return Err(format!("odd slot range {s:?} in {line:?}")),
                }
            }
            slots.sort_unstable();
            Ok(NodeLine {
                id: words[0].to_owned(),
                port,
                flags: words[2].split(',').map(str::to_owned).collect(),
                master_id: (words[3] != "-").then(|| words[3].to_owned()),
                slots,
            })
        })
        .collect()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `CLUSTER NODES` printed (redis 7.0) after the primary on 30415 was killed and its
    /// replica on 30420 had taken over, with a replica paused; plus a slot being migrated and a
    /// single slot.
    const SAMPLE: &str = "\
6cee532a78ddb105f7bd1db2654f7fc296562471 127.0.0.1:30417@40417 master - 0 1796692226548 3 connected 10923-16383
6d06328aca7bb98d27d1e36571a9eda116b7cbe8 127.0.0.1:30415@40415 master,fail - 1796692177558 1796692177000 1 disconnected
cd8b994ec54e0112265be2c00900e00c22c0af1e 127.0.0.1:30416@40416,host-a myself,slave 91c04e35b04591aaab398e366637a55e700525c8 0 1796692226000 8 connected
8232f3f9d7b15a1c1d1c51bc2f0988e947c097de 127.0.0.1:30419@40419 slave,fail 6cee532a78ddb105f7bd1db2654f7fc296562471 1796692223107 1796692222600 3 connected
91c04e35b04591aaab398e366637a55e700525c8 127.0.0.1:30418@40418 master - 0 1796692226135 8 connected 5461-10921 10922 [10922->-6cee532a78ddb105f7bd1db2654f7fc296562471]
040bfd8bbcc70f702b03c52ed74a8aca0ace7fee 127.0.0.1:30420@40420 master - 0 1796692226548 7 connected 0-5460
";

    #[test]
    fn parses_cluster_nodes() {
        let lines = parse_cluster_nodes(SAMPLE).unwrap();
        assert_eq!(lines.len(), 6);
        assert_eq!(
            lines[4],
            NodeLine {
                id: "91c04e35b04591aaab398e366637a55e700525c8".into(),
                port: 30418,
                flags: vec!["master".into()],
                master_id: None,
                slots: vec![(5461, 10921), (10922, 10922)],
            }
        );
        let dead = &lines[1];
        assert_eq!(dead.port, 30415);
        assert!(dead.has("master") && dead.has("fail") && dead.slots.is_empty());
        let me = &lines[2];
        assert_eq!(me.port, 30416);
        assert!(me.has("myself") && me.has("slave") && !me.has("fail"));
        assert_eq!(me.master_id.as_deref(), Some(lines[4].id.as_str()));
        assert!(lines[5].owns(0) && lines[5].owns(5460) && !lines[5].owns(5461));
        assert!(lines[0].owns(16383));
    }

    #[test]
    fn fail_is_not_pfail() {
        let lines = parse_cluster_nodes(
            "abc 127.0.0.1:7000@17000 master,fail? - 0 0 1 connected 0-16383\n",
        )
        .unwrap();
        assert!(lines[0].has("fail?") && !lines[0].has("fail"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_cluster_nodes("ERR This instance has cluster support disabled").is_err());
        assert!(parse_cluster_nodes("a 127.0.0.1:1@2 master - 0 0 1 connected 5-3").is_err());
        assert!(parse_cluster_nodes("a 127.0.0.1:1@2 master - 0 0 1 connected 0-16384").is_err());
        assert_eq!(parse_cluster_nodes("\n").unwrap(), vec![]);
    }

    #[test]
    fn reads_info_fields() {
        let info =
            "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_link_status:up\r\n";
        assert_eq!(field(info, "role"), Some("slave"));
        assert_eq!(field(info, "master_link_status"), Some("up"));
        assert_eq!(field(info, "master"), None);
        assert_eq!(
            field(
                "cluster_state:ok\r\ncluster_slots_assigned:16384\r\n",
                "cluster_state"
            ),
            Some("ok")
        );
    }
}
