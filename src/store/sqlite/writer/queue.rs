//! The writer's queue: everything that reaches the writer thread goes through one
//! bounded channel, in order, and [`WriterHandle`] is the store's side of it.
//!
//! # Invariants
//! - Writes run in the order they were queued (one FIFO channel, one consumer).
//! - A full queue makes writers wait (backpressure); pokes and wake-ups never wait:
//!   when the queue is full the writer is busy, and looks at claims at its next write.
//! - Once the writer stopped (closed, or dead) a write fails as `Closed`, whether it
//!   could not be queued or was queued behind the close and dropped unrun.
//! - [`WriterHandle::close`] returns once the writer finished its close (every
//!   committed group answered), or at once when the writer is gone already.

use tokio::sync::{mpsc, oneshot};

use crate::domain;
use crate::store::sqlite::{Job, StoreError, Tx};

/// Queue length in front of the writer; senders wait (backpressure) when it is full.
const QUEUE: usize = 8192;

/// What reaches the writer thread.
pub(super) enum Msg {
    Job(Job),
    Close(oneshot::Sender<()>),
    /// From the sync stage: it made room (an open group may commit now).
    Wake,
    /// From the dispatcher: claims wait to be applied.
    Claims,
}

#[derive(Clone)]
pub(in crate::store::sqlite) struct WriterHandle {
    tx: mpsc::Sender<Msg>,
}

/// A new queue: the store's handle, and the writer's end.
pub(super) fn channel() -> (WriterHandle, mpsc::Receiver<Msg>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (WriterHandle { tx }, rx)
}

impl WriterHandle {
    /// A sender that does not keep the writer alive (for wake-ups).
    pub(super) fn downgrade(&self) -> mpsc::WeakSender<Msg> {
        self.tx.downgrade()
    }

    pub(in crate::store::sqlite) async fn write<T, F>(&self, f: F) -> domain::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> domain::Result<T> + Send + 'static,
    {
        self.enqueue(f).await?.await
    }

    /// Queues the write (writes run in the order they were queued) and returns what
    /// resolves with its outcome, as [`WriterHandle::write`].
    pub(in crate::store::sqlite) async fn enqueue<T, F>(
        &self,
        f: F,
    ) -> domain::Result<impl std::future::Future<Output = domain::Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> domain::Result<T> + Send + 'static,
    {
        let (job, outcome) = crate::store::job(f);
        self.submit(job).await?;
        Ok(outcome)
    }

    /// Queues a job (writes run in the order they were queued).
    pub(in crate::store::sqlite) async fn submit(&self, job: Job) -> Result<(), StoreError> {
        self.tx
            .send(Msg::Job(job))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Tells the writer that claims wait (if its queue is full it is busy, and applies
    /// them at the start of its next write).
    pub(in crate::store::sqlite) fn poke(&self) {
        let _ = self.tx.try_send(Msg::Claims);
    }

    pub(in crate::store::sqlite) async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_write_fails_as_closed_once_the_writer_is_gone_queued_or_not() {
        let (handle, mut rx) = channel();
        // Queued, then dropped unrun by a writer that stops.
        let outcome = handle.enqueue(|_| Ok(())).await.expect("queued");
        assert!(matches!(rx.recv().await, Some(Msg::Job(_))));
        drop(rx);
        assert!(matches!(
            outcome.await,
            Err(domain::Error::Unavailable(why)) if why.contains("shutting down")
        ));
        // Not queued at all.
        let r = handle.write(|_| Ok(())).await;
        assert!(matches!(r, Err(domain::Error::Unavailable(_))), "{r:?}");
    }

    #[tokio::test]
    async fn pokes_never_wait_on_a_full_queue() {
        let (handle, mut rx) = channel();
        for _ in 0..QUEUE + 10 {
            handle.poke();
        }
        let mut n = 0;
        while let Ok(m) = rx.try_recv() {
            assert!(matches!(m, Msg::Claims));
            n += 1;
        }
        assert_eq!(n, QUEUE, "the pokes past a full queue are dropped");
    }

    #[tokio::test]
    async fn close_returns_once_the_writer_finished_its_close_or_at_once_without_a_writer() {
        let (handle, mut rx) = channel();
        let h = handle.clone();
        let close = tokio::spawn(async move { h.close().await });
        let Some(Msg::Close(done)) = rx.recv().await else {
            panic!("the close reached the writer")
        };
        assert!(
            !close.is_finished(),
            "close returned before the writer closed"
        );
        done.send(()).unwrap();
        close.await.unwrap();

        drop(rx);
        // A bound for a failure (a close that hangs), not a synchronisation.
        tokio::time::timeout(Duration::from_secs(10), handle.close())
            .await
            .expect("close without a writer returns");
    }
}
