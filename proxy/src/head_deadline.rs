//! A deadline on the HTTP/1 request head (slowloris). pingora bounds each read of the head (by the keep-alive
//! timeout, 60 s) but not the head as a whole, so a client sending one byte every 59 s holds a connection and a
//! task forever. Neither `HttpServerOptions` nor `Session::set_read_timeout` help: the first covers h2c, keep-alive
//! reuse and idle h2 connections, the second applies only once the head has been read.
//!
//! [`HeadDeadline`] wraps pingora's HTTP application: each HTTP/1 request gets `limit` (plus the idle keep-alive
//! wait when the connection is being reused) for its head to arrive; when that runs out first, the request's work is
//! dropped, which closes the connection. The end of the head is signalled through the connection's user context,
//! which pingora hands to [`crate::edge::EdgeProxy`]'s `on_connection_reuse` right after parsing the head, before
//! any filter runs: the deadline never cuts a request that is being proxied, however long it lasts. HTTP/2 streams
//! reach the application with their head already read, so they pass through untouched.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v2::server::H2Options;
use pingora::server::ShutdownWatch;

use crate::metrics::Metrics;

/// pingora's default idle wait between requests on a kept-alive connection.
const DEFAULT_KEEPALIVE_SECS: u64 = 60;

/// Set when the request head has been read (given to the request through the connection's user context).
#[derive(Debug, Clone, Default)]
pub struct HeadRead(Arc<AtomicBool>);

impl HeadRead {
    pub fn mark(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_read(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What a finished request leaves in the connection's user context: the next head on it follows an idle wait.
#[derive(Debug, Clone, Copy)]
pub struct KeptAlive;

pub struct HeadDeadline<A> {
    inner: Arc<A>,
    limit: Duration,
    metrics: Arc<Metrics>,
}

impl<A> HeadDeadline<A> {
    pub fn new(inner: A, limit: Duration, metrics: Arc<Metrics>) -> Self {
        Self { inner: Arc::new(inner), limit, metrics }
    }
}

#[async_trait]
impl<A> HttpServerApp for HeadDeadline<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if session.is_http2() {
            return self.inner.process_new_http(session, shutdown).await;
        }
        let kept_alive = session.take_connection_user_context().is_some_and(|c| c.is::<KeptAlive>());
        let head = HeadRead::default();
        session.set_connection_user_context(Some(Box::new(head.clone())));
        let limit = if kept_alive {
            // pingora's idle keep-alive wait (60 s by default; 0 means unbounded, which we bound the same).
            let idle = session.get_keepalive().filter(|s| *s > 0).unwrap_or(DEFAULT_KEEPALIVE_SECS);
            self.limit + Duration::from_secs(idle)
        } else {
            self.limit
        };
        let work = self.inner.process_new_http(session, shutdown);
        tokio::pin!(work);
        tokio::select! {
            biased;
            done = &mut work => done,
            () = tokio::time::sleep(limit) => {
                if head.is_read() {
                    work.await
                } else {
                    // Dropping the work drops the session and with it the connection.
                    self.metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(limit_ms = limit.as_millis() as u64, "request head too slow: connection closed");
                    None
                }
            }
        }
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await;
    }

    async fn process_custom_session(self: Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        self.inner.clone().process_custom_session(stream, shutdown).await
    }
}
