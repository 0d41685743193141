//! The metrics endpoint under abuse: idle connections hold at most
//! `MAX_CONNECTIONS` slots, the ones past that are closed at once, and
//! scraping works again as soon as the idle ones go.

mod common;
use common::*;
use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;
use weft::metrics::MAX_CONNECTIONS;
use weft_testbed::Cluster;

#[test]
fn idle_connections_cannot_take_the_endpoint() {
    let mut c = Cluster::new("me", 1, &net_conf("vxlan")).unwrap();
    c.start(0, weft(), &["--metrics-addr", "127.0.0.1:9153"])
        .unwrap();
    let (held, extra) = c.nodes[0]
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
            let mut buf = [0u8; 16];
            let closed = matches!(extra.read(&mut buf), Ok(0));
            (held, closed)
        })
        .unwrap();
    assert!(extra, "a connection past the limit was not closed at once");
    drop(held);
    let back = Cluster::wait_for(Duration::from_secs(2), || {
        metric(&metrics(&c.nodes[0].ns, 9153), "weft_ready") == Some(1)
    });
    assert!(back, "scraping did not recover once the idle clients left");
    assert!(c.nodes[0].stop().unwrap().success());
}
