//! The Kubernetes subnet manager, as flanneld's `--kube-subnet-mgr`
//! (flannel's `pkg/subnet/kube/kube.go`): a node's lease is its
//! `spec.podCIDR`, and what flannel keeps in an etcd lease lives in the
//! node's annotations under a prefix (`flannel.alpha.coreos.com/`):
//! `backend-type`, `backend-data` (the same JSON as etcd's BackendData),
//! `public-ip` (or `public-ip-overwrite`, when an operator set it) and
//! `kube-subnet-manager: "true"`, which marks the nodes that are peers.
//!
//! Nodes are listed and then watched (kube-rs' reflector: a lost watch or
//! an expired resource version lists again), so `leases` answers from the
//! last known state at once, also while the API server is away. Leases
//! here never expire. The store keeps only what a lease is made of (name,
//! uid, creationTimestamp, flannel's annotations, the pod CIDRs): a Node's
//! status (its images, its conditions) is most of its size.
//!
//! A peer is a Node, not a podCIDR: two Nodes can hold one podCIDR (one
//! re-created by hand, or a hostile one), so each lease carries its Node's
//! uid and name, and its seniority is the Node's `creationTimestamp`
//! (then its uid), which the API server sets and no kubelet can change.

use crate::config::NetConf;
use crate::lease::{Lease, LeaseAttrs, Origin, SubnetKey};
use crate::registry::{Registry, RegistryError};
use futures::StreamExt;
use ipnet::{Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use serde_json::{json, Value};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

/// The watch's retry delays: 0.25 s doubling to 1 s. An API server that
/// comes back answers 403 for a while as its RBAC warms up; a longer
/// backoff grows through those refusals and keeps new nodes unreached
/// for many seconds after it answers again (flanneld's informer relists
/// at once). A refused list costs the API server little.
#[derive(Debug, Clone, Copy)]
struct Backoff(Duration);

/// The longest wait between two tries to list or watch.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(250))
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = self.0;
        self.0 = (d * 2).min(MAX_BACKOFF);
        Some(d)
    }
}

/// Why the Kubernetes subnet manager cannot start, one cause each.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// net-conf.json cannot be read.
    #[error("cannot read net-conf.json at {path} (--net-config-path; kube-flannel mounts the kube-flannel-cfg ConfigMap there): {error}")]
    NetConf {
        /// `--net-config-path`.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The kubeconfig file cannot be used.
    #[error("cannot use the kubeconfig {path} (--kubeconfig-file): {error}")]
    Kubeconfig {
        /// `--kubeconfig-file`.
        path: PathBuf,
        /// What kube-rs said.
        error: String,
    },
    /// Neither in-cluster credentials nor a kubeconfig were found.
    #[error("no in-cluster service account and no kubeconfig ({0}): run in a pod, or pass --kubeconfig-file")]
    NoCredentials(String),
    /// `--kube-api-url` is not a URL.
    #[error("--kube-api-url {url} is not a URL: {error}")]
    ApiUrl {
        /// The flag's value.
        url: String,
        /// Why it does not parse.
        error: String,
    },
    /// Nothing says which node this is.
    #[error("cannot tell which node this is: set NODE_NAME, or POD_NAME and POD_NAMESPACE (kube-flannel sets them from the downward API)")]
    NodeName,
    /// The pod we run in names no node.
    #[error("pod {0} has no spec.nodeName")]
    PodWithoutNode(String),
    /// Our node's podCIDR is not in the cluster's Network.
    #[error("node {node}'s podCIDR {cidr} is not inside the Network {network} of net-conf.json")]
    PodCidrOutsideNetwork {
        /// Our node.
        node: String,
        /// Its podCIDR.
        cidr: Ipv4Net,
        /// net-conf.json's Network.
        network: Ipv4Net,
    },
    /// With `EnableIPv6`, our node has no IPv6 podCIDR inside IPv6Network.
    #[error("node {node} has no IPv6 podCIDR inside the IPv6Network {network} of net-conf.json (EnableIPv6 needs spec.podCIDRs of both families; it has {cidrs:?})")]
    NoIpv6PodCidr {
        /// Our node.
        node: String,
        /// Its podCIDRs.
        cidrs: Vec<String>,
        /// net-conf.json's IPv6Network.
        network: Ipv6Net,
    },
}

impl kube::runtime::utils::Backoff for Backoff {
    fn reset(&mut self) {
        *self = Backoff::default();
    }
}

/// flanneld's default annotation prefix.
pub const DEFAULT_PREFIX: &str = "flannel.alpha.coreos.com";

/// How to reach the API server and which node we are.
#[derive(Debug, Clone, Default)]
pub struct KubeConfig {
    /// `--kubeconfig-file`; else in-cluster, else `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// `--kube-api-url`: overrides the server of the kubeconfig.
    pub api_url: Option<String>,
    /// `--kube-annotation-prefix`.
    pub annotation_prefix: String,
    /// `--net-config-path`: net-conf.json, as the ConfigMap mounts it.
    pub net_conf_path: PathBuf,
}

/// The annotation keys under one prefix (flannel's `newAnnotations`: a
/// prefix without a slash gets one).
#[derive(Debug, Clone)]
pub struct Annotations {
    /// The prefix every key starts with, slash included.
    pub prefix: String,
    /// `kube-subnet-manager`.
    pub managed: String,
    /// `backend-type`.
    pub backend_type: String,
    /// `backend-data`.
    pub backend_data: String,
    /// `public-ip`.
    pub public_ip: String,
    /// `public-ip-overwrite`.
    pub public_ip_overwrite: String,
    /// `backend-v6-data`.
    pub backend_v6_data: String,
    /// `public-ipv6`.
    pub public_ipv6: String,
    /// `public-ipv6-overwrite`.
    pub public_ipv6_overwrite: String,
}

impl Annotations {
    /// The keys for `prefix`.
    pub fn new(prefix: &str) -> Annotations {
        let p = if prefix.contains('/') {
            prefix.to_string()
        } else {
            format!("{prefix}/")
        };
        Annotations {
            prefix: p.clone(),
            managed: format!("{p}kube-subnet-manager"),
            backend_type: format!("{p}backend-type"),
            backend_data: format!("{p}backend-data"),
            public_ip: format!("{p}public-ip"),
            public_ip_overwrite: format!("{p}public-ip-overwrite"),
            backend_v6_data: format!("{p}backend-v6-data"),
            public_ipv6: format!("{p}public-ipv6"),
            public_ipv6_overwrite: format!("{p}public-ipv6-overwrite"),
        }
    }
}

/// The leases the Kubernetes API holds.
pub struct KubeRegistry {
    nodes: Api<Node>,
    node_name: String,
    keys: Annotations,
    conf: NetConf,
    store: reflector::Store<Node>,
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> RegistryError {
    let what = what.into();
    move |error| RegistryError::Kube { what, error }
}

impl KubeRegistry {
    /// Connects, finds our node (`NODE_NAME`, else the pod's
    /// `spec.nodeName` from `POD_NAME`/`POD_NAMESPACE`), reads net-conf.json
    /// and lists the nodes.
    pub async fn open(cfg: &KubeConfig) -> Result<KubeRegistry, RegistryError> {
        let text =
            std::fs::read_to_string(&cfg.net_conf_path).map_err(|error| SetupError::NetConf {
                path: cfg.net_conf_path.clone(),
                error,
            })?;
        let conf = NetConf::parse(&text)?;
        let mut config = match &cfg.kubeconfig {
            Some(path) => {
                let bad = |e: &dyn std::fmt::Display| SetupError::Kubeconfig {
                    path: path.clone(),
                    error: e.to_string(),
                };
                let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(&e))?;
                kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .map_err(|e| bad(&e))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| SetupError::NoCredentials(e.to_string()))?,
        };
        if let Some(url) = &cfg.api_url {
            config.cluster_url = url.parse().map_err(|e| SetupError::ApiUrl {
                url: url.clone(),
                error: format!("{e}"),
            })?;
        }
        let client = kube::Client::try_from(config).map_err(kube_err("build a client"))?;
        let node_name = match std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()) {
            Some(n) => n,
            None => {
                let (pod, ns) = match (std::env::var("POD_NAME"), std::env::var("POD_NAMESPACE")) {
                    (Ok(p), Ok(n)) if !p.is_empty() && !n.is_empty() => (p, n),
                    _ => return Err(SetupError::NodeName.into()),
                };
                let p = Api::<Pod>::namespaced(client.clone(), &ns)
                    .get(&pod)
                    .await
                    .map_err(kube_err(format!("get pod {ns}/{pod}")))?;
                p.spec
                    .and_then(|s| s.node_name)
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| SetupError::PodWithoutNode(format!("{ns}/{pod}")))?
            }
        };
        let nodes: Api<Node> = Api::all(client);
        let (store, writer) = reflector::store();
        let keys = Annotations::new(&cfg.annotation_prefix);
        let prefix = keys.prefix.clone();
        let trimmed =
            watcher(nodes.clone(), watcher::Config::default()).modify(move |n| trim(n, &prefix));
        let stream = reflector(writer, trimmed)
            .backoff(Backoff::default())
            .touched_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut last_warning = None::<tokio::time::Instant>;
            while let Some(r) = stream.next().await {
                if let Err(e) = r {
                    // The reflector keeps the last state and lists again.
                    if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                        tracing::warn!(error = %e, "watching nodes failed; forwarding to the last known peers and retrying");
                        last_warning = Some(tokio::time::Instant::now());
                    }
                }
            }
        });
        let mut waited = Duration::ZERO;
        while tokio::time::timeout(Duration::from_secs(5), store.wait_until_ready())
            .await
            .is_err()
        {
            waited += Duration::from_secs(5);
            tracing::warn!(
                ?waited,
                "still waiting for the first list of nodes from the API server"
            );
        }
        tracing::info!(node = %node_name, nodes = store.state().len(), "kube subnet manager: nodes listed");
        Ok(KubeRegistry {
            nodes,
            node_name,
            keys,
            conf,
            store,
        })
    }

    /// Our node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Our lease: waits until our node has a `spec.podCIDR` (saying which
    /// node and field, every few seconds), checks it lies in `Network`, and
    /// writes `attrs` into the node's annotations unless they say so
    /// already (a strategic-merge patch of the status subresource, as
    /// flanneld). A `public-ip-overwrite` annotation wins over `attrs`'
    /// PublicIP, as in flanneld.
    pub async fn acquire(&self, attrs: &LeaseAttrs) -> Result<Lease, RegistryError> {
        let mut waited = Duration::ZERO;
        // The podCIDR of the family the lease is keyed by: IPv4, or IPv6
        // in an IPv6-only cluster.
        let has_cidr = |n: &Node| match self.conf.ipv4 {
            Some(_) => pod_cidr(n).is_some(),
            None => pod_cidr6(n).is_some(),
        };
        let node = loop {
            let node = self
                .store
                .get(&reflector::ObjectRef::new(&self.node_name))
                .map(|n| (*n).clone());
            match node.as_ref().map(has_cidr) {
                Some(true) => break node.unwrap_or_default(),
                found => {
                    if waited.as_secs().is_multiple_of(10) {
                        match found {
                            None => {
                                tracing::warn!(node = %self.node_name, ?waited, "waiting for node {} to exist in the API server", self.node_name)
                            }
                            Some(_) => {
                                tracing::warn!(node = %self.node_name, ?waited, "waiting for node {} to get a spec.podCIDR (the controller manager's --allocate-node-cidrs, or set it by hand)", self.node_name)
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    waited += Duration::from_secs(1);
                }
            }
        };
        let v4 = match (&self.conf.ipv4, pod_cidr(&node)) {
            (None, _) => None,
            (Some(c), Some(cidr)) if c.network.contains(&cidr) => Some(cidr),
            (Some(c), cidr) => {
                return Err(SetupError::PodCidrOutsideNetwork {
                    node: self.node_name.clone(),
                    cidr: cidr.unwrap_or_default(),
                    network: c.network,
                }
                .into())
            }
        };
        let v6 = match &self.conf.ipv6 {
            None => None,
            Some(c) => match pod_cidr6(&node).filter(|v6| c.network.contains(v6)) {
                Some(v6) => Some(v6),
                None => {
                    return Err(SetupError::NoIpv6PodCidr {
                        node: self.node_name.clone(),
                        cidrs: pod_cidrs(&node),
                        network: c.network,
                    }
                    .into())
                }
            },
        };
        let ann = node.metadata.annotations.clone().unwrap_or_default();
        let mut attrs = attrs.clone();
        if let (Some(ip), Some(_)) = (
            ann.get(&self.keys.public_ip_overwrite)
                .and_then(|v| v.parse::<Ipv4Addr>().ok()),
            attrs.public_ip,
        ) {
            if Some(ip) != attrs.public_ip {
                tracing::info!(public_ip = %ip, "using the PublicIP of the node's {} annotation", self.keys.public_ip_overwrite);
            }
            attrs.public_ip = Some(ip);
        }
        if let (Some(ip), Some(_)) = (
            ann.get(&self.keys.public_ipv6_overwrite)
                .and_then(|v| v.parse::<Ipv6Addr>().ok()),
            attrs.public_ipv6,
        ) {
            if Some(ip) != attrs.public_ipv6 {
                tracing::info!(public_ipv6 = %ip, "using the PublicIPv6 of the node's {} annotation", self.keys.public_ipv6_overwrite);
            }
            attrs.public_ipv6 = Some(ip);
        }
        let want = annotations_for(&self.keys, &attrs);
        let same = want
            .iter()
            .all(|(k, v)| ann.get(k).map(String::as_str) == Some(v.as_str()));
        if !same {
            let patch = json!({ "metadata": { "annotations": want } });
            let mut delay = Duration::from_secs(1);
            loop {
                match self
                    .nodes
                    .patch_status(
                        &self.node_name,
                        &PatchParams::default(),
                        &Patch::Strategic(&patch),
                    )
                    .await
                {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(node = %self.node_name, error = %e, "cannot annotate our node; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                }
            }
        }
        Ok(Lease {
            key: SubnetKey { v4, v6 },
            attrs,
            expiration: None,
            origin: origin_of(&node),
        })
    }

    /// Sets our node's `NetworkUnavailable` condition to False, reason
    /// `FlannelIsUp`, as flanneld does once the network is up.
    pub async fn set_network_available(&self) -> Result<(), RegistryError> {
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        );
        let patch = json!({ "status": { "conditions": [{
            "type": "NetworkUnavailable",
            "status": "False",
            "reason": "FlannelIsUp",
            "message": "Flannel is running on this node",
            "lastTransitionTime": now,
            "lastHeartbeatTime": now,
        }]}});
        self.nodes
            .patch_status(
                &self.node_name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
            .map_err(kube_err(format!(
                "set node {}'s NetworkUnavailable condition",
                self.node_name
            )))?;
        Ok(())
    }

    /// A node's lease, if it is a flannel node with a podCIDR.
    fn lease_of(&self, n: &Node) -> Option<Lease> {
        node_lease(&self.keys, &self.conf, n)
    }

    /// Our own node's lease as its annotations say now, if it has one: what
    /// a previous run of ours announced (its VtepMAC is reused). Only our
    /// Node counts: another Node that names our PublicIP says nothing about
    /// us.
    pub fn own_lease(&self) -> Option<Lease> {
        let node = self
            .store
            .get(&reflector::ObjectRef::new(&self.node_name))?;
        self.lease_of(&node)
    }
}

/// The annotations flanneld writes for `attrs` (`AcquireLease`): the
/// IPv6 ones only when there is an IPv6 side (a PublicIPv6).
fn annotations_for(
    keys: &Annotations,
    attrs: &LeaseAttrs,
) -> std::collections::BTreeMap<String, String> {
    let json = |d: &Option<Value>| {
        d.as_ref()
            .map(|d| d.to_string())
            .unwrap_or_else(|| "null".into())
    };
    let mut m = std::collections::BTreeMap::new();
    m.insert(keys.backend_type.clone(), attrs.backend_type().to_string());
    // flanneld's vxlan backend has no BackendData without an IPv4 device
    // and then writes neither; its other backends write both always (in
    // an IPv6-only cluster `null` and 0.0.0.0).
    if attrs.public_ip.is_some() || attrs.backend_type() != "vxlan" {
        let ip = attrs.public_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        m.insert(keys.backend_data.clone(), json(&attrs.backend_data));
        m.insert(keys.public_ip.clone(), ip.to_string());
    }
    if let Some(ip6) = attrs.public_ipv6 {
        m.insert(keys.backend_v6_data.clone(), json(&attrs.backend_v6_data));
        m.insert(keys.public_ipv6.clone(), ip6.to_string());
    }
    m.insert(keys.managed.clone(), "true".into());
    m
}

/// A node's lease, if it is a flannel node with a podCIDR. Its annotations
/// are as untrusted as any lease: what does not parse becomes something
/// `LeasePolicy` refuses (an unparsable PublicIP is 0.0.0.0, an
/// unparsable PublicIPv6 ::), never a crash. With `EnableIPv6` the IPv6
/// podCIDR, `public-ipv6` and `backend-v6-data` make the IPv6 half;
/// flanneld skips a Node that lacks one of them, IPv4 included, where
/// weft keeps the IPv4 half and admission refuses the IPv6 half alone.
/// In an IPv6-only cluster the IPv4 podCIDR and annotations are not read
/// (as in flanneld), and a Node without an IPv6 podCIDR is no lease.
fn node_lease(keys: &Annotations, conf: &NetConf, n: &Node) -> Option<Lease> {
    let ann = n.metadata.annotations.as_ref()?;
    if ann.get(&keys.managed).map(String::as_str) != Some("true") {
        return None;
    }
    let (cidr, public_ip) = match conf.ipv4 {
        Some(_) => (
            Some(pod_cidr(n)?),
            Some(
                ann.get(&keys.public_ip)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(Ipv4Addr::UNSPECIFIED),
            ),
        ),
        None => {
            pod_cidr6(n)?;
            (None, None)
        }
    };
    let backend_type = ann
        .get(&keys.backend_type)
        .cloned()
        .filter(|t| !t.is_empty());
    let data = |key: &str| {
        ann.get(key)
            .map(|d| serde_json::from_str::<Value>(d).unwrap_or_else(|_| Value::String(d.clone())))
            .filter(|d| !d.is_null())
    };
    let (v6, public_ipv6, backend_v6_data) = match conf.ipv6 {
        None => (None, None, None),
        Some(_) => (
            pod_cidr6(n),
            ann.get(&keys.public_ipv6)
                .map(|v| v.parse().unwrap_or(Ipv6Addr::UNSPECIFIED)),
            data(&keys.backend_v6_data),
        ),
    };
    Some(Lease {
        key: SubnetKey { v4: cidr, v6 },
        attrs: LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_type,
            backend_data: cidr.and_then(|_| data(&keys.backend_data)),
            backend_v6_data,
        },
        expiration: None,
        origin: origin_of(n),
    })
}

/// A Node's identity and seniority: `creationTimestamp`, then uid.
fn origin_of(n: &Node) -> Origin {
    let m = &n.metadata;
    let since = m.creation_timestamp.as_ref().map_or(i64::MAX, |t| {
        i64::try_from(t.0.as_nanosecond()).unwrap_or(i64::MAX)
    });
    Origin {
        since,
        holder: m.uid.clone().unwrap_or_default(),
        name: m.name.clone().unwrap_or_default(),
    }
}

/// Keeps of a Node only what a lease is made of, so 5 000 Nodes stay small:
/// name, uid and creationTimestamp, the annotations under flannel's
/// prefix, and the pod CIDRs.
fn trim(n: &mut Node, prefix: &str) {
    let m = &mut n.metadata;
    m.managed_fields = None;
    m.labels = None;
    m.owner_references = None;
    m.finalizers = None;
    if let Some(a) = m.annotations.as_mut() {
        a.retain(|k, _| k.starts_with(prefix));
    }
    n.status = None;
    if let Some(spec) = n.spec.as_mut() {
        *spec = k8s_openapi::api::core::v1::NodeSpec {
            pod_cidr: spec.pod_cidr.take(),
            pod_cidrs: spec.pod_cidrs.take(),
            ..Default::default()
        };
    }
}

/// A node's IPv4 pod CIDR: the first IPv4 one of `spec.podCIDRs`, else
/// `spec.podCIDR`.
fn pod_cidr(n: &Node) -> Option<Ipv4Net> {
    first_pod_cidr(n, |c| c.parse::<Ipv4Net>().ok().map(|c| c.trunc()))
}

/// A node's IPv6 pod CIDR, likewise.
fn pod_cidr6(n: &Node) -> Option<Ipv6Net> {
    first_pod_cidr(n, |c| c.parse::<Ipv6Net>().ok().map(|c| c.trunc()))
}

/// The first of `spec.podCIDRs`, then `spec.podCIDR`, that `parse` takes.
fn first_pod_cidr<T>(n: &Node, parse: impl Fn(&str) -> Option<T>) -> Option<T> {
    let spec = n.spec.as_ref()?;
    let all = spec.pod_cidrs.iter().flatten().chain(spec.pod_cidr.iter());
    all.filter_map(|c| parse(c)).next()
}

/// A node's pod CIDRs as it lists them, for messages.
fn pod_cidrs(n: &Node) -> Vec<String> {
    let Some(spec) = n.spec.as_ref() else {
        return Vec::new();
    };
    match &spec.pod_cidrs {
        Some(all) if !all.is_empty() => all.clone(),
        _ => spec.pod_cidr.iter().cloned().collect(),
    }
}

#[async_trait::async_trait]
impl Registry for KubeRegistry {
    async fn config(&self) -> Result<NetConf, RegistryError> {
        Ok(self.conf.clone())
    }

    async fn leases(&self) -> Result<Vec<Lease>, RegistryError> {
        let mut out: Vec<Lease> = self
            .store
            .state()
            .iter()
            .filter_map(|n| self.lease_of(n))
            .collect();
        out.sort_by_key(|l| l.key);
        Ok(out)
    }

    /// Only our own node's lease can be "created": by annotating it.
    async fn create(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
    ) -> Result<Option<Lease>, RegistryError> {
        let l = self.acquire(attrs).await?;
        Ok((l.key == *key).then_some(l))
    }

    async fn renew(&self, _key: &SubnetKey, attrs: &LeaseAttrs) -> Result<Lease, RegistryError> {
        self.acquire(attrs).await
    }

    /// Leases here are nodes: nothing to delete (flanneld leaves its
    /// annotations too).
    async fn delete(&self, _key: &SubnetKey) -> Result<(), RegistryError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_keys_take_flannel_s_prefix_rule() {
        let a = Annotations::new(DEFAULT_PREFIX);
        assert_eq!(a.backend_data, "flannel.alpha.coreos.com/backend-data");
        assert_eq!(a.managed, "flannel.alpha.coreos.com/kube-subnet-manager");
        let b = Annotations::new("example.com/weft-");
        assert_eq!(b.public_ip, "example.com/weft-public-ip");
    }

    fn dual_node(annotations: &[(&str, &str)]) -> Node {
        let keys = Annotations::new(DEFAULT_PREFIX);
        let mut ann: std::collections::BTreeMap<String, String> = annotations
            .iter()
            .map(|(k, v)| (format!("{}{k}", keys.prefix), v.to_string()))
            .collect();
        ann.insert(keys.managed.clone(), "true".into());
        Node {
            metadata: kube::api::ObjectMeta {
                name: Some("n3".into()),
                annotations: Some(ann),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                pod_cidr: Some("10.244.3.0/24".into()),
                pod_cidrs: Some(vec!["10.244.3.0/24".into(), "fd00:10:244:3::/64".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#;
    const V6_DATA: &str = r#"{"VNI":1,"VtepMAC":"0e:00:00:00:60:03"}"#;

    /// A dual-stack Node, as flanneld annotates it, is one lease with both
    /// halves; without EnableIPv6 its IPv6 side is not read.
    #[test]
    fn a_dual_stack_node_is_a_lease_with_both_halves() {
        let keys = Annotations::new(DEFAULT_PREFIX);
        let n = dual_node(&[
            ("backend-type", "vxlan"),
            ("backend-data", r#"{"VNI":1,"VtepMAC":"0e:00:00:00:00:03"}"#),
            ("public-ip", "192.168.100.3"),
            ("backend-v6-data", V6_DATA),
            ("public-ipv6", "2001:db8::3"),
        ]);
        let dual = NetConf::parse(DUAL).unwrap();
        let l = node_lease(&keys, &dual, &n).unwrap();
        assert_eq!(l.key.to_string(), "10.244.3.0-24&fd00:10:244:3::-64");
        assert_eq!(l.attrs.public_ipv6, Some("2001:db8::3".parse().unwrap()));
        let data = l.attrs.vxlan_v6_data().unwrap();
        assert_eq!(data.vtep_mac.to_string(), "0e:00:00:00:60:03");
        // What it announces is what flanneld writes, both families.
        let back = annotations_for(&keys, &l.attrs);
        for (k, v) in n.metadata.annotations.as_ref().unwrap() {
            assert_eq!(back.get(k), Some(v), "{k}");
        }
        let v4_only =
            NetConf::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        let l = node_lease(&keys, &v4_only, &n).unwrap();
        assert_eq!(l.key.to_string(), "10.244.3.0-24");
        assert_eq!(
            (l.attrs.public_ipv6, &l.attrs.backend_v6_data),
            (None, &None)
        );
        assert!(!annotations_for(&keys, &l.attrs).contains_key(&keys.public_ipv6));
    }

    /// A Node whose IPv6 side is missing or garbled is still a lease: its
    /// IPv6 half is whatever it says, for admission to refuse (flanneld
    /// would drop the whole Node, IPv4 included).
    #[test]
    fn a_node_with_a_bad_ipv6_side_is_still_a_lease() {
        let keys = Annotations::new(DEFAULT_PREFIX);
        let dual = NetConf::parse(DUAL).unwrap();
        let v4 = [
            ("backend-type", "vxlan"),
            ("backend-data", r#"{"VNI":1,"VtepMAC":"0e:00:00:00:00:03"}"#),
            ("public-ip", "192.168.100.3"),
        ];
        let l = node_lease(&keys, &dual, &dual_node(&v4)).unwrap();
        assert_eq!(l.attrs.public_ip, "192.168.100.3".parse().ok());
        assert_eq!(l.attrs.public_ipv6, None);
        let garbled = [
            v4.as_slice(),
            &[("public-ipv6", "nope"), ("backend-v6-data", "{")],
        ]
        .concat();
        let l = node_lease(&keys, &dual, &dual_node(&garbled)).unwrap();
        assert_eq!(l.attrs.public_ipv6, Some(Ipv6Addr::UNSPECIFIED));
        assert_eq!(l.attrs.vxlan_v6_data(), None);
        let mut v4_cidr_only = dual_node(&v4);
        v4_cidr_only.spec.as_mut().unwrap().pod_cidrs = Some(vec!["10.244.3.0/24".into()]);
        let l = node_lease(&keys, &dual, &v4_cidr_only).unwrap();
        assert_eq!(l.key.v6, None);
        assert_eq!(pod_cidrs(&v4_cidr_only), ["10.244.3.0/24"]);
    }

    /// In an IPv6-only cluster (`"EnableIPv4": false`) a Node is its
    /// IPv6 half: the key is its IPv6 podCIDR alone, the IPv4 annotations
    /// are not read, and a Node without an IPv6 podCIDR is no lease (as in
    /// flanneld's `nodeToLease`). It announces what flanneld's vxlan
    /// backend does then: no public-ip and no backend-data.
    #[test]
    fn an_ipv6_only_node_is_its_ipv6_half() {
        let keys = Annotations::new(DEFAULT_PREFIX);
        let conf = NetConf::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let ann = [
            ("backend-type", "vxlan"),
            ("backend-v6-data", V6_DATA),
            ("public-ipv6", "2001:db8::3"),
        ];
        let mut n = dual_node(&ann);
        n.spec.as_mut().unwrap().pod_cidr = Some("fd00:10:244:3::/64".into());
        n.spec.as_mut().unwrap().pod_cidrs = Some(vec!["fd00:10:244:3::/64".into()]);
        let l = node_lease(&keys, &conf, &n).unwrap();
        assert_eq!(l.key, SubnetKey::v6("fd00:10:244:3::/64".parse().unwrap()));
        assert_eq!(l.key.to_string(), "fd00:10:244:3::-64");
        assert_eq!((l.attrs.public_ip, &l.attrs.backend_data), (None, &None));
        assert_eq!(l.attrs.public_ipv6, Some("2001:db8::3".parse().unwrap()));
        let back = annotations_for(&keys, &l.attrs);
        assert!(!back.contains_key(&keys.public_ip) && !back.contains_key(&keys.backend_data));
        for (k, v) in n.metadata.annotations.as_ref().unwrap() {
            assert_eq!(back.get(k), Some(v), "{k}");
        }
        // A dual-stack Node's IPv4 side is ignored.
        let l = node_lease(&keys, &conf, &dual_node(&ann)).unwrap();
        assert_eq!(l.key.to_string(), "fd00:10:244:3::-64");
        // host-gw writes the IPv4 annotations all the same, as flanneld.
        let hg = LeaseAttrs {
            backend_type: Some("host-gw".into()),
            ..l.attrs.clone()
        };
        let back = annotations_for(&keys, &hg);
        assert_eq!(back[&keys.public_ip], "0.0.0.0");
        assert_eq!(back[&keys.backend_data], "null");
        // No IPv6 podCIDR: no lease.
        let mut v4 = dual_node(&ann);
        v4.spec.as_mut().unwrap().pod_cidrs = Some(vec!["10.244.3.0/24".into()]);
        assert_eq!(node_lease(&keys, &conf, &v4), None);
    }

    #[test]
    fn pod_cidr_prefers_the_ipv4_entry_of_pod_cidrs() {
        let mut n = Node {
            spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                pod_cidr: Some("fd00::/64".into()),
                pod_cidrs: Some(vec!["fd00::/64".into(), "10.244.3.0/24".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(pod_cidr(&n), Some("10.244.3.0/24".parse().unwrap()));
        n.spec = Some(Default::default());
        assert_eq!(pod_cidr(&n), None);
    }
}
