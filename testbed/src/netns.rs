//! Network namespaces: unique names, `ip` and programs run inside one,
//! threads that enter one, and the small shell helpers the rest uses.

use ipnet::Ipv4Net;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

pub(crate) static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique, short name for a namespace or file of this process.
pub fn unique(tag: &str) -> String {
    format!(
        "wt{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Puts a `cni0` bridge with `<subnet>.1/<len>` up in `ns`, standing in for
/// the pods the CNI plugin would attach; returns that address.
pub fn pod_bridge(ns: &Netns, subnet: Ipv4Net) -> io::Result<Ipv4Addr> {
    let ip = Ipv4Addr::from(u32::from(subnet.network()) + 1);
    ns.ip(&["link", "add", "cni0", "type", "bridge"])?;
    ns.ip(&[
        "addr",
        "add",
        &format!("{ip}/{}", subnet.prefix_len()),
        "dev",
        "cni0",
    ])?;
    ns.ip(&["link", "set", "cni0", "up"])?;
    Ok(ip)
}

pub(crate) fn check(out: Output, what: &str) -> io::Result<Output> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Runs a command and fails with its stderr if it exits non-zero.
pub fn sh(program: &str, args: &[&str]) -> io::Result<Output> {
    let out = Command::new(program).args(args).output()?;
    check(out, &format!("{program} {}", args.join(" ")))
}

/// A network namespace, deleted on drop by the handle that created it.
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
    owned: bool,
}

impl Netns {
    /// Creates a namespace with a unique name from `tag`, loopback up.
    pub fn create(tag: &str) -> io::Result<Netns> {
        let name = unique(tag);
        sh("ip", &["netns", "add", &name])?;
        let ns = Netns { name, owned: true };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A second handle on the same namespace, for another thread; it does
    /// not delete the namespace when dropped.
    pub fn handle(&self) -> Netns {
        Netns {
            name: self.name.clone(),
            owned: false,
        }
    }

    /// `ip -n <ns> ARGS…`.
    pub fn ip(&self, args: &[&str]) -> io::Result<Output> {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        sh("ip", &a)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `program ARGS…` inside the namespace; fails on non-zero exit.
    pub fn exec(&self, program: &str, args: &[&str]) -> io::Result<Output> {
        let out = self.command(program).args(args).output()?;
        check(
            out,
            &format!("{program} {} in {}", args.join(" "), self.name),
        )
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it opens
    /// live there. The caller's thread is untouched.
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path)?;
        std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd only changes the calling
            // thread's network namespace; `file` outlives the call.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// True when this process runs as root (the bench creates namespaces and
/// devices).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
