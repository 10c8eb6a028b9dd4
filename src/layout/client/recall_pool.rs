//! The threads that answer recalls ([`RecallPolicy::Cooperate`](super::RecallPolicy)):
//! kept for the next recall once they are done. Starting a thread cost about 0.6 ms in
//! the TCG guests, a tenth of a recall's whole round trip. Recalls that come together
//! each get a thread (an idle one, or a new one), so none waits for another's round
//! trips. The threads stop when the client is gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use parking_lot::Mutex;

type Job = Box<dyn FnOnce() + Send>;

struct Worker {
    tx: mpsc::Sender<Job>,
    busy: Arc<AtomicBool>,
}

/// The client's recall threads.
#[derive(Default)]
pub(crate) struct RecallPool {
    workers: Mutex<Vec<Worker>>,
}

impl RecallPool {
    /// Runs `job` on an idle thread, or on a new one.
    pub(crate) fn run(&self, job: Job) -> std::io::Result<()> {
        let mut workers = self.workers.lock();
        let idle = workers.iter().find(|w| {
            w.busy.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok()
        });
        let job = match idle {
            Some(w) => match w.tx.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::channel::<Job>();
        let busy = Arc::new(AtomicBool::new(true));
        let done = busy.clone();
        std::thread::Builder::new().name("filemr-recall".into()).spawn(move || {
            // Ends when the pool (the client) is gone and its senders with it.
            while let Ok(job) = rx.recv() {
                job();
                done.store(false, Ordering::Release);
            }
        })?;
        tx.send(job).map_err(|_| std::io::Error::other("the recall thread ended at once"))?;
        workers.retain(|w| Arc::strong_count(&w.busy) > 1);
        workers.push(Worker { tx, busy });
        Ok(())
    }
}
