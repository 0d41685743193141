//! The files in `deploy/` stay true to the binary: every flag they pass is
//! one `weft run` accepts, and the CNI config reads the subnet.env weft
//! writes.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;

fn deploy(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `weft run ARGS --help` exits 0 only if clap accepted every flag before
/// `--help`.
fn accepted(args: &[String]) {
    let out = Command::new(weft())
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "weft rejects {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `- item` lines of the first `args:` list in `yaml` after the line
/// `after` (trimmed), as they are.
fn args_after(yaml: &str, after: &str) -> Vec<String> {
    yaml.lines()
        .skip_while(|l| l.trim() != after)
        .skip_while(|l| l.trim() != "args:")
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- ").map(str::to_string))
        .collect()
}

/// Asserts that the manifest `name` has every one of `lines` (trimmed).
fn has_lines(name: &str, yaml: &str, lines: &[&str]) {
    for line in lines {
        assert!(
            yaml.lines().any(|l| l.trim() == *line),
            "{name} lacks {line}"
        );
    }
}

/// The least-privilege settings every weft container has.
const LEAST_PRIVILEGE: [&str; 5] = [
    "allowPrivilegeEscalation: false",
    "readOnlyRootFilesystem: true",
    "type: RuntimeDefault",
    "drop: [\"ALL\"]",
    "add: [\"NET_ADMIN\"]",
];

#[test]
fn rejecting_a_flag_is_noticed() {
    let out = Command::new(weft())
        .args(["run", "--no-such-flag", "--help"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn systemd_unit_flags_are_weft_flags() {
    let unit = deploy("weft.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let mut args: Vec<String> = exec
        .split_whitespace()
        .skip(1)
        .filter(|a| *a != "$WEFT_ARGS")
        .map(str::to_string)
        .collect();
    assert_eq!(args[0], "run");
    assert!(args.contains(&"--subnet-file=/run/flannel/subnet.env".to_string()));
    // Each documented WEFT_ARGS example, too.
    let examples: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("#   WEFT_ARGS="))
        .collect();
    assert_eq!(examples.len(), 2, "{unit}");
    for e in examples {
        let mut with = args.clone();
        with.extend(e.split_whitespace().map(str::to_string));
        accepted(&with);
    }
    args.push("--registry-dir=/var/lib/weft".into());
    accepted(&args);
}

#[test]
fn daemonset_args_are_weft_flags_and_cni_config_matches() {
    let yaml = deploy("kube-weft-etcd.yaml");
    let args: Vec<String> = args_after(&yaml, "- name: weft")
        .iter()
        .map(|a| a.replace("$(ETCD_ENDPOINTS)", "https://10.0.0.1:2379"))
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("run"), "{args:?}");
    assert!(args.iter().any(|a| a.starts_with("--etcd-endpoints=")));
    accepted(&args);
    // The ConfigMap's CNI config is deploy/10-flannel.conflist, and it
    // reads the subnet.env weft writes.
    let embedded: String = yaml
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("cni-conf.json: |"))
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    let embedded: serde_json::Value = serde_json::from_str(&embedded).unwrap();
    let file: serde_json::Value = serde_json::from_str(&deploy("10-flannel.conflist")).unwrap();
    assert_eq!(embedded, file);
    assert_eq!(file["plugins"][0]["type"], "flannel");
    let subnet_file = file["plugins"][0]["subnetFile"].as_str().unwrap();
    assert!(
        args.contains(&format!("--subnet-file={subnet_file}")),
        "{args:?}"
    );
    // Probes hit the metrics address weft is given.
    assert!(args.contains(&"--metrics-addr=127.0.0.1:9474".to_string()));
    assert!(yaml.contains("port: 9474") && yaml.contains("path: /readyz"));
}

/// Least privilege: NET_ADMIN only (weft opens no raw socket), and the
/// usual sandboxing in both the unit and the DaemonSet.
#[test]
fn deploy_files_grant_least_privilege() {
    let unit = deploy("weft.service");
    let setting = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("weft.service has no {key}="))
            .to_string()
    };
    assert_eq!(setting("CapabilityBoundingSet"), "CAP_NET_ADMIN");
    assert_eq!(setting("AmbientCapabilities"), "CAP_NET_ADMIN");
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectKernelModules", "yes"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("SystemCallFilter", "@system-service"),
        (
            "RestrictAddressFamilies",
            "AF_INET AF_INET6 AF_NETLINK AF_UNIX",
        ),
    ] {
        assert_eq!(setting(key), want, "{key}");
    }
    assert!(!unit.contains("CAP_NET_RAW\n") && !unit.contains("CAP_NET_RAW "));
    let yaml = deploy("kube-weft-etcd.yaml");
    has_lines("kube-weft-etcd.yaml", &yaml, &LEAST_PRIVILEGE);
    has_lines("kube-weft-etcd.yaml", &yaml, &["privileged: false"]);
    assert!(
        !yaml.contains("NET_RAW\""),
        "kube-weft-etcd.yaml still adds NET_RAW"
    );
}

/// `kube-weft.yaml`, flannel's manifest with weft in the flannel
/// container: its args are flanneld's (`--ip-masq --kube-subnet-mgr
/// --healthz-port=8081`) and weft accepts them, its net-conf.json parses,
/// its CNI config is `10-flannel.conflist`, its probes hit the healthz
/// port, and it grants least privilege.
#[test]
fn kube_manifest_runs_weft_with_flanneld_s_flags() {
    let yaml = deploy("kube-weft.yaml");
    let args = args_after(&yaml, "- name: kube-flannel");
    assert_eq!(
        args,
        [
            "run",
            "--ip-masq",
            "--kube-subnet-mgr",
            "--healthz-port=8081"
        ]
    );
    accepted(&args);
    let block = |key: &str| -> String {
        yaml.lines()
            .skip_while(|l| !l.trim_start().starts_with(&format!("{key}: |")))
            .skip(1)
            .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
            .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
            .collect()
    };
    weft_routes::NetConf::parse(&block("net-conf.json")).expect("net-conf.json parses");
    let cni: serde_json::Value = serde_json::from_str(&block("cni-conf.json")).unwrap();
    let file: serde_json::Value = serde_json::from_str(&deploy("10-flannel.conflist")).unwrap();
    assert_eq!(cni["plugins"][0]["type"], "flannel");
    assert_eq!(
        cni["plugins"][0]["delegate"],
        file["plugins"][0]["delegate"]
    );
    assert!(yaml.contains("port: 8081") && yaml.contains("path: /readyz"));
    has_lines("kube-weft.yaml", &yaml, &LEAST_PRIVILEGE);
    has_lines(
        "kube-weft.yaml",
        &yaml,
        &["serviceAccountName: flannel", "name: kube-flannel-cfg"],
    );
}
