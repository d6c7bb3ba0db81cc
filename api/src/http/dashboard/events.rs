//! Live updates of the sandboxes page: server-sent events whose `rows` event carries the table's new rows,
//! rendered by [`super::pages::sandbox_rows`], sent when they change. A change is noticed when the API wakes its
//! route watchers (every state change does) or, for changes another API instance made, by rereading every poll
//! interval. When the session ends the stream says `signedout` and closes; the script then goes to sign in.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;

use super::pages::{Filter, sandbox_rows};
use crate::App;
use crate::domain::sessions::{self, SESSION_COOKIE};
use crate::error::ApiError;
use crate::http::auth::cookie;
use crate::http::error::QueryPairs;
use crate::store::sandboxes as rows;

/// Rerendered at least this often even without a wake-up, so ages move.
const REFRESH: Duration = Duration::from_secs(10);

struct Feed {
    app: App,
    token: String,
    org: String,
    filter: Filter,
    last: Option<String>,
    done: bool,
}

impl Feed {
    /// The next event: new rows, or `signedout` (then the end).
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        if self.done {
            return None;
        }
        let mut waited = Duration::ZERO;
        loop {
            let app = self.app.clone();
            let notified = app.route_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match sessions::resolve(&self.app, &self.token).await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    self.done = true;
                    return Some((Ok(Event::default().event("signedout").data("")), self));
                }
            }
            if let Ok(list) = rows::list(&self.app.db.pool, self.filter.list_filter(&self.org)).await {
                let html = sandbox_rows(&self.app, &list);
                if self.last.as_deref() != Some(html.as_str()) || waited >= REFRESH {
                    self.last = Some(html.clone());
                    // SSE data lines cannot hold a newline; the rows have none, but never trust that.
                    let data = html.replace(['\r', '\n'], " ");
                    return Some((Ok(Event::default().event("rows").data(data)), self));
                }
            }
            let nap = app.poll_interval().min(REFRESH);
            let _ = tokio::time::timeout(nap, notified).await;
            waited += nap;
        }
    }
}

/// `GET /dashboard/sandboxes/events?state=&label=`: needs a live session (401 otherwise; reading is not a state
/// change, so no CSRF token).
pub async fn sandboxes(State(app): State<App>, headers: HeaderMap, q: QueryPairs) -> Response {
    let Some(token) = cookie(&headers, SESSION_COOKIE).map(str::to_owned) else {
        return ApiError::unauthorized("sign in to the dashboard first").into_response();
    };
    let session = match sessions::resolve(&app, &token).await {
        Ok(Some(s)) => s,
        Ok(None) => return ApiError::unauthorized("session expired or signed out").into_response(),
        Err(e) => return e.into_response(),
    };
    let filter = match Filter::parse(&q) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let feed = Feed { app, token, org: session.organization_id, filter, last: None, done: false };
    let mut r = Sse::new(stream::unfold(feed, Feed::next)).keep_alive(KeepAlive::default()).into_response();
    r.headers_mut().insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    r
}
