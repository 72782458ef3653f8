//! The runtime analytics run on: SQL, the readings API, compaction and flush encoding.
//!
//! Its own tokio runtime with a bounded number of threads (workers and blocking pool alike), each
//! at a lower OS scheduling priority (a higher nice value). On two cores a separate pool alone
//! isolates nothing: a full scan would take both cores from the runtime that answers devices.
//! The priority is what lets the kernel run the acks first while a scan still gets every idle
//! cycle.

use std::sync::Arc;

/// A runtime for heavy work; dropping the last clone shuts it down without waiting.
#[derive(Clone)]
pub struct AnalyticsRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // May be dropped from inside another runtime, where a blocking shutdown would panic.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl AnalyticsRuntime {
    /// `threads` workers (at least 1) and as many blocking threads, at `nice` (0 keeps the
    /// priority of the process; Linux only, elsewhere ignored).
    pub fn new(threads: usize, nice: i32) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .max_blocking_threads(threads)
            .thread_name("hoistway-analytics")
            .on_thread_start(move || lower_priority(nice))
            .enable_all()
            .build()?;
        Ok(Self {
            inner: Arc::new(Inner {
                runtime: Some(runtime),
            }),
        })
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.inner
            .runtime
            .as_ref()
            .expect("the runtime lives until dropped")
            .handle()
    }
}

#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    // On Linux the nice value is per thread: this changes only the calling thread.
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
        tracing::warn!(nice, error = %e, "could not lower the priority of an analytics thread");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: i32) {}

/// The nice value of the calling thread (Linux), for tests and diagnostics.
#[cfg(target_os = "linux")]
pub fn current_nice() -> Option<i32> {
    rustix::process::getpriority_process(Some(rustix::thread::gettid())).ok()
}

/// Aborts a spawned task when dropped: a caller that stops waiting (a client that hung up)
/// stops the work too.
pub(crate) struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
