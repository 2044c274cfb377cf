//! Calling a CNI plugin binary the way a container runtime does: `CNI_COMMAND`,
//! `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS` with the pod's name and namespace,
//! `CNI_PATH`, and the network configuration on stdin.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

/// One call's parameters.
pub struct CniCall<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub namespace: &'a str,
    pub pod: &'a str,
    pub conf: &'a serde_json::Value,
}

/// What the plugin answered: whether it succeeded, its stdout (the result or the CNI error
/// object) and its stderr.
pub struct CniOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `bin` for `call` and waits for it.
pub fn call(bin: &Path, call: &CniCall<'_>) -> Result<CniOutput> {
    let mut child = Command::new(bin)
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                call.namespace, call.pod
            ),
        )
        .env("CNI_PATH", bin.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", bin.display()))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(call.conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    Ok(CniOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
