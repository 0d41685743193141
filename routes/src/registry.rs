//! Where leases live. `Registry` is what the control plane needs of any
//! store; `FileRegistry` is the embedded default, a directory laid out like
//! flannel's etcd keys:
//!
//! ```text
//! DIR/config                  net-conf.json
//! DIR/subnets/10.244.1.0-24   one lease, in flannel's JSON
//! ```
//!
//! A lease file expires 24 h after its modification time; its owner renews
//! it by rewriting it. A file written by hand has a fresh mtime and is valid.
//! Creation is exclusive (a hard link of a complete temp file, which fails
//! if the name exists), so two nodes starting together never share a subnet
//! and no reader ever sees a half-written lease.
//!
//! A lease's seniority (`Origin::since`) is its file's birth time, which
//! no writer can set: a renewal that changes nothing only moves the mtime,
//! so the file, and its birth time, stay. Where the file system records no
//! birth time, the moment this registry first saw the file stands in.

use crate::config::{ConfigError, NetConf};
use crate::lease::{Lease, LeaseAttrs, LeaseError, Origin, SubnetKey};
use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// How long a lease lives without renewal (flannel's etcd TTL).
pub const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);

/// The largest lease file read; a lease is ~150 bytes. Anything larger is
/// not a lease, and reading it whole would let one file exhaust memory.
pub const MAX_LEASE_FILE: u64 = 64 * 1024;

/// When a lease file last written at `mtime` expires. An mtime in the
/// future (a skewed clock, or `touch -d 2500-01-01`) counts as now: a
/// lease can never be renewed ahead of time, and `mtime + TTL` cannot
/// overflow.
fn expiry(mtime: SystemTime, now: SystemTime) -> SystemTime {
    mtime.min(now) + LEASE_TTL
}

/// Reads a registry file that must be a regular file of at most `max`
/// bytes. Opened without following a symlink and without blocking (a FIFO
/// would otherwise stall the control plane, and `/healthz` with it).
fn read_regular(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > max {
        return Err(std::io::Error::other(format!(
            "{} bytes, more than the {max} a lease file may have",
            meta.len()
        )));
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    f.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(std::io::Error::other("grew past the size limit while read"));
    }
    Ok(out)
}

/// A registry failure.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be read or written.
    #[error("registry I/O on {path}: {error}")]
    Io {
        /// What was being accessed.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The stored config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// etcd refused or could not be reached.
    #[cfg(feature = "etcd")]
    #[error("etcd: {what}: {error}")]
    Etcd {
        /// What was being done.
        what: String,
        /// The client's error.
        error: etcd_client::Error,
    },
    /// The Kubernetes API refused or could not be reached.
    #[cfg(feature = "kube")]
    #[error("kubernetes: cannot {what}: {error}")]
    Kube {
        /// What was being done.
        what: String,
        /// The client's error.
        error: kube::Error,
    },
    /// The registry holds no usable config.
    #[error("no network config at {0}")]
    NoConfig(String),
    /// The Kubernetes subnet manager cannot start.
    #[cfg(feature = "kube")]
    #[error(transparent)]
    KubeSetup(#[from] crate::kube::SetupError),
    /// A stored lease is invalid.
    #[error("lease {key}: {error}")]
    Lease {
        /// The key.
        key: String,
        /// Why.
        error: LeaseError,
    },
}

/// What the control plane needs of a lease store.
#[async_trait::async_trait]
pub trait Registry: Send + Sync {
    /// The network config.
    async fn config(&self) -> Result<NetConf, RegistryError>;
    /// Every current (unexpired) lease. Malformed entries are skipped with a
    /// warning: one bad lease must not hide the others. A registry that
    /// cannot be reached may answer with the last leases it knew.
    async fn leases(&self) -> Result<Vec<Lease>, RegistryError>;
    /// Creates a lease if the subnet is free (absent or expired). `None`
    /// means someone else holds it.
    async fn create(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
    ) -> Result<Option<Lease>, RegistryError>;
    /// Rewrites a lease we own, restarting its TTL.
    async fn renew(&self, key: &SubnetKey, attrs: &LeaseAttrs) -> Result<Lease, RegistryError>;
    /// Removes a lease; absent is fine.
    async fn delete(&self, key: &SubnetKey) -> Result<(), RegistryError>;
}

/// flannel's default etcd key prefix.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

/// How to reach etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://10.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix (`/coreos.com/network`).
    pub prefix: String,
    /// CA certificate (PEM) to verify etcd with.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM).
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM).
    pub key_file: Option<PathBuf>,
    /// Username for etcd authentication.
    pub username: Option<String>,
    /// Password for etcd authentication.
    pub password: Option<String>,
}

/// The file registry.
#[derive(Debug)]
pub struct FileRegistry {
    dir: PathBuf,
    /// Parsed leases by file name, with the (mtime, length) they were read
    /// at, so a poll only re-reads files that changed.
    cache: Mutex<HashMap<String, CachedLease>>,
    /// Files that are not leases, warned about once each (while present).
    strays: Mutex<std::collections::HashSet<String>>,
}

/// A lease file as last read: its mtime and length, what it held (`None`
/// if it did not parse), and its origin.
type CachedLease = (SystemTime, u64, Option<LeaseAttrs>, Origin);

/// Nanoseconds since the epoch, saturating (for `Origin::since`).
fn nanos(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

impl FileRegistry {
    /// A registry rooted at `dir`; creates `dir/subnets` if needed.
    pub fn open(dir: impl Into<PathBuf>) -> Result<FileRegistry, RegistryError> {
        let dir = dir.into();
        let subnets = dir.join("subnets");
        std::fs::create_dir_all(&subnets).map_err(io(&subnets))?;
        Ok(FileRegistry {
            dir,
            cache: Mutex::new(HashMap::new()),
            strays: Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// The registry's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn subnets(&self) -> PathBuf {
        self.dir.join("subnets")
    }

    fn path_of(&self, key: &SubnetKey) -> PathBuf {
        self.subnets().join(key.to_string())
    }

    fn write_tmp(&self, attrs: &LeaseAttrs) -> Result<PathBuf, RegistryError> {
        let tmp = self.subnets().join(format!(
            ".tmp-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(attrs.to_json().as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        Ok(tmp)
    }

    fn lease_at(&self, key: SubnetKey, attrs: LeaseAttrs) -> Result<Lease, RegistryError> {
        let path = self.path_of(&key);
        let meta = std::fs::metadata(&path).map_err(io(&path))?;
        let mtime = meta.modified().map_err(io(&path))?;
        let born = meta.created().unwrap_or(mtime);
        Ok(Lease {
            key,
            attrs,
            expiration: Some(expiry(mtime, SystemTime::now())),
            origin: Origin::keyed(nanos(born)),
        })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |error| RegistryError::Io {
        path: path.to_path_buf(),
        error,
    }
}

#[async_trait::async_trait]
impl Registry for FileRegistry {
    async fn config(&self) -> Result<NetConf, RegistryError> {
        self.read_config()
    }

    async fn leases(&self) -> Result<Vec<Lease>, RegistryError> {
        self.list()
    }

    async fn create(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
    ) -> Result<Option<Lease>, RegistryError> {
        self.create_exclusive(key, attrs)
    }

    async fn renew(&self, key: &SubnetKey, attrs: &LeaseAttrs) -> Result<Lease, RegistryError> {
        self.rewrite(key, attrs)
    }

    async fn delete(&self, key: &SubnetKey) -> Result<(), RegistryError> {
        self.remove(key)
    }
}

impl FileRegistry {
    fn read_config(&self) -> Result<NetConf, RegistryError> {
        let path = self.dir.join("config");
        let bytes = read_regular(&path, MAX_LEASE_FILE).map_err(io(&path))?;
        let text = String::from_utf8_lossy(&bytes);
        Ok(NetConf::parse(&text)?)
    }

    fn list(&self) -> Result<Vec<Lease>, RegistryError> {
        let dir = self.subnets();
        let now = SystemTime::now();
        let mut out = Vec::new();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let mut strays = self.strays.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen = Vec::new();
        let mut stray_now = std::collections::HashSet::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            // file_type does not follow symlinks: only regular files are
            // leases (no links out of the registry, no FIFOs or devices).
            let regular = entry.file_type().is_ok_and(|t| t.is_file());
            let key = name.parse::<SubnetKey>();
            let (Ok(key), true) = (key, regular) else {
                if !strays.contains(name.as_ref()) {
                    tracing::warn!(
                        file = %name,
                        "ignoring a file in the registry that is not a lease: \
                         leases are regular files named <ip>-<prefix>"
                    );
                }
                stray_now.insert(name.to_string());
                continue;
            };
            let name = name.as_ref();
            // A file removed between read_dir and stat is simply gone.
            let Ok(meta) = entry.metadata() else { continue };
            let Ok(mtime) = meta.modified() else { continue };
            let expiration = expiry(mtime, now);
            if expiration <= now {
                continue;
            }
            seen.push(name.to_string());
            let origin = match cache.get(name) {
                Some((.., o)) if meta.created().is_err() => o.clone(),
                _ => Origin::keyed(nanos(meta.created().unwrap_or(now))),
            };
            let attrs = match cache.get(name) {
                Some((t, len, attrs, o)) if *t == mtime && *len == meta.len() && *o == origin => {
                    attrs.clone()
                }
                _ => {
                    let parsed = read_regular(&entry.path(), MAX_LEASE_FILE)
                        .map_err(|e| LeaseError::Json(e.to_string()))
                        .and_then(|b| LeaseAttrs::from_json(&b));
                    let attrs = match parsed {
                        Ok(a) => Some(a),
                        Err(e) => {
                            tracing::warn!(lease = name, error = %e, "ignoring a malformed lease");
                            None
                        }
                    };
                    let entry = (mtime, meta.len(), attrs.clone(), origin.clone());
                    cache.insert(name.to_string(), entry);
                    attrs
                }
            };
            if let Some(attrs) = attrs {
                out.push(Lease {
                    key,
                    attrs,
                    expiration: Some(expiration),
                    origin,
                });
            }
        }
        cache.retain(|k, _| seen.iter().any(|s| s == k));
        *strays = stray_now;
        out.sort_by_key(|l| l.key);
        Ok(out)
    }

    fn create_exclusive(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
    ) -> Result<Option<Lease>, RegistryError> {
        let path = self.path_of(key);
        let tmp = self.write_tmp(attrs)?;
        let result = (|| {
            for _ in 0..2 {
                match std::fs::hard_link(&tmp, &path) {
                    Ok(()) => return Ok(true),
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                        // Free again if the holder let it expire.
                        let now = SystemTime::now();
                        let expired = std::fs::symlink_metadata(&path)
                            .and_then(|m| m.modified())
                            .map(|t| expiry(t, now) <= now)
                            .unwrap_or(false);
                        if !expired {
                            return Ok(false);
                        }
                        match std::fs::remove_file(&path) {
                            Ok(()) => {}
                            Err(e) if e.kind() == ErrorKind::NotFound => {}
                            Err(e) => return Err(io(&path)(e)),
                        }
                    }
                    Err(e) => return Err(io(&path)(e)),
                }
            }
            Ok(false)
        })();
        let _ = std::fs::remove_file(&tmp);
        if result? {
            Ok(Some(self.lease_at(*key, attrs.clone())?))
        } else {
            Ok(None)
        }
    }

    fn rewrite(&self, key: &SubnetKey, attrs: &LeaseAttrs) -> Result<Lease, RegistryError> {
        let path = self.path_of(key);
        // Unchanged: move the mtime only, so the file keeps its birth time
        // (the lease's seniority). Changed: a new file, atomically.
        let json = attrs.to_json();
        if read_regular(&path, MAX_LEASE_FILE).is_ok_and(|b| b == json.as_bytes()) {
            use std::os::unix::fs::OpenOptionsExt;
            let touched = std::fs::File::options()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&path)
                .and_then(|f| f.set_modified(SystemTime::now()));
            if touched.is_ok() {
                return self.lease_at(*key, attrs.clone());
            }
        }
        let tmp = self.write_tmp(attrs)?;
        std::fs::rename(&tmp, &path)
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
            .map_err(io(&path))?;
        self.lease_at(*key, attrs.clone())
    }

    fn remove(&self, key: &SubnetKey) -> Result<(), RegistryError> {
        let path = self.path_of(key);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use std::net::Ipv4Addr;

    fn reg() -> (tempfile::TempDir, FileRegistry) {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config"), r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        let r = FileRegistry::open(d.path()).unwrap();
        (d, r)
    }

    fn key(s: &str) -> SubnetKey {
        s.parse().unwrap()
    }

    #[test]
    fn create_is_exclusive_and_leases_lists_it() {
        let (_d, r) = reg();
        let a = LeaseAttrs::udp(Ipv4Addr::new(192, 0, 2, 1));
        let b = LeaseAttrs::udp(Ipv4Addr::new(192, 0, 2, 2));
        assert!(block_on(r.create(&key("10.244.1.0-24"), &a))
            .unwrap()
            .is_some());
        assert!(block_on(r.create(&key("10.244.1.0-24"), &b))
            .unwrap()
            .is_none());
        let ls = block_on(r.leases()).unwrap();
        assert_eq!(ls.len(), 1);
        assert_eq!(ls[0].attrs, a);
        // No temp files remain.
        assert_eq!(
            std::fs::read_dir(r.dir().join("subnets")).unwrap().count(),
            1
        );
    }

    #[test]
    fn hand_written_leases_count_and_bad_ones_are_skipped() {
        let (d, r) = reg();
        let s = d.path().join("subnets");
        std::fs::write(
            s.join("10.244.7.0-24"),
            r#"{"PublicIP":"192.0.2.7","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#,
        )
        .unwrap();
        std::fs::write(s.join("10.244.8.0-24"), "not json").unwrap();
        std::fs::write(s.join("README"), "x").unwrap();
        let ls = block_on(r.leases()).unwrap();
        assert_eq!(ls.len(), 1);
        assert!(ls[0].attrs.vxlan_data().is_some());
        // A fix of the bad lease is picked up on the next poll.
        std::fs::write(s.join("10.244.8.0-24"), r#"{"PublicIP":"192.0.2.8"}"#).unwrap();
        assert_eq!(block_on(r.leases()).unwrap().len(), 2);
    }

    #[test]
    fn expired_leases_are_invisible_and_free() {
        let (d, r) = reg();
        let p = d.path().join("subnets/10.244.3.0-24");
        std::fs::write(&p, r#"{"PublicIP":"192.0.2.3"}"#).unwrap();
        let old = SystemTime::now() - LEASE_TTL - Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(block_on(r.leases()).unwrap().is_empty());
        let mine = LeaseAttrs::udp(Ipv4Addr::new(192, 0, 2, 9));
        assert!(block_on(r.create(&key("10.244.3.0-24"), &mine))
            .unwrap()
            .is_some());
        assert_eq!(block_on(r.leases()).unwrap()[0].attrs, mine);
    }

    #[test]
    fn renew_and_delete() {
        let (_d, r) = reg();
        let k = key("10.244.4.0-24");
        let a = LeaseAttrs::udp(Ipv4Addr::new(192, 0, 2, 4));
        let l = block_on(r.create(&k, &a)).unwrap().unwrap();
        let l2 = block_on(r.renew(&k, &a)).unwrap();
        assert!(l2.expiration >= l.expiration);
        block_on(r.delete(&k)).unwrap();
        block_on(r.delete(&k)).unwrap();
        assert!(block_on(r.leases()).unwrap().is_empty());
    }

    #[test]
    fn seniority_is_the_file_s_birth_and_a_renewal_keeps_it() {
        let (d, r) = reg();
        let a = LeaseAttrs::udp(Ipv4Addr::new(192, 0, 2, 4));
        let (old, young) = (key("10.244.9.0-24"), key("10.244.4.0-24"));
        block_on(r.create(&old, &a)).unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        // Written by hand, later, with a lower key.
        std::fs::write(
            d.path().join("subnets/10.244.4.0-24"),
            r#"{"PublicIP":"192.0.2.5"}"#,
        )
        .unwrap();
        let origin = |k: SubnetKey| {
            block_on(r.leases())
                .unwrap()
                .into_iter()
                .find(|l| l.key == k)
                .unwrap()
                .origin
        };
        let before = origin(old);
        assert!(before < origin(young), "{before:?} {:?}", origin(young));
        // An unchanged renewal does not move it.
        std::thread::sleep(Duration::from_millis(20));
        block_on(r.renew(&old, &a)).unwrap();
        assert_eq!(origin(old), before);
        // A changed lease is a new claim: younger than the other.
        let b = LeaseAttrs::udp(Ipv4Addr::new(192, 0, 2, 6));
        block_on(r.renew(&old, &b)).unwrap();
        assert!(origin(old) > origin(young));
    }

    #[test]
    fn a_far_future_mtime_neither_panics_nor_outlives_the_ttl() {
        let (d, r) = reg();
        let p = d.path().join("subnets/10.244.3.0-24");
        std::fs::write(&p, r#"{"PublicIP":"192.0.2.3"}"#).unwrap();
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 40);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(far)
            .unwrap();
        let ls = block_on(r.leases()).unwrap();
        assert_eq!(ls.len(), 1);
        let exp = ls[0].expiration.unwrap();
        assert!(
            exp <= SystemTime::now() + LEASE_TTL,
            "counted from now at most"
        );
        // Creating over it does not panic either; it is held.
        let mine = LeaseAttrs::udp(Ipv4Addr::new(192, 0, 2, 9));
        assert!(block_on(r.create(&key("10.244.3.0-24"), &mine))
            .unwrap()
            .is_none());
    }

    #[test]
    fn only_regular_files_of_bounded_size_are_leases() {
        let (d, r) = reg();
        let s = d.path().join("subnets");
        let good = r#"{"PublicIP":"192.0.2.7"}"#;
        std::fs::write(d.path().join("outside"), good).unwrap();
        std::os::unix::fs::symlink(d.path().join("outside"), s.join("10.244.7.0-24")).unwrap();
        let fifo = std::ffi::CString::new(s.join("10.244.8.0-24").to_str().unwrap()).unwrap();
        // A FIFO: reading it would block forever.
        assert_eq!(mkfifo(&fifo), 0);
        let big = format!("{good}{}", " ".repeat(MAX_LEASE_FILE as usize));
        std::fs::write(s.join("10.244.9.0-24"), big).unwrap();
        std::fs::write(s.join("10.244.10.0-24"), good).unwrap();
        std::fs::write(s.join("notes.txt"), "x").unwrap();
        let ls = block_on(r.leases()).unwrap();
        let keys: Vec<String> = ls.iter().map(|l| l.key.to_string()).collect();
        assert_eq!(keys, ["10.244.10.0-24"]);
        let strays = r.strays.lock().unwrap().clone();
        for name in ["10.244.7.0-24", "10.244.8.0-24", "notes.txt"] {
            assert!(strays.contains(name), "{name} not warned about: {strays:?}");
        }
        // Warned once: a second poll finds them known; a removed one is
        // forgotten, so it would be warned about again if it came back.
        std::fs::remove_file(s.join("notes.txt")).unwrap();
        block_on(r.leases()).unwrap();
        assert!(!r.strays.lock().unwrap().contains("notes.txt"));
        assert!(r.strays.lock().unwrap().contains("10.244.7.0-24"));
    }

    /// mkfifo(3) through the `mkfifo` command, keeping the crate free of
    /// `unsafe`.
    fn mkfifo(path: &std::ffi::CStr) -> i32 {
        std::process::Command::new("mkfifo")
            .arg(path.to_str().unwrap())
            .status()
            .map(|s| if s.success() { 0 } else { 1 })
            .unwrap_or(1)
    }

    #[test]
    fn concurrent_creates_never_share_a_subnet() {
        let (_d, r) = reg();
        let r = std::sync::Arc::new(r);
        let winners: usize = (0..8)
            .map(|i| {
                let r = r.clone();
                std::thread::spawn(move || {
                    let a = LeaseAttrs::udp(Ipv4Addr::new(192, 0, 2, i));
                    block_on(r.create(&key("10.244.5.0-24"), &a))
                        .unwrap()
                        .is_some() as usize
                })
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(winners, 1);
    }
}
