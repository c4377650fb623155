//! Network namespaces for real-process tests: each node in a namespace of its own, joined by a
//! bridge that this test creates (and deletes on drop), with the test process reaching them
//! through the bridge. Cutting a node takes its port on the bridge down: every packet to and
//! from it is lost — peers and clients alike — as in a real partition, and established
//! connections stall rather than close. Nothing here leaves the machine: the addresses exist
//! only on this bridge and in these namespaces.
#![allow(dead_code)]
use std::process::Command;

pub struct Netns {
    tag: String,
    subnet: String,
    pub namespaces: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Whether this process may create namespaces (root with iproute2).
    pub fn available() -> bool {
        let probe = format!("lkprobe{}", std::process::id());
        ip(&["netns", "add", &probe]).is_ok() && ip(&["netns", "del", &probe]).is_ok()
    }

    /// `n` namespaces on a new bridge.
    pub fn create(n: usize) -> Result<Netns, String> {
        let pid = std::process::id();
        let tag = format!("lk{}", pid % 100_000);
        let subnet = format!("10.213.{}", pid % 250);
        let mut me = Netns {
            tag: tag.clone(),
            subnet: subnet.clone(),
            namespaces: Vec::new(),
        };
        let br = format!("{tag}br");
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{subnet}.254/24"), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 0..n {
            let ns = format!("{tag}n{i}");
            let (host, inner) = (format!("{tag}v{i}"), format!("{tag}p{i}"));
            ip(&["netns", "add", &ns])?;
            me.namespaces.push(ns.clone());
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{subnet}.{}/24", i + 1),
                "dev",
                &inner,
            ])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["link", "set", &host, "master", &br])?;
            ip(&["link", "set", &host, "up"])?;
        }
        Ok(me)
    }

    /// The address node `i` (0-based) listens on, inside its namespace.
    pub fn addr(&self, i: usize, port: u16) -> String {
        format!("{}.{}:{port}", self.subnet, i + 1)
    }

    /// Cuts node `i` off from everyone (peers and clients), both ways.
    pub fn cut(&self, i: usize) {
        ip(&["link", "set", &format!("{}v{i}", self.tag), "down"]).expect("cut");
    }

    pub fn heal(&self, i: usize) {
        ip(&["link", "set", &format!("{}v{i}", self.tag), "up"]).expect("heal");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &format!("{}br", self.tag)]);
    }
}
