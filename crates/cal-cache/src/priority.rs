//! Scheduling priority of the threads that carry invalidations.
//!
//! An invalidation crosses several threads between a writer's commit and another instance's L1
//! eviction (the producer's network thread, the broker, the consumer's network thread, the
//! thread that applies it). Each does almost no work, but on cores saturated by request handling
//! each one waits for a turn, and those waits add up to the invalidation lag's tail. Running
//! these few threads at a lower nice value than request handling lets the scheduler run them as
//! soon as they wake; they use little CPU, so the requests hardly notice.
//!
//! On Linux the nice value belongs to a thread, and a thread inherits its creator's. So a client
//! library's threads (librdkafka's) get a priority by being created from a thread that has it
//! ([`at_nice`]).
//!
//! Raising a priority (a negative nice value) needs `CAP_SYS_NICE` or a large enough
//! `RLIMIT_NICE`; without them the threads keep their priority and a warning says so once.

use std::sync::atomic::{AtomicBool, Ordering};

/// Sets the calling thread's nice value (`-20..=19`, lower runs first). Threads it creates from
/// now on inherit it.
pub fn set_current_thread_nice(nice: i32) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        rustix::process::setpriority_process(Some(tid), nice).map_err(std::io::Error::from)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = nice;
        Err(unsupported())
    }
}

/// The calling thread's nice value.
pub fn current_thread_nice() -> std::io::Result<i32> {
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        rustix::process::getpriority_process(Some(tid)).map_err(std::io::Error::from)
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(unsupported())
    }
}

#[cfg(not(target_os = "linux"))]
fn unsupported() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "per-thread nice values are a Linux feature",
    )
}

/// Gives the calling thread the nice value `nice` (`None`: leaves it alone). A failure is logged
/// (once per process) and otherwise ignored: the thread runs on at its old priority.
pub fn apply(nice: Option<i32>, what: &str) {
    let Some(nice) = nice else { return };
    if let Err(e) = set_current_thread_nice(nice) {
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                nice,
                error = %e,
                "cannot run the {what} at nice {nice} (needs CAP_SYS_NICE or RLIMIT_NICE); \
                 they run at normal priority, and the invalidation lag grows when the cores are saturated"
            );
        }
    }
}

/// Runs `f` on a new thread at nice value `nice` (see [`apply`]) and returns its result: every
/// thread `f` creates inherits that priority. `f` runs inside the caller's Tokio runtime, if any
/// (rdkafka's clients need one when they are created). With `None`, runs `f` on the calling
/// thread.
pub fn at_nice<T: Send>(nice: Option<i32>, what: &str, f: impl FnOnce() -> T + Send) -> T {
    if nice.is_none() {
        return f();
    }
    let runtime = tokio::runtime::Handle::try_current().ok();
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("cal-priority".into())
            .spawn_scoped(s, || {
                let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
                apply(nice, what);
                f()
            })
            .expect("spawning a thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    // A higher nice value (a lower priority) needs no privilege, so these run anywhere.

    #[test]
    fn threads_created_under_at_nice_inherit_its_priority() {
        let before = current_thread_nice().unwrap();
        let target = (before + 3).min(19);
        let (own, child) = at_nice(Some(target), "test threads", || {
            let child = std::thread::spawn(|| current_thread_nice().unwrap())
                .join()
                .unwrap();
            (current_thread_nice().unwrap(), child)
        });
        assert_eq!(own, target);
        assert_eq!(child, target);
        assert_eq!(
            current_thread_nice().unwrap(),
            before,
            "the calling thread keeps its priority"
        );
    }

    #[tokio::test]
    async fn f_runs_inside_the_callers_runtime() {
        let before = current_thread_nice().unwrap();
        let in_runtime = at_nice(Some((before + 1).min(19)), "test threads", || {
            tokio::runtime::Handle::try_current().is_ok()
        });
        assert!(in_runtime);
    }

    #[test]
    fn none_leaves_the_priority_alone() {
        let before = current_thread_nice().unwrap();
        let seen = at_nice(None, "test threads", || current_thread_nice().unwrap());
        assert_eq!(seen, before);
    }

    #[test]
    fn set_changes_only_the_calling_thread() {
        let other_before = std::thread::spawn(|| current_thread_nice().unwrap())
            .join()
            .unwrap();
        let (seen, target) = std::thread::spawn(move || {
            let target = (other_before + 2).min(19);
            set_current_thread_nice(target).unwrap();
            (current_thread_nice().unwrap(), target)
        })
        .join()
        .unwrap();
        assert_eq!(seen, target);
        assert_eq!(
            std::thread::spawn(|| current_thread_nice().unwrap())
                .join()
                .unwrap(),
            other_before
        );
    }
}
