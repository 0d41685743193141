//! The metrics endpoint under abuse: idle connections hold at most
//! `MAX_CONNECTIONS` slots; a new connection past that closes the oldest
//! and is answered itself, so whoever holds connections open cannot lock
//! out a scrape or a liveness probe.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use weft::metrics::MAX_CONNECTIONS;
use weft_testbed::Cluster;

#[test]
fn idle_connections_cannot_take_the_endpoint() {
    let mut c = Cluster::new("me", 1, &net_conf("vxlan")).unwrap();
    c.start(0, weft(), &["--metrics-addr", "127.0.0.1:9153"])
        .unwrap();
    let (closed, answer) = c.nodes[0]
        .ns
        .enter(|| {
            let connect = || TcpStream::connect("127.0.0.1:9153").unwrap();
            let held: Vec<TcpStream> = (0..MAX_CONNECTIONS).map(|_| connect()).collect();
            // Let the server accept and park them all.
            std::thread::sleep(Duration::from_millis(300));
            let mut extra = connect();
            extra
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            extra
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            let _ = extra.read_to_string(&mut answer);
            // Which of the held ones the server closed: read 0 bytes.
            let closed: Vec<usize> = held
                .iter()
                .enumerate()
                .filter(|(_, s)| {
                    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    matches!((&**s).read(&mut [0u8; 1]), Ok(0))
                })
                .map(|(i, _)| i)
                .collect();
            (closed, answer)
        })
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the connection past the limit was not answered: {answer:?}"
    );
    assert_eq!(closed, [0], "not exactly the oldest connection was closed");
    let back = Cluster::wait_for(Duration::from_secs(2), || {
        metric(&metrics(&c.nodes[0].ns, 9153), "weft_ready") == Some(1)
    });
    assert!(back, "scraping did not work once the idle clients left");
    assert!(c.nodes[0].stop().unwrap().success());
}
