//! The HTTP side: `/metrics`, `/healthz` and `/readyz`, served so that no
//! client can lock another out.

use super::Metrics;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Connections `serve` holds at once; a new one beyond them closes the
/// oldest.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send its request, and to take the answer.
const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the task
/// is dropped. A slow or broken client only ever holds its own connection,
/// for at most `CLIENT_TIMEOUT` each way, and at most `MAX_CONNECTIONS`
/// are held at once: a flood of connections cannot exhaust memory or file
/// descriptors. When all are held, a new connection closes the oldest,
/// never itself: whoever keeps connections open cannot lock the kubelet's
/// liveness probe out (which would restart weft, and every restart removes
/// the routes), because the probe's connection is always the newest and
/// is answered at once.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    serve_paths(listener, metrics, true).await
}

/// `serve` with `/healthz` and `/readyz` only, for flanneld's
/// `--healthz-ip`/`--healthz-port`, which listens on every address by
/// default: the counters stay on the metrics address.
pub async fn serve_health(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    serve_paths(listener, metrics, false).await
}

async fn serve_paths(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, with_metrics: bool) {
    // The connections being served, oldest first.
    let mut held = std::collections::VecDeque::<tokio::task::AbortHandle>::new();
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        held.retain(|h| !h.is_finished());
        if held.len() >= MAX_CONNECTIONS {
            if let Some(oldest) = held.pop_front() {
                oldest.abort();
            }
        }
        let metrics = metrics.clone();
        let task = tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let answer = respond(&metrics, req.uri().path(), with_metrics);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(CLIENT_TIMEOUT)
                .keep_alive(false);
            let served = http.serve_connection(hyper_util::rt::TokioIo::new(conn), service);
            // The request has `CLIENT_TIMEOUT` to arrive (the header read
            // timeout), the answer as long again to be taken.
            let _ = tokio::time::timeout(2 * CLIENT_TIMEOUT, served).await;
        });
        held.push_back(task.abort_handle());
        // Let the new connection be read and answered before the next
        // accept: a backlog of connections accepted in one go would
        // otherwise close it before it was ever polled.
        tokio::task::yield_now().await;
    }
}

/// The answer to a request for `path`.
fn respond(metrics: &Metrics, path: &str, with_metrics: bool) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match path {
        "/metrics" if with_metrics => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if metrics.ready.load(Relaxed) => {
            (StatusCode::OK, "text/plain", "ready\n".to_string())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// An attacker holds twice `MAX_CONNECTIONS` idle connections open,
    /// reopening each one the server closes; the liveness probe (a new
    /// connection each time, as the kubelet's) is answered every time.
    #[test]
    fn idle_connections_cannot_starve_the_health_probe() {
        use std::io::{Read, Write};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            rt.block_on(async move {
                let serving = tokio::spawn(serve_health(listener, metrics));
                let _ = finished.await;
                serving.abort();
            })
        });
        let stop = Arc::new(AtomicBool::new(false));
        let attacker = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut conns: Vec<std::net::TcpStream> = Vec::new();
                let mut opened = 0u64;
                while !stop.load(Relaxed) {
                    // Drop what the server closed (a read of 0 bytes), then
                    // top up to 64 open connections.
                    conns.retain(|c| {
                        c.set_nonblocking(true).unwrap();
                        let idle = (&*c).read(&mut [0u8; 1]);
                        matches!(idle, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                    });
                    while conns.len() < 2 * MAX_CONNECTIONS {
                        conns.push(std::net::TcpStream::connect(addr).unwrap());
                        opened += 1;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                opened
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        for i in 0..20 {
            let mut probe = std::net::TcpStream::connect(addr).unwrap();
            probe
                .set_read_timeout(Some(std::time::Duration::from_secs(1)))
                .unwrap();
            probe
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            let _ = probe.read_to_string(&mut answer);
            assert!(answer.starts_with("HTTP/1.1 200"), "probe {i}: {answer:?}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        stop.store(true, Relaxed);
        let opened = attacker.join().unwrap();
        // The attacker really held the server full: it had to reopen
        // connections the server closed to make room for the probes.
        assert!(opened > 2 * MAX_CONNECTIONS as u64, "{opened}");
        let _ = done.send(());
        server.join().unwrap();
    }
}
