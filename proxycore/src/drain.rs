//! Graceful shutdown: on SIGTERM (or `/quitquitquit`) listeners stop accepting and HBONE
//! servers send GOAWAY; open connections may finish until the deadline, then they are closed.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Drain {
    /// Cancelled when draining starts: stop accepting, GOAWAY.
    start: CancellationToken,
    /// Cancelled at the deadline: close whatever is still open.
    force: CancellationToken,
    tracker: TaskTracker,
    /// The tracker of the drain this one belongs to (a pod's within the node's), which also
    /// waits for this one's connections.
    parent: Option<TaskTracker>,
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    /// A drain for part of the proxy (one pod in shared mode): it drains on its own, and also
    /// when the parent does, whose wait includes its connections.
    pub fn child(&self) -> Drain {
        Drain {
            start: self.start.child_token(),
            force: self.force.child_token(),
            tracker: TaskTracker::new(),
            parent: Some(self.tracker.clone()),
        }
    }

    /// Resolves when draining starts.
    pub fn started(&self) -> impl Future<Output = ()> + Send + 'static {
        self.start.clone().cancelled_owned()
    }

    pub fn is_draining(&self) -> bool {
        self.start.is_cancelled()
    }

    pub fn begin(&self) {
        self.start.cancel();
    }

    /// Runs one connection as a tracked task that is cut off at the drain deadline.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let force = self.force.clone();
        let task = async move {
            tokio::select! {
                () = fut => {}
                () = force.cancelled() => {}
            }
        };
        match &self.parent {
            Some(parent) => self.tracker.spawn(parent.track_future(task)),
            None => self.tracker.spawn(task),
        };
    }

    /// Number of connections still open.
    pub fn open(&self) -> usize {
        self.tracker.len()
    }

    /// Starts draining (if not yet), waits for connections up to `deadline`, then forces the
    /// rest closed. Returns the number of connections that had to be forced.
    pub async fn drain(&self, deadline: Duration) -> usize {
        self.begin();
        self.tracker.close();
        let forced = match tokio::time::timeout(deadline, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        };
        self.force.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tracker.wait()).await;
        forced
    }
}
