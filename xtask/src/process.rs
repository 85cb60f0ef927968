//! Child processes of the xtask commands: running a command to completion ([`run`]), stopping
//! one on every path out of its caller ([`KillOnDrop`]; [`TermOnDrop`] for nginx, whose master
//! must stop its workers) and waiting until a spawned `calendar serve` is ready
//! ([`wait_ready`]). Shared by `test`, `bench`, `bench-http`, `cluster` and `bench-cluster`.

use crate::http_client::http_get_status;
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Runs `cmd` to completion (echoing it on stderr first) and fails unless it succeeds.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Stops a process with SIGTERM and waits for it: nginx's master stops its workers then, where
/// SIGKILL would leave them serving.
pub(crate) struct TermOnDrop(pub(crate) Child);

impl Drop for TermOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Kills a process (SIGKILL) and waits for it when dropped: a server started by a command stops
/// on every path out of it, errors included.
pub(crate) struct KillOnDrop(pub(crate) Child);

impl KillOnDrop {
    /// Kills the process now and waits for it.
    pub(crate) fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `GET /ready` until it answers 200, the server exits, or a minute passes.
pub(crate) fn wait_ready(server: &mut Child, addr: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.try_wait()? {
            bail!(
                "the server exited ({status}) before it was ready; see {}",
                log.display()
            );
        }
        if http_get_status(addr, "/ready").is_ok_and(|s| s == 200) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the server was not ready within 60 s; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
