//! A real etcd in the hub (plain or TLS with client certificates), and
//! `etcdctl` against it; the throwaway PKI it and the API server use.

use crate::*;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

/// A throwaway CA and the certificates a TLS etcd test uses.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// CA certificate.
    pub ca: PathBuf,
    /// etcd's certificate (SANs 192.168.100.250 and 127.0.0.1) and key.
    pub server: (PathBuf, PathBuf),
    /// A client certificate and key signed by the CA.
    pub client: (PathBuf, PathBuf),
}

/// Where the test etcd listens: the hub's own address on the bridge.
pub const ETCD_URL: &str = "http://192.168.100.250:2379";
/// The test etcd's address inside the hub namespace, for `etcdctl`.
const ETCD_LOCAL: &str = "http://127.0.0.1:2379";
/// flannel's key prefix, which the test etcd uses.
pub const ETCD_PREFIX: &str = weft_routes::registry::DEFAULT_PREFIX;

impl Cluster {
    /// Starts etcd in the hub namespace at `ETCD_URL` (its data survives a
    /// `stop_etcd`), and the first time, stores net-conf.json at
    /// `<prefix>/config`. From then on `start` points nodes at etcd.
    pub fn start_etcd(&mut self) -> io::Result<()> {
        self.start_etcd_on(true)
    }

    /// Starts etcd listening on the hub's loopback only: the nodes cannot
    /// reach it, `etcdctl` here can (to change things behind their back).
    pub fn start_etcd_hidden(&mut self) -> io::Result<()> {
        self.start_etcd_on(false)
    }

    /// Makes etcd serve TLS and require client certificates (call before
    /// `start_etcd`): creates a CA, a server and a client certificate with
    /// openssl.
    pub fn enable_etcd_tls(&mut self) -> io::Result<EtcdTls> {
        let d = self.dir.path().join("pki");
        std::fs::create_dir_all(&d)?;
        issue_pki(
            &d,
            "weft-test-ca",
            &[
                (
                    "server",
                    "weft-server",
                    "subjectAltName=IP:192.168.100.250,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
                ),
                ("client", "weft-client", "extendedKeyUsage=clientAuth\n"),
            ],
        )?;
        let tls = EtcdTls {
            ca: d.join("ca.crt"),
            server: (d.join("server.crt"), d.join("server.key")),
            client: (d.join("client.crt"), d.join("client.key")),
        };
        self.etcd_tls = Some(tls.clone());
        Ok(tls)
    }

    /// The URL nodes reach etcd at.
    pub fn etcd_url(&self) -> String {
        self.etcd_scheme(ETCD_URL)
    }

    fn etcd_scheme(&self, url: &str) -> String {
        match self.etcd_tls {
            Some(_) => url.replace("http://", "https://"),
            None => url.to_string(),
        }
    }

    fn start_etcd_on(&mut self, reachable: bool) -> io::Result<()> {
        let data = self.dir.path().join("etcd-data");
        let first = !data.exists();
        if first {
            self.hub
                .ip(&["addr", "add", "192.168.100.250/24", "dev", "br0"])?;
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))?;
        let (public, local) = (self.etcd_scheme(ETCD_URL), self.etcd_scheme(ETCD_LOCAL));
        let mut cmd = self.hub.command("etcd");
        if let Some(t) = &self.etcd_tls {
            cmd.arg(format!("--cert-file={}", t.server.0.display()))
                .arg(format!("--key-file={}", t.server.1.display()))
                .arg(format!("--trusted-ca-file={}", t.ca.display()))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .arg("--name=weft-test")
            .arg(format!("--data-dir={}", data.display()))
            .arg(if reachable {
                format!("--listen-client-urls={public},{local}")
            } else {
                format!("--listen-client-urls={local}")
            })
            .arg(format!("--advertise-client-urls={public}"))
            .arg("--listen-peer-urls=http://127.0.0.1:2380")
            .arg("--initial-advertise-peer-urls=http://127.0.0.1:2380")
            .arg("--initial-cluster=weft-test=http://127.0.0.1:2380")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.etcd = Some(child);
        let up = Cluster::wait_for(Duration::from_secs(15), || {
            self.etcdctl(&["endpoint", "health"]).is_ok()
        });
        if !up {
            return Err(io::Error::other(format!(
                "etcd did not come up:\n{}",
                std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
            )));
        }
        if first {
            let conf = self.net_conf.clone();
            self.etcdctl(&["put", &format!("{ETCD_PREFIX}/config"), &conf])?;
        }
        Ok(())
    }

    /// Kills etcd (its data stays for a restart).
    pub fn stop_etcd(&mut self) {
        if let Some(mut e) = self.etcd.take() {
            let _ = e.kill();
            let _ = e.wait();
        }
    }

    /// Runs `etcdctl ARGS…` against the test etcd.
    pub fn etcdctl(&self, args: &[&str]) -> io::Result<Output> {
        let mut a = vec![
            format!("--endpoints={}", self.etcd_scheme(ETCD_LOCAL)),
            "--dial-timeout=2s".to_string(),
            "--command-timeout=5s".to_string(),
        ];
        if let Some(t) = &self.etcd_tls {
            a.push(format!("--cacert={}", t.ca.display()));
            a.push(format!("--cert={}", t.client.0.display()));
            a.push(format!("--key={}", t.client.1.display()));
        }
        a.extend(args.iter().map(|s| s.to_string()));
        let out = self
            .hub
            .command("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(&a)
            .output()?;
        check(out, &format!("etcdctl {}", args.join(" ")))
    }

    /// The etcd key of node `i`'s lease.
    pub fn etcd_key(&self, i: usize) -> Option<String> {
        let s = self.nodes[i].subnet()?;
        // A dual-stack lease's key names its IPv6 subnet too, after `&`.
        let v6 = self.nodes[i]
            .subnet6()
            .map(|s6| format!("&{}-{}", s6.network(), s6.prefix_len()))
            .unwrap_or_default();
        Some(format!(
            "{ETCD_PREFIX}/subnets/{}-{}{v6}",
            s.network(),
            s.prefix_len()
        ))
    }
}

/// A throwaway CA in `d` (`ca.crt`, `ca.key`), and for each (file name,
/// common name, openssl extensions) a key and a certificate it signed
/// (`<name>.key`, `<name>.crt`), valid for a day.
pub(crate) fn issue_pki(d: &Path, ca_cn: &str, certs: &[(&str, &str, &str)]) -> io::Result<()> {
    let p = |n: &str| d.join(n).to_string_lossy().to_string();
    let subj = |cn: &str| format!("/CN={cn}");
    sh(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &subj(ca_cn),
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.crt"),
        ],
    )?;
    for (name, cn, ext) in certs {
        let f = |suffix: &str| p(&format!("{name}.{suffix}"));
        std::fs::write(f("ext"), ext)?;
        sh(
            "openssl",
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &subj(cn),
                "-keyout",
                &f("key"),
                "-out",
                &f("csr"),
            ],
        )?;
        sh(
            "openssl",
            &[
                "x509",
                "-req",
                "-days",
                "1",
                "-in",
                &f("csr"),
                "-CA",
                &p("ca.crt"),
                "-CAkey",
                &p("ca.key"),
                "-CAcreateserial",
                "-extfile",
                &f("ext"),
                "-out",
                &f("crt"),
            ],
        )?;
    }
    Ok(())
}
