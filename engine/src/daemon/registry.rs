//! Where leases come from: the file registry or etcd (weft allocates), or
//! the Kubernetes API (our lease is our Node's podCIDR).

use super::RunOptions;
use anyhow::{bail, Context};
use std::path::Path;
#[cfg(feature = "etcd")]
use std::time::Duration;
use weft_routes::{
    alloc, subnet_env, Backend, FileRegistry, Lease, LeaseAttrs, NetConf, Registry, SubnetKey,
};

/// Where leases come from.
pub(super) enum Leases {
    /// The file registry or etcd: leases allocated by weft.
    Store(Box<dyn Registry>),
    /// The Kubernetes API: our lease is our node's podCIDR.
    Kube(Box<weft_routes::kube::KubeRegistry>),
}

impl Leases {
    pub fn registry(&self) -> &dyn Registry {
        match self {
            Leases::Store(r) => r.as_ref(),
            Leases::Kube(k) => k.as_ref(),
        }
    }

    /// The network config, with what weft says about it at start.
    pub async fn config(&self) -> anyhow::Result<NetConf> {
        let conf = self
            .registry()
            .config()
            .await
            .context("cannot read the network config")?;
        if conf.backend_defaulted {
            tracing::warn!("net-conf.json has no Backend: running udp, as flanneld's code does (its docs say vxlan)");
        }
        if let (Some(v6), Backend::Udp { .. }) = (&conf.ipv6, &conf.backend) {
            // Refused rather than ignored: a dual-stack cluster would
            // believe its IPv6 pod traffic is carried, and weft would drop
            // it.
            bail!(
                "EnableIPv6=true (IPv6Network {}) with the udp backend: flannel's udp backend carries \
                 IPv4 only, and so does weft's; use vxlan or host-gw for IPv6, or \
                 remove EnableIPv6 from net-conf.json",
                v6.network
            );
        }
        if let (None, Leases::Store(_)) = (&conf.ipv4, self) {
            // flanneld's etcd and file leases always have an IPv4 half.
            bail!(
                "EnableIPv4=false (an IPv6-only overlay) works with the Kubernetes subnet manager \
                 (--kube-subnet-mgr) only, as in flanneld: etcd and file leases are keyed by an IPv4 subnet"
            );
        }
        Ok(conf)
    }

    /// Our lease, announcing `attrs`: our Node's podCIDR in Kubernetes;
    /// else allocated, reusing what the last subnet.env (`subnet_file`)
    /// names when it is free.
    pub async fn acquire(
        &self,
        conf: &NetConf,
        attrs: &LeaseAttrs,
        subnet_file: &Path,
    ) -> anyhow::Result<Lease> {
        Ok(match self {
            Leases::Kube(k) => k.acquire(attrs).await?,
            Leases::Store(r) => {
                let previous = subnet_env::previous_subnet(subnet_file).map(|v4| SubnetKey {
                    v4: Some(v4),
                    v6: subnet_env::previous_ipv6_subnet(subnet_file),
                });
                alloc::acquire(r.as_ref(), conf, attrs, previous).await?
            }
        })
    }
}

/// Opens the registry the options name. etcd is retried with backoff
/// (1 to 30 s) until it answers, as flanneld does at startup.
pub(super) async fn open_registry(opts: &RunOptions) -> anyhow::Result<Leases> {
    if let Some(k) = &opts.kube {
        let r = weft_routes::kube::KubeRegistry::open(k)
            .await
            .context("kube subnet manager")?;
        return Ok(Leases::Kube(Box::new(r)));
    }
    match (&opts.registry_dir, &opts.etcd) {
        (Some(dir), _) => Ok(Leases::Store(Box::new(
            FileRegistry::open(dir)
                .with_context(|| format!("cannot open registry {}", dir.display()))?,
        ))),
        (None, Some(cfg)) => Ok(Leases::Store(connect_etcd(cfg).await?)),
        (None, None) => {
            bail!("no registry: pass --registry-dir, --etcd-endpoints or --kube-subnet-mgr")
        }
    }
}

#[cfg(feature = "etcd")]
async fn connect_etcd(cfg: &weft_routes::EtcdConfig) -> anyhow::Result<Box<dyn Registry>> {
    let mut backoff = Duration::from_secs(1);
    loop {
        match weft_routes::etcd::EtcdRegistry::connect(cfg).await {
            Ok(r) => return Ok(Box::new(r)),
            Err(weft_routes::RegistryError::Io { path, error }) => {
                bail!("cannot read {}: {error}", path.display())
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "etcd unreachable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(not(feature = "etcd"))]
async fn connect_etcd(_: &weft_routes::EtcdConfig) -> anyhow::Result<Box<dyn Registry>> {
    bail!("this weft was built without etcd support: rebuild with `cargo build --features etcd` (needs protoc)")
}
