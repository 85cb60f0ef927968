//! A Kafka-protocol broker of a test's own: `tansu` with in-memory storage on a free loopback
//! port, which the test may pause (SIGSTOP), resume and kill. Nothing here links librdkafka:
//! readiness is checked with a hand-written Metadata request ([`kafka_metadata_names`]).
//!
//! `cargo xtask test` installs tansu, and `cargo xtask cluster` and `bench-cluster` start their
//! broker with the same lookup ([`tansu_bin`], [`installed_tansu`], [`TANSU_BIN`]), flags
//! ([`configure_tansu_broker`]) and probe, so those are public.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct KafkaBroker {
    pub port: u16,
    /// Where the broker's stdout and stderr go; removed on drop unless the test is failing.
    pub log: PathBuf,
    child: Option<Child>,
}

/// The environment variable naming the `tansu` binary: `cargo xtask test` sets it for the tests
/// when it finds tansu only in cargo's bin folder, which need not be on PATH.
pub const TANSU_BIN: &str = "TANSU_BIN";

/// Where `cargo install tansu` puts the binary: `$CARGO_HOME/bin/tansu`, else
/// `$HOME/.cargo/bin/tansu`; `None` when neither variable is set. It may not exist.
pub fn installed_tansu() -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    Some(cargo_home.join("bin").join("tansu"))
}

/// The `tansu` binary: `$TANSU_BIN`, else `tansu` on PATH, else the one `cargo install` put in
/// cargo's bin folder ([`installed_tansu`]) if it is there.
pub fn tansu_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(TANSU_BIN).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("tansu"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| installed_tansu().filter(|p| p.is_file()))
}

/// Makes `command` (`tansu`, or a wrapper running it such as `nice -n 5 tansu`) start a broker
/// listening on and advertising `127.0.0.1:port`, with in-memory storage and the cluster id
/// `cluster_id`, logging at `$TANSU_LOG` (default `warn`), without an OpenTelemetry exporter.
pub fn configure_tansu_broker<'a>(
    command: &'a mut Command,
    port: u16,
    cluster_id: &str,
) -> &'a mut Command {
    let url = format!("tcp://127.0.0.1:{port}");
    command
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
            "--cluster-id",
            cluster_id,
        ])
        // An exporter endpoint from the environment would make every broker try to reach it.
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env(
            "RUST_LOG",
            std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".into()),
        )
}

impl KafkaBroker {
    /// Starts `tansu broker` on a free port with in-memory storage and waits until it answers a
    /// Metadata request naming itself.
    pub fn start() -> KafkaBroker {
        let bin =
            tansu_bin().expect("tansu is not installed: run `cargo xtask test` (it installs it)");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::env::temp_dir().join(format!(
            "tansu-{port}-{}-{}.log",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let out = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(&bin);
        configure_tansu_broker(&mut command, port, &format!("cal-test-{port}"));
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut broker = KafkaBroker {
            port,
            log,
            child: Some(child),
        };
        broker.wait_ready();
        broker
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What the broker has written so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("the broker was killed").id()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {} failed", self.pid());
    }

    /// Freezes the broker (SIGSTOP): connections stay open but nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused broker (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills the broker (SIGKILL): with in-memory storage everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match kafka_metadata_names(self.port, "cal-test-infra") {
                Ok(()) => return,
                Err(e) => {
                    if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                        panic!(
                            "tansu exited ({status}) before it was ready:\n{}",
                            self.log_text()
                        );
                    }
                    assert!(
                        Instant::now() < deadline,
                        "tansu on {} not ready: {e}\n{}",
                        self.port,
                        self.log_text()
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A stopped process dies of SIGKILL too, but thaw it so nothing lingers half-dead.
            let _ = Command::new("kill")
                .args(["-CONT", &self.pid().to_string()])
                .status();
        }
        self.kill();
        // Keep the log of a failed test for reading; drop the others'.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Sends a Kafka Metadata v1 request for no topics to 127.0.0.1:`port` (as `client_id`) and
/// checks that the broker lists itself on `port`: it is then ready for clients. The error says
/// what was wrong (connection refused, a short answer, another broker's list).
pub fn kafka_metadata_names(port: u16, client_id: &str) -> Result<(), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let client_id = client_id.as_bytes();
    let mut req = Vec::new();
    req.extend_from_slice(&3i16.to_be_bytes()); // api key: Metadata
    req.extend_from_slice(&1i16.to_be_bytes()); // api version 1
    req.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    req.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    req.extend_from_slice(client_id);
    req.extend_from_slice(&0i32.to_be_bytes()); // topics: an empty array (none)
    let mut frame = (req.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&req);
    s.write_all(&frame).map_err(|e| e.to_string())?;

    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(|e| e.to_string())?;
    let len = i32::from_be_bytes(len);
    if !(8..1 << 20).contains(&len) {
        return Err(format!("odd response length {len}"));
    }
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body).map_err(|e| e.to_string())?;
    let mut r = Reader(&body);
    let correlation = r.i32()?;
    if correlation != 7 {
        return Err(format!("correlation id {correlation}"));
    }
    let brokers = r.i32()?;
    for _ in 0..brokers {
        let _node = r.i32()?;
        r.string()?; // host
        let p = r.i32()?;
        r.string()?; // rack
        if p == i32::from(port) {
            return Ok(());
        }
    }
    Err(format!(
        "{brokers} brokers in metadata, none on port {port}"
    ))
}

/// Reads a Kafka response: big-endian integers and length-prefixed strings.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err("short metadata response".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn string(&mut self) -> Result<(), String> {
        let n = i16::from_be_bytes(self.take(2)?.try_into().unwrap());
        if n > 0 {
            self.take(n as usize)?;
        }
        Ok(())
    }
}
