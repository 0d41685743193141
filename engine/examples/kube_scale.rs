//! Scale benchmark (not a test): with N flannel nodes in a real
//! kube-apiserver (default 1000), how long a newly started weft node in
//! `--kube-subnet-mgr` mode takes to program a route to every peer, and how
//! much memory it holds. Run as root:
//!
//! ```sh
//! cargo build --release -p weft
//! cargo run --release -p weft --example kube_scale [-- N [tun|tap]]
//! ```
//!
//! The API server comes from `WEFT_KUBE_APISERVER` or `.ci/peers.sh`.

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::time::{Duration, Instant};
use weft_testbed::{grant_flannel_role, kube_admin, node_object, Cluster};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u32 = std::env::args().nth(1).map_or(Ok(1000), |a| a.parse())?;
    let device = std::env::args().nth(2).unwrap_or_else(|| "tun".into());
    let weft = std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("weft"))
        .ok_or("cannot find target dir")?;
    if !weft.exists() {
        return Err(format!("{} missing: cargo build --release -p weft", weft.display()).into());
    }
    let apiserver = match std::env::var("WEFT_KUBE_APISERVER") {
        Ok(p) => p,
        Err(_) => {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/peers.sh");
            let out = std::process::Command::new("bash")
                .args([script, "kube-apiserver"])
                .output()?;
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        }
    };
    let mut c = Cluster::new(
        "ks",
        1,
        r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#,
    )?;
    c.start_kube_apiserver(std::path::Path::new(&apiserver))?;
    let kubeconfig = c
        .kube
        .as_ref()
        .ok_or("no API server")?
        .admin_kubeconfig
        .clone();
    let t = Instant::now();
    c.hub.enter(move || -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(populate(kubeconfig, n))
            .map_err(|e| e.to_string())
    })??;
    println!(
        "created and annotated {n} nodes in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    c.start(0, &weft, &["--device", &device])?;
    let ready = t.elapsed();
    let routes = || c.nodes[0].routes_via("flannel.1");
    let all = Cluster::wait_for(Duration::from_secs(60), || routes() >= n as usize);
    let programmed = t.elapsed();
    let rss = c.nodes[0].rss()?;
    println!(
        "{n} peers ({device}): ready (subnet.env written) after {:.2} s, {} routes after {:.2} s{}, RSS {rss}",
        ready.as_secs_f64(),
        routes(),
        programmed.as_secs_f64(),
        if all { "" } else { " (NOT all programmed within 60 s)" }
    );
    c.nodes[0].stop()?;
    Ok(())
}

/// flannel's ClusterRole for user `weft`, our node `node0` (podCIDR
/// 10.0.1.0/24), and `n` flannel nodes annotated as flanneld annotates.
async fn populate(
    kubeconfig: std::path::PathBuf,
    n: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = kube_admin(&kubeconfig).await?;
    grant_flannel_role(&client).await?;
    let nodes: Api<Node> = Api::all(client);
    nodes
        .create(&PostParams::default(), &node_object("node0", "10.0.1.0/24"))
        .await?;
    let mut tasks = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let chunk = chunk.to_vec();
        let nodes = nodes.clone();
        tasks.push(tokio::spawn(async move {
            for i in chunk {
                let s = 0x0a00_0000u32 + ((i + 256) << 8);
                let [_, b, c, _] = s.to_be_bytes();
                let name = format!("peer{i}");
                let obj = node_object(&name, &format!("10.{b}.{c}.0/24"));
                nodes
                    .create(&PostParams::default(), &obj)
                    .await
                    .expect("create node");
                let patch = serde_json::json!({"metadata": {"annotations": {
                    "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                    "flannel.alpha.coreos.com/backend-type": "vxlan",
                    "flannel.alpha.coreos.com/backend-data":
                        format!("{{\"VNI\":1,\"VtepMAC\":\"0e:00:0a:{b:02x}:{c:02x}:01\"}}"),
                    "flannel.alpha.coreos.com/public-ip": format!("172.31.{b}.{c}")
                }}});
                nodes
                    .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await
                    .expect("annotate node");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}
