//! A well-formed lease that collides with a live peer (its PublicIP, its
//! subnet, its VtepMAC) never displaces it: the file registry here, with
//! both device kinds; etcd in `etcd.rs`, Kubernetes in `kube.rs`. The
//! scenario is `common::colliders_never_displace_a_live_peer`.

mod common;
use common::*;
use weft_testbed::Cluster;

#[test]
fn colliding_leases_never_displace_a_live_peer_on_tun() {
    let mut c = Cluster::new("ct", 2, &net_conf("vxlan")).unwrap();
    colliders_never_displace_a_live_peer(&mut c, &FileClaims, "tun");
}

#[test]
fn colliding_leases_never_displace_a_live_peer_on_tap() {
    let mut c = Cluster::new("cp", 2, &net_conf("vxlan")).unwrap();
    colliders_never_displace_a_live_peer(&mut c, &FileClaims, "tap");
}
