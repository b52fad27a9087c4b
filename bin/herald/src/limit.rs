//! A cap on open connections across the data listeners.
//!
//! Every accepted connection holds a permit of one shared semaphore until it closes (for a
//! WebSocket, until the upgraded connection ends). At the cap, each listener accepts one more
//! connection and then pauses: new clients wait (that one unserved, the rest in the kernel's
//! backlog) instead of costing memory, and are served as others leave.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The permits, shared by every data listener.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: usize,
    /// Whether the "at the cap" warning was logged since the last time there was room.
    warned: Arc<AtomicBool>,
}

impl ConnectionLimit {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            warned: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Wraps a listener so that each accepted connection holds a permit.
    pub(crate) fn wrap<L: Listener>(&self, inner: L) -> Limited<L> {
        Limited {
            inner,
            limit: self.clone(),
        }
    }

    async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            self.warned.store(false, Ordering::Relaxed);
            return Some(p);
        }
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                max = self.max,
                "connection limit reached (--max-connections); new connections wait"
            );
        }
        // The semaphore is never closed, so this only fails if that changes.
        self.permits.clone().acquire_owned().await.ok()
    }
}

/// A listener whose connections each hold a permit of a [`ConnectionLimit`].
pub(crate) struct Limited<L> {
    inner: L,
    limit: ConnectionLimit,
}

impl<L: Listener> Listener for Limited<L> {
    type Io = Counted<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // Accept first, then wait for a permit: a listener idling in `accept` must not hold a
        // permit, or every idle listener would take one away from the connections.
        let (io, addr) = self.inner.accept().await;
        let permit = self.limit.acquire().await;
        (
            Counted {
                io,
                _permit: permit,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that gives its permit back when dropped.
pub(crate) struct Counted<T> {
    io: T,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
