//! `weft check` on this machine's kernel, in a namespace of its own: what
//! it reports is what the namespace offers, and it fails only when weft
//! cannot run there (no CAP_NET_ADMIN, or both data ports taken).

mod common;
use common::*;
use std::net::UdpSocket;
use weft_testbed::Netns;

/// `weft check` in `ns`, optionally as the unprivileged `nobody`: its exit
/// status and its report.
fn check(ns: &Netns, nobody: bool) -> (bool, String) {
    let mut c = match nobody {
        true => {
            let mut c = ns.command("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(weft());
            c
        }
        false => ns.command(weft()),
    };
    let out = c.arg("check").output().expect("weft check runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The row that starts with `what`.
fn row<'a>(report: &'a str, what: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(what))
        .unwrap_or_else(|| panic!("no row {what}:\n{report}"))
}

#[test]
fn check_reports_what_the_kernel_offers() {
    let ns = Netns::create("chk").expect("netns");
    let (ok, report) = check(&ns, false);
    assert!(ok, "weft check failed:\n{report}");
    assert!(report.contains("\nweft can run here.\n"), "{report}");
    for (what, found) in [
        ("CAP_NET_ADMIN", "held"),
        ("/dev/net/tun", "opens"),
        ("TUN device", "created"),
        ("multi-queue", "yes"),
        ("TAP device", "created"),
        ("sendmmsg/recvmmsg", "yes"),
        ("UDP port 8472", "free"),
        ("UDP port 8285", "free"),
    ] {
        let r = row(&report, what);
        assert!(r.contains(found) && r.contains(" ok "), "{r}\n{report}");
    }
    // Offloads, GSO and GRO: used, or a named degradation, never missing.
    for what in ["virtio offloads", "UDP GSO", "UDP GRO"] {
        let r = row(&report, what);
        assert!(r.contains(" ok ") || r.contains(" degraded "), "{r}");
    }
    // A TAP node's peer entries: set here, and refused where CI says they
    // must be (`WEFT_EXPECT_DEGRADED`, comma-separated rows: Debian 12's
    // qemu-user 7.2 refuses the onlink route).
    let degraded = std::env::var("WEFT_EXPECT_DEGRADED").unwrap_or_default();
    let tap = row(&report, "TAP peer entries");
    match degraded.split(',').any(|d| d.trim() == "TAP peer entries") {
        true => assert!(
            tap.contains("refused") && tap.contains(" degraded "),
            "{tap}"
        ),
        false => assert!(tap.contains("route set") && tap.contains(" ok "), "{tap}"),
    }
    // A new namespace does not forward until told to.
    assert!(row(&report, "ip_forward").contains(" fix "), "{report}");
    let vxlan = row(&report, "vxlan module");
    if std::path::Path::new("/sys/module/vxlan").exists() {
        assert!(vxlan.contains("loaded"), "{vxlan}");
    }
    // The probe devices are gone with the probe.
    let links = ns.ip(&["-o", "link"]).expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("weftchk"), "{links}");
}

#[test]
fn check_fails_only_when_both_data_ports_are_taken() {
    let ns = Netns::create("chkport").expect("netns");
    let vxlan = ns
        .enter(|| UdpSocket::bind("0.0.0.0:8472"))
        .expect("enter")
        .expect("bind 8472");
    let (ok, report) = check(&ns, false);
    assert!(ok, "one free port is enough:\n{report}");
    assert!(row(&report, "UDP port 8472").contains("in use"), "{report}");
    assert!(row(&report, "UDP port 8285").contains("free"), "{report}");

    let udp = ns
        .enter(|| UdpSocket::bind("0.0.0.0:8285"))
        .expect("enter")
        .expect("bind 8285");
    let (ok, report) = check(&ns, false);
    assert!(!ok, "both ports taken, yet:\n{report}");
    assert!(
        report.contains("weft cannot run here: UDP port 8472, UDP port 8285."),
        "{report}"
    );
    drop((vxlan, udp));
}

#[test]
fn check_without_cap_net_admin_says_weft_cannot_run() {
    let ns = Netns::create("chkuser").expect("netns");
    let (ok, report) = check(&ns, true);
    assert!(!ok, "{report}");
    assert!(
        row(&report, "CAP_NET_ADMIN").contains("not held"),
        "{report}"
    );
    assert!(
        report.contains("weft cannot run here: CAP_NET_ADMIN"),
        "{report}"
    );
    assert!(
        !report.contains("TUN device"),
        "probed devices without the capability:\n{report}"
    );
}
