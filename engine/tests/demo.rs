//! `weft demo`, the README's first command, end to end: it runs, prints its
//! summary, and leaves no namespace behind, also when interrupted.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The namespaces a process with this pid made (`testbed::unique`).
fn namespaces_of(pid: u32) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.contains(&format!("-{pid}-")))
        .map(str::to_string)
        .collect()
}

#[test]
fn demo_runs_and_cleans_up() {
    let child = Command::new(weft())
        .args(["demo", "--nodes", "3", "--seconds", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "6/6 reachable",
        "NODE   PEER SUBNET",
        "kernel VXLAN (reference)",
        "weft vxlan (tun)",
        "3 streams around the ring",
    ] {
        assert!(text.contains(want), "{want:?} missing:\n{text}");
    }
    // Each node has two peer rows in the live table, all over the tunnel.
    let rows = text
        .lines()
        .filter(|l| l.trim_start().starts_with("node ") && l.contains("tunnel"))
        .count();
    assert_eq!(rows, 6, "{text}");
    assert!(namespaces_of(pid).is_empty(), "{:?}", namespaces_of(pid));
}

#[test]
fn demo_exits_cleanly_on_ctrl_c() {
    let child = Command::new(weft())
        .args([
            "demo",
            "--backend",
            "udp",
            "--nodes",
            "2",
            "--seconds",
            "30",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait until the live phase runs, then interrupt.
    let started = Instant::now();
    while namespaces_of(pid).len() < 3 && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        t.elapsed()
    );
    assert!(
        text.contains("interrupted: everything the demo made has been removed"),
        "{text}"
    );
    assert!(namespaces_of(pid).is_empty(), "{:?}", namespaces_of(pid));
}
