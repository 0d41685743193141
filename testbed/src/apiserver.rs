//! A real kube-apiserver in the hub on the test etcd, and the Kubernetes
//! objects the tests make through it.

use crate::*;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

/// A kube-apiserver in the hub, on the test etcd, as envtest starts one:
/// its own CA and serving certificate, static bearer tokens, RBAC.
#[derive(Debug)]
pub struct KubeApi {
    /// `https://192.168.100.250:6443`.
    pub url: String,
    /// A kubeconfig for `system:masters`.
    pub admin_kubeconfig: PathBuf,
    /// A kubeconfig for user `weft`, who has only what RBAC grants.
    pub weft_kubeconfig: PathBuf,
    /// The same at `https://[2001:db8:100::fa]:6443`, for a host without
    /// IPv4 (`Cluster::drop_ipv4`).
    pub weft6_kubeconfig: PathBuf,
    /// net-conf.json for the nodes' `--net-config-path`.
    pub net_conf: PathBuf,
    /// Its log.
    pub log: PathBuf,
    process: Option<Child>,
    binary: PathBuf,
    args: Vec<String>,
}

impl KubeApi {
    /// Stops the API server (SIGKILL), as an outage would.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// What the API server logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Cluster {
    /// Starts a real kube-apiserver (`binary`, see `.ci/peers.sh`) in the
    /// hub on this cluster's etcd (started here if it is not), with a
    /// throwaway CA, static tokens for `admin` (system:masters) and `weft`,
    /// and RBAC. Returns once it answers; nodes started afterwards run
    /// with `--kube-subnet-mgr` as node `node<i>`.
    pub fn start_kube_apiserver(&mut self, binary: &Path) -> io::Result<()> {
        if self.etcd.is_none() {
            self.start_etcd()?;
        }
        let d = self.dir.path().join("kube");
        std::fs::create_dir_all(&d)?;
        let p = |n: &str| d.join(n).to_string_lossy().to_string();
        issue_pki(
            &d,
            "weft-kube-ca",
            &[(
                "server",
                "kube-apiserver",
                "subjectAltName=IP:192.168.100.250,IP:2001:db8:100::fa,IP:127.0.0.1,DNS:kubernetes\nextendedKeyUsage=serverAuth\n",
            )],
        )?;
        sh("openssl", &["genrsa", "-out", &p("sa.key"), "2048"])?;
        sh(
            "openssl",
            &["rsa", "-in", &p("sa.key"), "-pubout", "-out", &p("sa.pub")],
        )?;
        let admin = format!("admin-{:016x}", rand::random::<u64>());
        let weft = format!("weft-{:016x}", rand::random::<u64>());
        std::fs::write(
            d.join("tokens.csv"),
            format!("{admin},admin,1,\"system:masters\"\n{weft},weft,2\n"),
        )?;
        let url = "https://192.168.100.250:6443".to_string();
        let ca = p("ca.crt");
        let kubeconfig = |user: &str, token: &str, url: &str| {
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: {user}\ncurrent-context: test\n"
            )
        };
        std::fs::write(
            d.join("admin.kubeconfig"),
            kubeconfig("admin", &admin, &url),
        )?;
        std::fs::write(d.join("weft.kubeconfig"), kubeconfig("weft", &weft, &url))?;
        let url6 = "https://[2001:db8:100::fa]:6443";
        std::fs::write(d.join("weft6.kubeconfig"), kubeconfig("weft", &weft, url6))?;
        std::fs::write(d.join("net-conf.json"), &self.net_conf)?;
        let args: Vec<String> = [
            format!("--etcd-servers={}", self.etcd_url()),
            "--etcd-prefix=/registry".into(),
            // Every address, IPv6 ones included (`Cluster::drop_ipv4`).
            "--bind-address=::".into(),
            "--advertise-address=192.168.100.250".into(),
            "--secure-port=6443".into(),
            format!("--tls-cert-file={}", p("server.crt")),
            format!("--tls-private-key-file={}", p("server.key")),
            format!("--token-auth-file={}", p("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--enable-priority-and-fairness=false".into(),
            format!("--cert-dir={}", p("certs")),
        ]
        .into();
        let mut api = KubeApi {
            url,
            admin_kubeconfig: d.join("admin.kubeconfig"),
            weft_kubeconfig: d.join("weft.kubeconfig"),
            weft6_kubeconfig: d.join("weft6.kubeconfig"),
            net_conf: d.join("net-conf.json"),
            log: d.join("kube-apiserver.log"),
            process: None,
            binary: binary.to_path_buf(),
            args,
        };
        self.run_kube_apiserver(&mut api)?;
        self.kube = Some(api);
        Ok(())
    }

    /// (Re)starts the API server process and waits (up to 60 s) for its
    /// port.
    fn run_kube_apiserver(&self, api: &mut KubeApi) -> io::Result<()> {
        let log = File::options().create(true).append(true).open(&api.log)?;
        let child = self
            .hub
            .command(&api.binary)
            .args(&api.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        api.process = Some(child);
        let up = Cluster::wait_for(Duration::from_secs(60), || {
            self.hub
                .enter(|| std::net::TcpStream::connect(("192.168.100.250", 6443)).is_ok())
                .unwrap_or(false)
        });
        if !up {
            return Err(io::Error::other(format!(
                "kube-apiserver did not listen within 60 s:\n{}",
                api.log_text()
            )));
        }
        Ok(())
    }

    /// Starts the API server again after `KubeApi::stop`.
    pub fn restart_kube_apiserver(&mut self) -> io::Result<()> {
        let mut api = self
            .kube
            .take()
            .ok_or_else(|| io::Error::other("no API server"))?;
        let r = self.run_kube_apiserver(&mut api);
        self.kube = Some(api);
        r
    }
}

/// An admin client from `kubeconfig` (`KubeApi::admin_kubeconfig`), once
/// the API server serves: it answers its port a while before it does.
/// Call it from inside the hub (`Cluster::hub.enter`).
pub async fn kube_admin(kubeconfig: &Path) -> Result<kube::Client, Box<dyn std::error::Error>> {
    use k8s_openapi::api::core::v1::Node;
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(cfg)?;
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    for _ in 0..120 {
        if nodes.list(&Default::default()).await.is_ok() {
            return Ok(client);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err("the API server did not serve within 60 s".into())
}

/// Binds flannel's ClusterRole (pods get; nodes get/list/watch;
/// nodes/status patch) and nothing else to user `weft`.
pub async fn grant_flannel_role(client: &kube::Client) -> Result<(), Box<dyn std::error::Error>> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "flannel"},
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]}
        ]
    }))?;
    kube::Api::<ClusterRole>::all(client.clone())
        .create(&Default::default(), &role)
        .await?;
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "flannel"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "flannel"},
        "subjects": [{"kind": "User", "name": "weft", "apiGroup": "rbac.authorization.k8s.io"}]
    }))?;
    kube::Api::<ClusterRoleBinding>::all(client.clone())
        .create(&Default::default(), &binding)
        .await?;
    Ok(())
}

/// A Node object as a kubelet registers one: `name`, `pod_cidr`, and an
/// annotation (flanneld v0.28 panics on a node without any).
pub fn node_object(name: &str, pod_cidr: &str) -> k8s_openapi::api::core::v1::Node {
    node_object_with(name, &[pod_cidr])
}

/// `node_object` with several podCIDRs (a dual-stack node: IPv4, then
/// IPv6); `spec.podCIDR` is the first, as the node IPAM controller sets it.
pub fn node_object_with(name: &str, pod_cidrs: &[&str]) -> k8s_openapi::api::core::v1::Node {
    let v = serde_json::json!({
        "metadata": {"name": name, "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"podCIDR": pod_cidrs.first(), "podCIDRs": pod_cidrs}
    });
    // A literal of the Node schema: it always deserializes.
    serde_json::from_value(v).unwrap_or_default()
}
