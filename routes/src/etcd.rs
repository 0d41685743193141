//! The etcd v3 registry, with flannel's key layout, so weft nodes and
//! flanneld nodes share one etcd and cannot tell each other apart:
//!
//! ```text
//! <prefix>/config                    net-conf.json
//! <prefix>/subnets/10.244.1.0-24     a lease in flannel's JSON, attached to a 24 h etcd lease
//! ```
//!
//! A key without an etcd lease is a reservation: it never expires, it is
//! never renewed, and allocation treats its subnet as taken.
//!
//! Reads come from a cache that a background task keeps current: it lists
//! the prefix, then watches from the listed revision + 1. After a
//! compaction (the watch is cancelled with a compact revision) or a lost
//! connection it lists again, with backoff from 1 to 30 s, and the fresh
//! listing replaces the cache, so nothing is missed and nothing is stale
//! afterwards. While etcd is unreachable the cache keeps the last known
//! leases, so forwarding goes on with the peers we had.
//!
//! A lease's seniority is its key's create revision, which etcd assigns
//! and no client can choose.

use crate::config::NetConf;
use crate::lease::{Lease, LeaseAttrs, Origin, SubnetKey};
use crate::registry::{EtcdConfig, Registry, RegistryError, LEASE_TTL};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

#[derive(Default)]
struct State {
    /// The leases as of the last listing plus the watch events since.
    leases: BTreeMap<SubnetKey, Lease>,
    /// True once a listing succeeded.
    synced: bool,
    /// The etcd lease id and expiry of every key this node holds.
    own: HashMap<SubnetKey, (i64, SystemTime)>,
}

/// The etcd registry.
pub struct EtcdRegistry {
    client: Client,
    prefix: String,
    state: Arc<Mutex<State>>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for EtcdRegistry {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

fn etcd(what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> RegistryError {
    let what = what.into();
    move |error| RegistryError::Etcd { what, error }
}

fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |error| RegistryError::Io {
        path: path.to_path_buf(),
        error,
    }
}

impl EtcdRegistry {
    /// Connects and starts the list-and-watch task on the current tokio
    /// runtime. Fails if etcd cannot be reached now; the caller retries.
    pub async fn connect(cfg: &EtcdConfig) -> Result<EtcdRegistry, RegistryError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
            opts = opts.with_user(u.clone(), p.clone());
        }
        if cfg.ca_file.is_some() || cfg.cert_file.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &cfg.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(std::fs::read(ca).map_err(io(ca))?));
            }
            if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
                tls = tls.identity(Identity::from_pem(
                    std::fs::read(cert).map_err(io(cert))?,
                    std::fs::read(key).map_err(io(key))?,
                ));
            }
            opts = opts.with_tls(tls);
        }
        let client = Client::connect(&cfg.endpoints, Some(opts))
            .await
            .map_err(etcd(format!("connect to {}", cfg.endpoints.join(","))))?;
        let prefix = cfg.prefix.trim_end_matches('/').to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let watcher = tokio::spawn(watch_loop(
            client.clone(),
            subnets_prefix(&prefix),
            state.clone(),
        ));
        Ok(EtcdRegistry {
            client,
            prefix,
            state,
            watcher,
        })
    }

    fn key(&self, k: &SubnetKey) -> String {
        format!("{}{k}", subnets_prefix(&self.prefix))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Compacts etcd's history at its current revision (for tests of the
    /// watch's recovery, and for operators).
    pub async fn compact_now(&self) -> Result<i64, RegistryError> {
        let mut c = self.client.clone();
        let rev = c
            .get(self.prefix.clone(), None)
            .await
            .map_err(etcd("read the revision"))?
            .header()
            .map_or(0, |h| h.revision());
        c.compact(rev, None).await.map_err(etcd("compact"))?;
        Ok(rev)
    }

    /// Grants a 24 h etcd lease.
    async fn grant(&self) -> Result<(i64, SystemTime), RegistryError> {
        let now = SystemTime::now();
        let g = self
            .client
            .clone()
            .lease_grant(LEASE_TTL.as_secs() as i64, None)
            .await
            .map_err(etcd("grant a lease"))?;
        Ok((g.id(), now + LEASE_TTL))
    }

    async fn revoke(&self, id: i64) {
        if let Err(e) = self.client.clone().lease_revoke(id).await {
            tracing::debug!(lease = id, error = %e, "cannot revoke an old etcd lease");
        }
    }

    /// Records a lease we just wrote, before the watch reports it.
    fn remember(
        &self,
        key: SubnetKey,
        attrs: &LeaseAttrs,
        own: Option<(i64, SystemTime)>,
    ) -> Lease {
        let mut st = self.state();
        // The create revision comes with the watch's event; until then a
        // lease of ours keeps the one it had.
        let origin = st
            .leases
            .get(&key)
            .map_or_else(|| Origin::keyed(0), |l| l.origin.clone());
        let lease = Lease {
            key,
            attrs: attrs.clone(),
            expiration: own.map(|(_, t)| t),
            origin,
        };
        match own {
            Some(o) => {
                st.own.insert(key, o);
            }
            None => {
                st.own.remove(&key);
            }
        }
        st.leases.insert(key, lease.clone());
        lease
    }
}

fn subnets_prefix(prefix: &str) -> String {
    format!("{prefix}/subnets/")
}

/// Turns a stored key-value into a lease; `None` (with a warning) if either
/// half is not flannel's.
fn parse_kv(
    subnets: &str,
    kv: &KeyValue,
    own: &HashMap<SubnetKey, (i64, SystemTime)>,
) -> Option<Lease> {
    let name = std::str::from_utf8(kv.key()).ok()?.strip_prefix(subnets)?;
    let key: SubnetKey = match name.parse() {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(key = name, error = %e, "ignoring an etcd key that is not a subnet");
            return None;
        }
    };
    let attrs = match LeaseAttrs::from_json(kv.value()) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(lease = %key, error = %e, "ignoring a malformed lease");
            return None;
        }
    };
    // Keys without an etcd lease are reservations and never expire. Other
    // nodes' expiry is not fetched (it would cost a request per lease); at
    // most 24 h away is all that matters for them.
    let expiration = match kv.lease() {
        0 => None,
        id => Some(
            own.get(&key)
                .filter(|(own_id, _)| *own_id == id)
                .map_or_else(|| SystemTime::now() + LEASE_TTL, |(_, t)| *t),
        ),
    };
    Some(Lease {
        key,
        attrs,
        expiration,
        // The key's create revision: a lease renewed (re-put) keeps it; one
        // deleted and written again is a newcomer.
        origin: Origin::keyed(kv.create_revision()),
    })
}

/// Lists the subnets prefix: its leases and the revision of the listing.
async fn list(
    client: &mut Client,
    subnets: &str,
    state: &Mutex<State>,
) -> Result<i64, RegistryError> {
    let resp = client
        .get(subnets, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(etcd(format!("list {subnets}")))?;
    let rev = resp.header().map_or(0, |h| h.revision());
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    let leases = resp
        .kvs()
        .iter()
        .filter_map(|kv| parse_kv(subnets, kv, &st.own))
        .map(|l| (l.key, l))
        .collect();
    st.leases = leases;
    st.synced = true;
    Ok(rev)
}

/// Lists once, then watches from the last revision seen + 1, forever.
/// After a lost connection the watch resumes where it stopped (the events
/// it missed are exactly the diff); only when etcd has compacted that
/// history away (the watch is cancelled with a compact revision) does it
/// list again and replace the cache. Retries back off from 1 to 30 s.
async fn watch_loop(mut client: Client, subnets: String, state: Arc<Mutex<State>>) {
    const MAX_BACKOFF: Duration = Duration::from_secs(30);
    let mut backoff = Duration::from_secs(1);
    let mut rev: Option<i64> = None;
    let mut failing = false;
    loop {
        if failing {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        let from = match rev {
            Some(r) => r,
            None => match list(&mut client, &subnets, &state).await {
                Ok(r) => {
                    rev = Some(r);
                    r
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "etcd unavailable; keeping the last known leases");
                    failing = true;
                    continue;
                }
            },
        };
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from + 1);
        let mut stream = match client.watch(subnets.clone(), Some(opts)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "etcd unavailable; keeping the last known leases");
                failing = true;
                continue;
            }
        };
        if failing {
            tracing::info!("etcd is back; watching from revision {}", from + 1);
            failing = false;
            backoff = Duration::from_secs(1);
        }
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    if resp.canceled() {
                        if resp.compact_revision() > 0 {
                            tracing::info!(
                                compacted = resp.compact_revision(),
                                "etcd history was compacted under the watch; re-listing"
                            );
                        } else {
                            tracing::warn!(
                                reason = resp.cancel_reason(),
                                "etcd cancelled the watch; re-listing"
                            );
                        }
                        rev = None;
                        break;
                    }
                    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        rev = Some(rev.unwrap_or(0).max(kv.mod_revision()));
                        match ev.event_type() {
                            EventType::Put => {
                                if let Some(l) = parse_kv(&subnets, kv, &st.own) {
                                    st.leases.insert(l.key, l);
                                }
                            }
                            EventType::Delete => {
                                let name = std::str::from_utf8(kv.key())
                                    .ok()
                                    .and_then(|k| k.strip_prefix(subnets.as_str()));
                                if let Some(key) = name.and_then(|n| n.parse::<SubnetKey>().ok()) {
                                    st.leases.remove(&key);
                                }
                            }
                        }
                    }
                }
                Ok(None) => {
                    failing = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "etcd watch broke; resuming");
                    failing = true;
                    break;
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Registry for EtcdRegistry {
    async fn config(&self) -> Result<NetConf, RegistryError> {
        let key = format!("{}/config", self.prefix);
        let resp = self
            .client
            .clone()
            .get(key.clone(), None)
            .await
            .map_err(etcd(format!("read {key}")))?;
        let kv = resp
            .kvs()
            .first()
            .ok_or_else(|| RegistryError::NoConfig(key.clone()))?;
        let text = std::str::from_utf8(kv.value())
            .map_err(|_| RegistryError::NoConfig(format!("{key} (not UTF-8)")))?;
        Ok(NetConf::parse(text)?)
    }

    async fn leases(&self) -> Result<Vec<Lease>, RegistryError> {
        if !self.state().synced {
            let mut c = self.client.clone();
            list(&mut c, &subnets_prefix(&self.prefix), &self.state).await?;
        }
        Ok(self.state().leases.values().cloned().collect())
    }

    async fn create(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
    ) -> Result<Option<Lease>, RegistryError> {
        let (id, expiry) = self.grant().await?;
        let k = self.key(key);
        // flanneld's create: only if the key has never been written (or
        // was deleted), so two nodes racing for a subnet cannot both win.
        let txn = Txn::new()
            .when([Compare::version(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                k.clone(),
                attrs.to_json(),
                Some(PutOptions::new().with_lease(id)),
            )]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(etcd(format!("create {k}")))?;
        if !resp.succeeded() {
            self.revoke(id).await;
            return Ok(None);
        }
        Ok(Some(self.remember(*key, attrs, Some((id, expiry)))))
    }

    async fn renew(&self, key: &SubnetKey, attrs: &LeaseAttrs) -> Result<Lease, RegistryError> {
        let k = self.key(key);
        let mut c = self.client.clone();
        let current = c
            .get(k.clone(), None)
            .await
            .map_err(etcd(format!("read {k}")))?;
        if current.kvs().first().is_some_and(|kv| kv.lease() == 0) {
            // A reservation: keep it one (no lease), just make it ours.
            c.put(k.clone(), attrs.to_json(), None)
                .await
                .map_err(etcd(format!("update reservation {k}")))?;
            return Ok(self.remember(*key, attrs, None));
        }
        let old = self.state().own.get(key).map(|(id, _)| *id);
        let (id, expiry) = self.grant().await?;
        c.put(
            k.clone(),
            attrs.to_json(),
            Some(PutOptions::new().with_lease(id)),
        )
        .await
        .map_err(etcd(format!("renew {k}")))?;
        if let Some(old) = old.filter(|o| *o != id) {
            self.revoke(old).await;
        }
        Ok(self.remember(*key, attrs, Some((id, expiry))))
    }

    async fn delete(&self, key: &SubnetKey) -> Result<(), RegistryError> {
        let k = self.key(key);
        self.client
            .clone()
            .delete(k.clone(), None)
            .await
            .map_err(etcd(format!("delete {k}")))?;
        let own = {
            let mut st = self.state();
            st.leases.remove(key);
            st.own.remove(key)
        };
        if let Some((id, _)) = own {
            self.revoke(id).await;
        }
        Ok(())
    }
}
