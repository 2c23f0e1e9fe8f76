//! The API client's middleware, as client-go's: a token-bucket rate limit
//! (`clientConnection.qps` and `.burst`, default 5 and 10) in front of
//! every request but a list's further pages, and the `rest_client_*`
//! metrics of each one.
//!
//! A list's pages after the first (a `continue` token in the query) take
//! no token: kproxy lists in pages of 200 to decode one page at a time,
//! where client-go's reflectors get a whole list from the API server's
//! cache in one request; counted per page, 10,000 Services would wait 7 s
//! for tokens at start.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::Metrics;

/// The rate limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Requests per second, sustained (0 or less: no limit).
    pub qps: f64,
    /// Requests allowed at once above the rate.
    pub burst: u32,
}

/// A token bucket: `burst` tokens, refilled at `qps` per second.
#[derive(Debug)]
pub struct TokenBucket {
    limits: Limits,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limits: Limits) -> Self {
        TokenBucket { limits, state: Mutex::new((f64::from(limits.burst.max(1)), Instant::now())) }
    }

    /// How long the caller must wait for its token (taken now, so callers
    /// queue in order).
    fn reserve(&self, now: Instant) -> Duration {
        if self.limits.qps <= 0.0 {
            return Duration::ZERO;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = *state;
        let capacity = f64::from(self.limits.burst.max(1));
        let refilled = (tokens + now.saturating_duration_since(last).as_secs_f64() * self.limits.qps).min(capacity) - 1.0;
        *state = (refilled, now);
        if refilled >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-refilled / self.limits.qps)
        }
    }

    /// Waits for a token; returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let wait = self.reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        wait
    }
}

/// The tower layer that adds [`Limited`] to kube's client stack.
#[derive(Debug, Clone)]
pub struct Layer {
    bucket: Arc<TokenBucket>,
    metrics: Arc<Metrics>,
    host: String,
}

impl Layer {
    /// Limits every request to `limits` and records it in `metrics`
    /// under `host` (the API server's `host:port`).
    pub fn new(limits: Limits, metrics: Arc<Metrics>, host: String) -> Self {
        Layer { bucket: Arc::new(TokenBucket::new(limits)), metrics, host }
    }
}

impl<S> tower::Layer<S> for Layer {
    type Service = Limited<S>;
    fn layer(&self, inner: S) -> Limited<S> {
        Limited { inner: Arc::new(tokio::sync::Mutex::new(inner)), layer: self.clone() }
    }
}

/// The service: waits for a token, sends, records.
#[derive(Debug)]
pub struct Limited<S> {
    inner: Arc<tokio::sync::Mutex<S>>,
    layer: Layer,
}

impl<S> Clone for Limited<S> {
    fn clone(&self) -> Self {
        Limited { inner: Arc::clone(&self.inner), layer: self.layer.clone() }
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for Limited<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is awaited per request, after the token.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        let layer = self.layer.clone();
        let method = request.method().as_str().to_string();
        let request_size = http_body::Body::size_hint(request.body()).exact();
        let limited = !continues_a_list(request.uri());
        Box::pin(async move {
            let waited = if limited { layer.bucket.acquire().await } else { Duration::ZERO };
            layer.metrics.rest_rate_limited(&method, &layer.host, waited);
            let started = Instant::now();
            let future = {
                let mut service = inner.lock().await;
                std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                service.call(request)
            };
            let result = future.await;
            let code = match &result {
                Ok(response) => response.status().as_u16().to_string(),
                Err(_) => "<error>".to_string(),
            };
            layer.metrics.rest_request(&method, &layer.host, &code, started.elapsed());
            let response_size = result.as_ref().ok().and_then(|r| r.headers().get(http::header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok());
            layer.metrics.rest_sizes(&method, &layer.host, request_size, response_size);
            result
        })
    }
}

/// Whether `uri` asks for a further page of a list (a non-empty
/// `continue` parameter).
fn continues_a_list(uri: &http::Uri) -> bool {
    uri.query().is_some_and(|q| q.split('&').any(|kv| kv.strip_prefix("continue=").is_some_and(|v| !v.is_empty())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_list_s_further_pages_go_untaxed() {
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        assert!(continues_a_list(&uri("/api/v1/services?limit=500&continue=eyJ2IjoibWV0YS")));
        assert!(!continues_a_list(&uri("/api/v1/services?limit=500")));
        assert!(!continues_a_list(&uri("/api/v1/services?limit=500&continue=")));
        assert!(!continues_a_list(&uri("/api/v1/services?watch=true&resourceVersion=5")));
        assert!(!continues_a_list(&uri("/api/v1/namespaces/continue=x/services")));
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_the_rate() {
        let bucket = TokenBucket::new(Limits { qps: 5.0, burst: 10 });
        let now = Instant::now();
        let waits: Vec<Duration> = (0..12).map(|_| bucket.reserve(now)).collect();
        assert!(waits[..10].iter().all(|w| w.is_zero()), "a burst of 10: {waits:?}");
        assert_eq!(waits[10], Duration::from_millis(200), "then one every 1/5 s");
        assert_eq!(waits[11], Duration::from_millis(400));
        let later = now + Duration::from_secs(10);
        assert!(bucket.reserve(later).is_zero(), "refilled after a quiet while");
        let unlimited = TokenBucket::new(Limits { qps: 0.0, burst: 0 });
        assert!((0..100).all(|_| unlimited.reserve(now).is_zero()));
    }
}
