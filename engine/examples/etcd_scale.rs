//! Scale benchmark (not a test): with N leases in etcd (default 5000), how
//! long a newly started weft node takes to program a route to every peer,
//! and how much memory it holds. Run as root:
//!
//! ```sh
//! cargo build --release -p weft --features etcd
//! cargo run --release -p weft --features etcd --example etcd_scale [-- N [tun|tap]]
//! ```

use std::time::{Duration, Instant};
use weft_testbed::{Cluster, ETCD_PREFIX};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u32 = std::env::args().nth(1).map_or(Ok(5000), |a| a.parse())?;
    let device = std::env::args().nth(2).unwrap_or_else(|| "tun".into());
    let weft = std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("weft"))
        .ok_or("cannot find target dir")?;
    if !weft.exists() {
        return Err(format!(
            "{} missing: cargo build --release -p weft --features etcd",
            weft.display()
        )
        .into());
    }
    let mut c = Cluster::new(
        "sc",
        1,
        r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#,
    )?;
    c.start_etcd()?;
    // Leases as flanneld writes them, 100 puts per transaction (etcd's
    // default limit is 128 operations).
    let t = Instant::now();
    let subnets: Vec<u32> = (0..n).map(|i| 0x0a00_0000 + ((i + 256) << 8)).collect();
    for chunk in subnets.chunks(100) {
        let mut txn = String::from("\n");
        for s in chunk {
            let [a, b, cc, _] = s.to_be_bytes();
            let value = format!(
                r#"{{"PublicIP":"172.31.{b}.{cc}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:00:{a:02x}:{b:02x}:{cc:02x}:01"}}}}"#
            );
            // etcdctl's txn syntax: double-quoted, inner quotes escaped.
            let quoted = value.replace('"', "\\\"");
            txn.push_str(&format!(
                "put {ETCD_PREFIX}/subnets/{a}.{b}.{cc}.0-24 \"{quoted}\"\n"
            ));
        }
        txn.push_str("\n\n");
        etcdctl_txn(&c, &txn)?;
    }
    println!("wrote {n} leases in {:.1} s", t.elapsed().as_secs_f64());

    let t = Instant::now();
    c.start(0, &weft, &["--device", &device])?;
    let ready = t.elapsed();
    let routes = || c.nodes[0].routes_via("flannel.1");
    let all = Cluster::wait_for(Duration::from_secs(20), || routes() >= n as usize);
    let programmed = t.elapsed();
    let rss = c.nodes[0].rss()?;
    println!(
        "{n} peers ({device}): ready (subnet.env written) after {:.2} s, {} routes after {:.2} s{}, RSS {rss}",
        ready.as_secs_f64(),
        routes(),
        programmed.as_secs_f64(),
        if all { "" } else { " (NOT all programmed within 60 s)" }
    );
    if !all {
        let log = c.nodes[0].log_text();
        eprintln!("{}", log.lines().take(8).collect::<Vec<_>>().join("\n"));
    }
    c.nodes[0].stop()?;
    Ok(())
}

fn etcdctl_txn(c: &Cluster, script: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut child = c
        .hub
        .command("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints=http://127.0.0.1:2379", "txn"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no stdin"))?
        .write_all(script.as_bytes())?;
    let s = child.wait()?;
    if !s.success() {
        return Err(std::io::Error::other(format!("etcdctl txn failed: {s}")));
    }
    Ok(())
}
