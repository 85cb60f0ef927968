//! PostgreSQL servers: the shared one every test database lives on ([`admin_url`]), and a
//! cluster of a test's own: `initdb` into a temporary folder and a postmaster on a free loopback
//! port, which the test may stop, start and restart (the shared server on 5432 must never be
//! disturbed by a failure test).
//!
//! The server binaries are those of the machine's PostgreSQL packages (`pg_config --bindir`; they
//! are not on PATH). PostgreSQL refuses to run as root, so when the test runs as root every
//! command runs as the `postgres` user (`runuser -u postgres --`) and the folder is given to it.
//! Durability is off (`fsync`, `full_page_writes`): a cluster lives for one test.
//!
//! The methods block (they wait for `pg_ctl`): from an async test, call them inside
//! `tokio::task::block_in_place` (multi-threaded runtime) or `spawn_blocking`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The server every test database lives on: `DATABASE_URL`, by default
/// `postgres://postgres@127.0.0.1:5432/postgres`.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The URL of database `name` on the server at `server` (a URL naming any of its databases).
pub fn database_url(server: &str, name: &str) -> String {
    let at = server
        .rfind('/')
        .expect("a PostgreSQL URL ends in /database");
    format!("{}/{name}", &server[..at])
}

#[derive(Debug)]
pub struct PgCluster {
    pub port: u16,
    /// The temporary folder: `data/` (the cluster), `log` (the server's log), the Unix socket.
    dir: PathBuf,
    bindir: PathBuf,
    /// `Some(user)` when commands must run as that user (the test runs as root).
    run_as: Option<&'static str>,
}

impl PgCluster {
    /// Creates a cluster (trust authentication, superuser `postgres`) in a new temporary folder
    /// and starts it on a free port of 127.0.0.1, waiting until it accepts connections.
    pub fn start() -> PgCluster {
        let bindir = bindir();
        let run_as = is_root().then_some("postgres");
        let dir = std::env::temp_dir().join(format!(
            "cal-pg-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary folder can be created");
        if let Some(user) = run_as {
            let owned = Command::new("chown")
                .arg(format!("{user}:{user}"))
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(owned, "cannot give {} to the user {user}", dir.display());
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = PgCluster {
            port,
            dir,
            bindir,
            run_as,
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
        );
        cluster.start_again();
        cluster
    }

    /// The URL of the cluster's `postgres` database (what `cal_test_support::TestDb::on` takes).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the stopped server again (same port, same data) and waits until it accepts
    /// connections.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
             -c full_page_writes=off -c synchronous_commit=off",
            self.port,
            path_str(&self.dir)
        );
        self.pg_ctl(&["start", "-o", &options]);
    }

    /// `pg_ctl stop -m fast`: open transactions are rolled back, sessions are ended, and the
    /// server is down when this returns.
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast"]);
    }

    /// `pg_ctl restart -m fast`: [`PgCluster::stop`] then start with the same options, waiting
    /// until the server accepts connections again.
    pub fn restart_fast(&self) {
        self.pg_ctl(&["restart", "-m", "fast"]);
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.data();
        let log = self.dir.join("log");
        let mut all = vec![
            "-D",
            path_str(&data),
            "-l",
            path_str(&log),
            "-w",
            "-t",
            "60",
        ];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all);
    }

    /// Runs the server binary `program` (as the cluster's user), asserting that it succeeds.
    fn run(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program, args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let program = self.bindir.join(program);
        let mut c = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        c.args(args);
        c
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Immediate: nothing of the cluster is worth a checkpoint.
        let data = self.data();
        let _ = self
            .command(
                "pg_ctl",
                &["-D", path_str(&data), "-m", "immediate", "-w", "stop"],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where the PostgreSQL server binaries are: `pg_config --bindir` (Debian's postgresql-common
/// answers for the newest installed server).
fn bindir() -> PathBuf {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("pg_config is installed (Debian: postgresql-common or libpq-dev)");
    assert!(out.status.success(), "pg_config --bindir failed");
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        dir.join("initdb").exists(),
        "no initdb in {} (pg_config --bindir): install the PostgreSQL server package",
        dir.display()
    );
    dir
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}
