//! Our lease, kept: checked against each poll's leases, taken again when it
//! was removed, renewed ahead of its expiry.

use crate::metrics::Metrics;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use weft_routes::{Lease, LeaseAttrs, Registry};

/// How long after a failed renewal the next try comes (flanneld's minute).
const RENEW_RETRY: Duration = Duration::from_secs(60);

/// All of the lease's state in the control loop lives here.
pub(super) struct LeaseKeeper {
    pub lease: Lease,
    /// What we (re)announce: our PublicIP and backend data.
    attrs: LeaseAttrs,
    /// Renew this long before the lease expires.
    renew_margin: Duration,
    /// When the last failed renewal was tried (retried once a minute).
    last_renew_try: Option<tokio::time::Instant>,
}

impl LeaseKeeper {
    /// Keeps `lease`, announcing `attrs`, renewed `renew_margin` before it
    /// expires.
    pub fn new(lease: Lease, attrs: LeaseAttrs, renew_margin: Duration) -> LeaseKeeper {
        LeaseKeeper {
            lease,
            attrs,
            renew_margin,
            last_renew_try: None,
        }
    }

    /// One poll's worth of keeping; an error when the lease is lost for
    /// good (revoked and taken, or another node's now).
    pub async fn keep(&mut self, reg: &dyn Registry, leases: &[Lease]) -> anyhow::Result<()> {
        // Ours is the lease with our key and our PublicIP (which a node
        // annotation may override). In Kubernetes another node may claim
        // our podCIDR too: that is a refused lease, not a reason to leave.
        // In an IPv6-only cluster, PublicIPv6 plays that part.
        let owner = |l: &Lease| match l.key.v4 {
            Some(_) => l.attrs.public_ip.map(std::net::IpAddr::from),
            None => l.attrs.public_ipv6.map(std::net::IpAddr::from),
        };
        let mut with_our_key = leases.iter().filter(|l| l.key == self.lease.key);
        let ours = with_our_key
            .clone()
            .find(|l| owner(l) == owner(&self.lease));
        match ours.or_else(|| with_our_key.next()) {
            Some(l) if owner(l) == owner(&self.lease) => {
                self.lease.expiration = l.expiration;
            }
            Some(l) => {
                let named = owner(l).map_or("no address".into(), |ip| ip.to_string());
                return Err(anyhow::anyhow!(
                    "our lease {} now names PublicIP {named}: another node took our subnet",
                    self.lease.key,
                ));
            }
            None => match reg.create(&self.lease.key, &self.attrs).await {
                Ok(Some(l)) => {
                    tracing::warn!(subnet = %self.lease.key, "our lease was removed; took it again");
                    self.lease = l;
                }
                Ok(None) => {
                    return Err(anyhow::anyhow!(
                        "our lease {} was revoked and the subnet is taken",
                        self.lease.key
                    ))
                }
                Err(e) => tracing::warn!(error = %e, "cannot re-create our lease"),
            },
        }
        // A reservation (no expiry) is never renewed. A failed renewal is
        // retried once a minute, as flanneld does.
        let renew_due = self.lease.expiration.is_some_and(|t| {
            t.duration_since(SystemTime::now())
                .map_or(true, |left| left < self.renew_margin)
        });
        if renew_due
            && self
                .last_renew_try
                .is_none_or(|t| t.elapsed() >= RENEW_RETRY)
        {
            self.last_renew_try = Some(tokio::time::Instant::now());
            match reg.renew(&self.lease.key, &self.attrs).await {
                Ok(l) => {
                    tracing::info!(subnet = %self.lease.key, "lease renewed");
                    self.lease = l;
                    self.last_renew_try = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew our lease; retrying in a minute")
                }
            }
        }
        Ok(())
    }
}

/// Publishes the lease's expiry (0: none, a reservation) as a metric.
pub(super) fn set_expiry(m: &Metrics, t: Option<SystemTime>) {
    let secs = t
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    m.lease_expiry.store(secs, Ordering::Relaxed);
}
