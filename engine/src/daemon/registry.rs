//! Where leases come from: the file registry or etcd (weft allocates), or
//! the Kubernetes API (our lease is our Node's podCIDR).

use super::RunOptions;
use anyhow::{bail, Context};
#[cfg(feature = "etcd")]
use std::time::Duration;
use weft_routes::{FileRegistry, Registry};

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
