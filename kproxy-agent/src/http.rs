//! A small HTTP server as kube-proxy runs its health and metrics servers:
//! answers by path, and a port that cannot be bound is retried every
//! [`BIND_RETRY`] unless the caller wants a hard failure
//! (`bindAddressHardFail`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// An answer.
pub type Reply = Response<Full<Bytes>>;

/// An answer with `status`, `content_type` and `body`, and the
/// `X-Content-Type-Options: nosniff` header Go's servers add.
pub fn reply(status: StatusCode, content_type: &str, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        r.headers_mut().insert("Content-Type", value);
    }
    r.headers_mut().insert("X-Content-Type-Options", hyper::header::HeaderValue::from_static("nosniff"));
    r
}

/// Go's answer to a path it does not serve.
pub fn not_found() -> Reply {
    reply(StatusCode::NOT_FOUND, "text/plain", "404 page not found\n".into())
}

/// How long a server that cannot bind waits before it tries again, as
/// upstream.
pub const BIND_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// A server that could not start: its name, its address and why, in one
/// line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeError(pub String);

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServeError {}

/// Serves `answer` (path → reply) on `addr` until the task is aborted,
/// as the server `name` (for logs: "Healthz", "Metrics"). A bind failure
/// is an error when `hard_fail` is set; otherwise it is logged and retried
/// every [`BIND_RETRY`], as upstream, and the caller goes on meanwhile.
pub async fn serve<F>(name: &'static str, addr: SocketAddr, hard_fail: bool, answer: F) -> Result<tokio::task::JoinHandle<()>, ServeError>
where
    F: Fn(&str) -> Reply + Send + Sync + 'static,
{
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => Some(l),
        Err(e) if hard_fail => return Err(ServeError(format!("{name} server failed: cannot listen on {addr} (bindAddressHardFail): {e}"))),
        Err(e) => {
            tracing::error!(error = %e, address = %addr, "{name} server failed; retrying every {}s", BIND_RETRY.as_secs());
            None
        }
    };
    let answer = Arc::new(answer);
    Ok(tokio::spawn(async move {
        let listener = match listener {
            Some(l) => l,
            None => loop {
                tokio::time::sleep(BIND_RETRY).await;
                match TcpListener::bind(addr).await {
                    Ok(l) => {
                        tracing::info!(address = %addr, "{name} server listening");
                        break l;
                    }
                    Err(e) => tracing::debug!(error = %e, address = %addr, "{name} server still cannot bind"),
                }
            },
        };
        serve_on(listener, answer).await;
    }))
}

/// Answers every connection to `listener` with `answer`, forever.
pub(crate) async fn serve_on<F>(listener: TcpListener, answer: Arc<F>)
where
    F: Fn(&str) -> Reply + Send + Sync + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let answer = Arc::clone(&answer);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let reply = answer(req.uri().path());
                async move { Ok::<_, Infallible>(reply) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_taken_port_is_retried_every_5s_unless_hard_fail() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let answer = |_: &str| reply(StatusCode::OK, "text/plain", "ok".into());
        let err = serve("Healthz", addr, true, answer).await.unwrap_err();
        assert!(err.to_string().starts_with(&format!("Healthz server failed: cannot listen on {addr}")), "{err}");
        let task = serve("Healthz", addr, false, answer).await.expect("a soft failure is no error");
        drop(taken);
        tokio::time::advance(BIND_RETRY + Duration::from_millis(10)).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        tokio::time::resume();
        let mut connected = false;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                connected = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        task.abort();
        assert!(connected, "bound on a retry once the port was free");
    }

    #[test]
    fn replies_carry_go_s_headers() {
        let r = reply(StatusCode::OK, "application/json", "{}".into());
        assert_eq!(r.headers()["Content-Type"], "application/json");
        assert_eq!(r.headers()["X-Content-Type-Options"], "nosniff");
        assert_eq!(not_found().status(), StatusCode::NOT_FOUND);
    }
}
