//! The data port belongs to weft alone. An unprivileged user on the node
//! (or a hostNetwork pod) must not be able to bind weft's UDP port on the
//! node's PublicIP, with or without SO_REUSEADDR or SO_REUSEPORT: a more
//! specific bind than weft's wildcard would receive the overlay's inbound
//! traffic. Traffic keeps flowing to weft afterwards.
//!
//! The unprivileged side is this test binary run again as `nobody`
//! (`setpriv`) inside the node's namespace, running the ignored
//! `bind_probe` test, which reports each attempt on stdout.

mod common;
use common::*;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use weft_testbed::Cluster;

const PROBE_ENV: &str = "WEFT_BIND_PROBE_ADDR";

/// Run as `nobody` by `port_is_not_shared`: tries to bind the address in
/// `WEFT_BIND_PROBE_ADDR` three ways and prints `<way>=<ok|errno>`.
#[test]
#[ignore = "run by port_is_not_shared as an unprivileged user"]
fn bind_probe() {
    let addr: SocketAddr = std::env::var(PROBE_ENV)
        .expect("run by port_is_not_shared")
        .parse()
        .unwrap();
    for way in ["plain", "reuseaddr", "reuseport"] {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        match way {
            "reuseaddr" => s.set_reuse_address(true).unwrap(),
            "reuseport" => s.set_reuse_port(true).unwrap(),
            _ => {}
        }
        let r = s.bind(&addr.into());
        println!(
            "PROBE {way}={}",
            match r {
                Ok(()) => "ok".to_string(),
                Err(e) => e.raw_os_error().unwrap_or(0).to_string(),
            }
        );
    }
}

fn port_is_not_shared(tag: &str, backend: &str, port: u16) {
    let mut c = Cluster::new(tag, 2, &net_conf(backend)).expect("testbed");
    start_all(&mut c, &[]);
    let probe_addr = format!("{}:{port}", c.nodes[0].underlay);
    // A copy of this binary that `nobody` can reach and run, wherever the
    // checkout lives (a home directory is often closed to other users).
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("probe");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = c.nodes[0]
        .ns
        .command("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args([
            "--exact",
            "bind_probe",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROBE_ENV, &probe_addr)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let results: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once("PROBE ").map(|(_, r)| r))
        .collect();
    assert_eq!(
        results.len(),
        3,
        "the probe did not run as nobody:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let in_use = libc::EADDRINUSE.to_string();
    for r in &results {
        let (way, got) = r.split_once('=').unwrap();
        assert_eq!(
            got, in_use,
            "an unprivileged {way} bind of {probe_addr} was not refused"
        );
    }
    // Weft still has its port: traffic flows both ways.
    assert!(wait_ping(&c.nodes[0].ns, c.nodes[1].pod_ip().unwrap()));
    assert!(ping(&c.nodes[1].ns, c.nodes[0].pod_ip().unwrap(), 3));
}

#[test]
fn vxlan_port_is_not_shared() {
    port_is_not_shared("hjv", "vxlan", 8472);
}

#[test]
fn udp_port_is_not_shared() {
    port_is_not_shared("hju", "udp", 8285);
}
