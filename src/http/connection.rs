//! The bound on a request head that is not a connection's first. actix-http times only the first
//! head on a connection (`client_request_timeout`); after a response, its keep-alive timer stops at
//! the first byte of the next request, and nothing times the rest. A client could then send a
//! head a byte at a time and hold the connection for as long as it liked.
//!
//! Each connection's stream is wrapped in a [`TimedStream`] that shares a [`HeadClock`] with the
//! requests on it (connection data). When a request has been answered, the clock gives the
//! connection until `keep_alive_secs + request_timeout_ms` from then to deliver the next head
//! into the application; while a request is in the application there is no bound here (the body
//! has its own deadline, the mint its own). A connection still short of its next head at the
//! deadline has its reads fail, and actix closes it.
//!
//! Every head thus gets at least `request_timeout_ms` from its first byte (the keep-alive timer
//! would have closed a connection that sent nothing for `keep_alive_secs`) and at most the sum.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// When the next request head must have arrived on a connection, if one is awaited.
#[derive(Debug, Clone)]
pub(crate) struct HeadClock(Rc<Clock>);

#[derive(Debug)]
struct Clock {
    /// From the end of an answer to the next head's arrival in the application.
    bound: Duration,
    next_head_by: Cell<Option<Instant>>,
}

impl HeadClock {
    fn new(bound: Duration) -> HeadClock {
        HeadClock(Rc::new(Clock {
            bound,
            next_head_by: Cell::new(None),
        }))
    }

    /// A request reached the application: its head is complete.
    pub(crate) fn request_started(&self) {
        self.0.next_head_by.set(None);
    }

    /// A request was answered: the next head is due within the bound.
    pub(crate) fn request_answered(&self) {
        self.0.next_head_by.set(Some(Instant::now() + self.0.bound));
    }

    fn deadline(&self) -> Option<Instant> {
        self.0.next_head_by.get()
    }
}

/// A connection's stream whose reads fail once its [`HeadClock`] runs out.
pub(crate) struct TimedStream<T> {
    io: T,
    clock: HeadClock,
    /// Armed for this deadline.
    timer: Option<(Instant, Pin<Box<Sleep>>)>,
}

impl<T> TimedStream<T> {
    /// Wraps a new connection's stream; no head is awaited until a request has been answered
    /// (actix times the first one itself).
    pub(crate) fn new(io: T, bound: Duration) -> TimedStream<T> {
        TimedStream {
            io,
            clock: HeadClock::new(bound),
            timer: None,
        }
    }

    /// The clock the connection's requests share (connection data).
    pub(crate) fn clock(&self) -> HeadClock {
        self.clock.clone()
    }

    /// Whether the head the clock awaits is overdue; arms the timer (waking this task at the
    /// deadline) when it is not.
    fn overdue(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = self.clock.deadline() else {
            self.timer = None;
            return false;
        };
        match &mut self.timer {
            Some((armed, sleep)) if *armed == deadline => sleep.as_mut().poll(cx).is_ready(),
            Some((armed, sleep)) => {
                *armed = deadline;
                sleep.as_mut().reset(deadline);
                sleep.as_mut().poll(cx).is_ready()
            }
            None => {
                let mut sleep = Box::pin(tokio::time::sleep_until(deadline));
                let ready = sleep.as_mut().poll(cx).is_ready();
                self.timer = Some((deadline, sleep));
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedStream<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.overdue(cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the next request head did not arrive in time",
            )));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedStream<T> {
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
