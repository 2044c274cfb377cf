//! The install step of the CNI DaemonSet (`keelson-cni install` / `uninstall`): puts the
//! plugin binary into the node's CNI bin directory and chains it, last, into the node's
//! network configuration, the way a container runtime finds chained plugins (CNI spec,
//! "Network Configuration Lists"). The runtime reads the first configuration file of the
//! directory in name order; that is the one chained. Uninstalling removes the entry and the
//! binary and leaves everything else as it was. Files are replaced atomically (written
//! beside, then renamed), so a runtime never reads half a file.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The plugin's `type` in a conflist: the binary's name in the CNI bin directory.
pub const PLUGIN_TYPE: &str = "keelson-cni";

/// Where things go on the node (as mounted into the DaemonSet's pod).
#[derive(Debug, Clone)]
pub struct Layout {
    /// The CNI bin directory (`/opt/cni/bin` on the node).
    pub bin_dir: PathBuf,
    /// The CNI configuration directory (`/etc/cni/net.d` on the node).
    pub conf_dir: PathBuf,
    /// The node agent's socket, as the plugin (run by the runtime, on the node) sees it.
    pub agent_socket: PathBuf,
}

/// What an install or uninstall changed.
#[derive(Debug, PartialEq, Eq)]
pub struct Changed {
    pub binary: PathBuf,
    pub conflist: Option<PathBuf>,
}

/// Copies `binary` into the bin directory and chains the plugin into the primary
/// configuration. Idempotent: a second install replaces the entry, never adds another.
pub fn install(layout: &Layout, binary: &Path) -> Result<Changed, String> {
    let target = layout.bin_dir.join(PLUGIN_TYPE);
    let bytes = std::fs::read(binary).map_err(|e| format!("reading {}: {e}", binary.display()))?;
    write_atomic(&target, &bytes, 0o755)?;
    let (path, conf) = primary(&layout.conf_dir)?;
    let chained = chain(conf, &layout.agent_socket)?;
    let list_path = conflist_path(&path);
    write_atomic(&list_path, pretty(&chained).as_bytes(), 0o644)?;
    if list_path != path {
        // A single-plugin `.conf` became a list: the old file would be read first.
        std::fs::remove_file(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
    }
    Ok(Changed {
        binary: target,
        conflist: Some(list_path),
    })
}

/// Removes the plugin's entry from every configuration that has one, then the binary.
pub fn uninstall(layout: &Layout) -> Result<Changed, String> {
    let mut changed = None;
    for path in conf_files(&layout.conf_dir)? {
        let conf = read_json(&path)?;
        let without = unchain(conf.clone());
        if without != conf {
            write_atomic(&path, pretty(&without).as_bytes(), 0o644)?;
            changed = Some(path);
        }
    }
    let binary = layout.bin_dir.join(PLUGIN_TYPE);
    match std::fs::remove_file(&binary) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing {}: {e}", binary.display())),
    }
    Ok(Changed {
        binary,
        conflist: changed,
    })
}

/// `conf` (a conflist, or a single plugin's `.conf`) as a conflist with the plugin last.
pub fn chain(conf: Value, agent_socket: &Path) -> Result<Value, String> {
    let mut list = if conf.get("plugins").is_some() {
        conf
    } else {
        // A single plugin: the list keeps its version and name.
        let mut list = serde_json::json!({
            "cniVersion": conf.get("cniVersion").cloned().unwrap_or(Value::from("1.0.0")),
            "name": conf.get("name").cloned().unwrap_or(Value::from("k8s-pod-network")),
        });
        list["plugins"] = Value::Array(vec![conf]);
        list
    };
    unchain_in_place(&mut list)?.push(serde_json::json!({
        "type": PLUGIN_TYPE,
        "agentSocket": agent_socket,
    }));
    Ok(list)
}

/// `conf` without the plugin's entries.
pub fn unchain(mut conf: Value) -> Value {
    let _ = unchain_in_place(&mut conf);
    conf
}

/// Removes the plugin's entries from `conf["plugins"]` and returns that list.
fn unchain_in_place(conf: &mut Value) -> Result<&mut Vec<Value>, String> {
    let plugins = conf
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or("the configuration has no plugins list")?;
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
    Ok(plugins)
}

/// The configuration the runtime uses: the first `.conflist`, `.conf` or `.json` file in
/// name order.
fn primary(conf_dir: &Path) -> Result<(PathBuf, Value), String> {
    let path = conf_files(conf_dir)?.into_iter().next().ok_or_else(|| {
        format!(
            "no CNI configuration in {} yet (is the node's network plugin installed?)",
            conf_dir.display()
        )
    })?;
    let conf = read_json(&path)?;
    Ok((path, conf))
}

fn conf_files(conf_dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries =
        std::fs::read_dir(conf_dir).map_err(|e| format!("reading {}: {e}", conf_dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    files.sort();
    Ok(files)
}

/// A `.conf` or `.json` file's list goes into `<name>.conflist`.
fn conflist_path(path: &Path) -> PathBuf {
    match path.extension().and_then(|e| e.to_str()) {
        Some("conflist") => path.to_path_buf(),
        _ => path.with_extension("conflist"),
    }
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// Writes `bytes` beside `path`, then renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = path.with_file_name(format!(
        ".{}.keelson-tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let fail = |e: std::io::Error| format!("writing {}: {e}", path.display());
    std::fs::write(&tmp, bytes).map_err(fail)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(dir: &Path) -> Layout {
        let (bin_dir, conf_dir) = (dir.join("bin"), dir.join("net.d"));
        std::fs::create_dir_all(&bin_dir).unwrap();
        std::fs::create_dir_all(&conf_dir).unwrap();
        Layout {
            bin_dir,
            conf_dir,
            agent_socket: "/var/run/keelson/cni.sock".into(),
        }
    }

    #[test]
    fn chained_last_once_and_removed_without_a_trace() {
        let dir = std::env::temp_dir().join(format!("keelson-install-{}", std::process::id()));
        let l = layout(&dir);
        let original = serde_json::json!({
            "cniVersion": "1.0.0", "name": "kindnet",
            "plugins": [{"type": "ptp", "ipam": {"type": "host-local"}}, {"type": "portmap"}],
        });
        let list = l.conf_dir.join("10-kindnet.conflist");
        std::fs::write(&list, pretty(&original)).unwrap();
        std::fs::write(l.conf_dir.join("99-other.conflist"), pretty(&original)).unwrap();
        let binary = dir.join("keelson-cni-built");
        std::fs::write(&binary, b"#!/bin/true\n").unwrap();

        for _ in 0..2 {
            let changed = install(&l, &binary).unwrap();
            assert_eq!(changed.conflist.as_deref(), Some(list.as_path()));
        }
        let chained = read_json(&list).unwrap();
        let types: Vec<&str> = chained["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["ptp", "portmap", PLUGIN_TYPE]);
        assert_eq!(
            chained["plugins"][2]["agentSocket"],
            "/var/run/keelson/cni.sock"
        );
        assert!(l.bin_dir.join(PLUGIN_TYPE).is_file());
        // Only the first file in name order is the runtime's.
        assert_eq!(
            read_json(&l.conf_dir.join("99-other.conflist")).unwrap(),
            original
        );

        uninstall(&l).unwrap();
        assert_eq!(read_json(&list).unwrap(), original);
        assert!(!l.bin_dir.join(PLUGIN_TYPE).exists());
        // Uninstalling twice is fine.
        uninstall(&l).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_single_plugin_conf_becomes_a_list() {
        let conf = serde_json::json!({"cniVersion": "0.4.0", "name": "bridge", "type": "bridge"});
        let list = chain(conf.clone(), Path::new("/s")).unwrap();
        assert_eq!(list["cniVersion"], "0.4.0");
        assert_eq!(list["name"], "bridge");
        assert_eq!(list["plugins"][0], conf);
        assert_eq!(list["plugins"][1]["type"], PLUGIN_TYPE);
        assert_eq!(
            conflist_path(Path::new("/d/10-bridge.conf")),
            Path::new("/d/10-bridge.conflist")
        );
        assert!(chain(serde_json::json!({"plugins": 3}), Path::new("/s")).is_err());
    }
}
