//! Switches for measuring each data-path technique on and off with the
//! end-to-end harness (`WEFT_DISABLE=gso,gro,mmsg,flowports,sockbuf`, or the
//! hidden `--disable` flag of `weft run`). Everything is on by default;
//! nothing here is meant for production use. `main` parses the value once
//! and it is passed down to the sockets and workers that use it.

use std::fmt;
use std::str::FromStr;

/// Which techniques are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// UDP GSO on sends.
    pub gso: bool,
    /// UDP GRO on receives (with offloads).
    pub gro: bool,
    /// Batched `recvmmsg`/`sendmmsg` (off: one datagram per syscall).
    pub mmsg: bool,
    /// Several VXLAN send sockets picked by flow hash (off: one).
    pub flow_ports: bool,
    /// Multi-megabyte socket buffers (off: the kernel's defaults).
    pub socket_buffers: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            gso: true,
            gro: true,
            mmsg: true,
            flow_ports: true,
            socket_buffers: true,
        }
    }
}

impl Tuning {
    /// The switch names, as `WEFT_DISABLE` spells them.
    const NAMES: [&'static str; 5] = ["gso", "gro", "mmsg", "flowports", "sockbuf"];

    fn switch(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name {
            "gso" => &mut self.gso,
            "gro" => &mut self.gro,
            "mmsg" => &mut self.mmsg,
            "flowports" => &mut self.flow_ports,
            "sockbuf" => &mut self.socket_buffers,
            _ => return None,
        })
    }

    /// True when every technique is on.
    pub fn all_on(&self) -> bool {
        *self == Tuning::default()
    }
}

/// The techniques to turn off, comma-separated; an unknown name is an error
/// (a typo must not silently measure the wrong thing).
impl FromStr for Tuning {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut t = Tuning::default();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match t.switch(name) {
                Some(on) => *on = false,
                None => {
                    return Err(format!(
                        "unknown technique {name:?} (known: {})",
                        Tuning::NAMES.join(", ")
                    ))
                }
            }
        }
        Ok(t)
    }
}

/// The techniques that are off, as `FromStr` reads them.
impl fmt::Display for Tuning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = *self;
        let off: Vec<&str> = Tuning::NAMES
            .into_iter()
            .filter(|n| t.switch(n).is_some_and(|on| !*on))
            .collect();
        f.write_str(&off.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_prints() {
        assert_eq!("".parse::<Tuning>().unwrap(), Tuning::default());
        let t: Tuning = "gso, mmsg,sockbuf".parse().unwrap();
        assert!(!t.gso && !t.mmsg && !t.socket_buffers && t.gro && t.flow_ports);
        assert_eq!(t.to_string(), "gso,mmsg,sockbuf");
        assert_eq!(t.to_string().parse::<Tuning>().unwrap(), t);
        assert!(Tuning::default().all_on());
        assert!(!t.all_on());
    }

    #[test]
    fn unknown_names_are_refused() {
        let e = "gso,gsoo".parse::<Tuning>().unwrap_err();
        assert!(e.contains("\"gsoo\"") && e.contains("flowports"), "{e}");
    }
}
