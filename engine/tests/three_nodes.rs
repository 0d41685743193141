//! Three nodes, the third joining late; leases removed by hand while
//! traffic flows between the others.

mod common;
use common::*;
use std::time::Duration;
use weft_testbed::Cluster;

/// Pings `ip` from `ns` `count` times at 20 ms intervals on a thread;
/// joining it gives the number of echo replies.
fn ping_in_background(
    ns: &weft_testbed::Netns,
    ip: std::net::Ipv4Addr,
    count: u16,
) -> std::thread::JoinHandle<usize> {
    let ns = ns.handle();
    std::thread::spawn(move || {
        weft_testbed::ping_rtts(&ns, ip, count, Duration::from_millis(20))
            .map(|r| r.len())
            .unwrap_or(0)
    })
}

#[test]
fn late_join_and_hand_removed_leases() {
    let mut c = Cluster::new("3n", 2, &net_conf("vxlan")).expect("testbed");
    for i in 0..2 {
        c.start(
            i,
            weft(),
            &["--device", "tap", "--metrics-addr", "127.0.0.1:9153"],
        )
        .unwrap();
        c.nodes[i].add_pod_bridge().unwrap();
    }
    let pod1 = c.nodes[1].pod_ip().unwrap();
    assert!(wait_ping(&c.nodes[0].ns, pod1));

    // Node 2 joins while node 0 pings node 1.
    let flow = ping_in_background(&c.nodes[0].ns, pod1, 150);
    let n2 = c.add_node("3n").unwrap();
    c.start(
        n2,
        weft(),
        &["--device", "tap", "--metrics-addr", "127.0.0.1:9153"],
    )
    .unwrap();
    c.nodes[n2].add_pod_bridge().unwrap();
    let pod2 = c.nodes[n2].pod_ip().unwrap();
    let sub2 = c.nodes[n2].subnet().unwrap();
    assert!(
        wait_ping(&c.nodes[0].ns, pod2),
        "0 cannot reach the late node\n{}",
        c.nodes[0].log_text()
    );
    assert!(
        wait_ping(&c.nodes[1].ns, pod2),
        "1 cannot reach the late node"
    );
    assert!(ping(&c.nodes[n2].ns, c.nodes[0].pod_ip().unwrap(), 3));

    // Node 2 crashes (its lease stays), then its lease is removed by hand:
    // the others withdraw its routes within a second.
    c.nodes[n2].kill();
    std::fs::remove_file(c.lease_path(n2).unwrap()).unwrap();
    let gone = |i: usize| {
        c.nodes[i]
            .ns
            .ip(&["route", "show", &sub2.to_string()])
            .map(|o| o.stdout.is_empty())
            .unwrap_or(false)
    };
    assert!(
        Cluster::wait_for(Duration::from_millis(1500), || gone(0) && gone(1)),
        "route to the removed lease {sub2} is still there"
    );
    let m = metrics(&c.nodes[0].ns, 9153);
    assert_eq!(metric(&m, "weft_peers"), Some(1), "{m}");
    let replies = flow.join().unwrap();
    assert_eq!(replies, 150, "traffic 0->1 was disturbed");

    // Node 1's lease is removed by hand while it runs: it takes it back.
    let lease1 = c.lease_path(1).unwrap();
    let before = std::fs::read_to_string(&lease1).unwrap();
    std::fs::remove_file(&lease1).unwrap();
    assert!(
        Cluster::wait_for(Duration::from_millis(1500), || lease1.exists()),
        "node 1 did not re-take its lease\n{}",
        c.nodes[1].log_text()
    );
    assert_eq!(std::fs::read_to_string(&lease1).unwrap(), before);
    assert!(wait_ping(&c.nodes[0].ns, pod1));
    for i in 0..2 {
        assert!(c.nodes[i].stop().unwrap().success());
    }
}
