//! The CNI side of `keelson-cni`: a chained plugin per CNI spec 0.4.0 and 1.0.0. It reads
//! `CNI_*` from the environment and the network configuration (with `prevResult`) from stdin,
//! asks the node agent to enroll or release the pod, and prints `prevResult` through on ADD.
//! Errors are the spec's JSON error object with its codes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/keelson/cni.sock";

/// Spec error codes.
pub const INCOMPATIBLE_VERSION: u32 = 1;
pub const UNSUPPORTED_FIELD: u32 = 2;
pub const INVALID_ENV: u32 = 4;
pub const DECODE_FAILURE: u32 = 6;
pub const INVALID_CONFIG: u32 = 7;
pub const TRY_AGAIN_LATER: u32 = 11;
/// Plugin-specific (≥ 100): the mesh refused the pod.
pub const ENROLMENT_FAILED: u32 = 100;
pub const INTERNAL: u32 = 999;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            cni_version: "1.0.0".into(),
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

/// The network configuration, as much as this plugin reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
    /// The node agent's socket.
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
}

/// A pod event for the node agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodEvent {
    pub op: String,
    pub pod: String,
    pub namespace: String,
    pub container_id: String,
    pub netns: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReply {
    pub ok: bool,
    #[serde(default)]
    pub enrolled: bool,
    #[serde(default)]
    pub error: String,
}

/// Sends an event to the node agent and returns its reply.
pub trait Agent {
    fn send(&self, socket: &std::path::Path, event: &PodEvent) -> Result<AgentReply, String>;
}

fn command(env: &dyn Fn(&str) -> Option<String>) -> Result<Command, CniError> {
    match env("CNI_COMMAND").as_deref() {
        Some("ADD") => Ok(Command::Add),
        Some("DEL") => Ok(Command::Del),
        Some("CHECK") => Ok(Command::Check),
        Some("VERSION") => Ok(Command::Version),
        Some(other) => Err(CniError::new(
            INVALID_ENV,
            "unknown CNI_COMMAND",
            other.to_string(),
        )),
        None => Err(CniError::new(INVALID_ENV, "CNI_COMMAND is not set", "")),
    }
}

/// `K8S_POD_NAME=a;K8S_POD_NAMESPACE=b;...`
pub fn parse_args(s: &str) -> BTreeMap<String, String> {
    s.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs one invocation; returns what goes to stdout.
pub fn run(
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &str,
    agent: &dyn Agent,
) -> Result<String, CniError> {
    let cmd = command(env)?;
    if cmd == Command::Version {
        return Ok(serde_json::json!({
            "cniVersion": "1.0.0",
            "supportedVersions": SUPPORTED,
        })
        .to_string());
    }
    let conf: NetConf = serde_json::from_str(stdin).map_err(|e| {
        CniError::new(
            DECODE_FAILURE,
            "cannot decode the network configuration",
            e.to_string(),
        )
    })?;
    if !SUPPORTED.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            INCOMPATIBLE_VERSION,
            format!("cniVersion {} is not supported", conf.cni_version),
            format!("supported: {}", SUPPORTED.join(", ")),
        ));
    }
    let need = |k: &str| {
        env(k)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| CniError::new(INVALID_ENV, format!("{k} is not set"), ""))
    };
    let container_id = need("CNI_CONTAINERID")?;
    let args = parse_args(&env("CNI_ARGS").unwrap_or_default());
    let pod = args.get("K8S_POD_NAME").cloned().unwrap_or_default();
    let namespace = args.get("K8S_POD_NAMESPACE").cloned().unwrap_or_default();
    let socket = conf
        .agent_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET));
    let passthrough = || -> String {
        match &conf.prev_result {
            Some(prev) => prev.to_string(),
            None => serde_json::json!({ "cniVersion": conf.cni_version }).to_string(),
        }
    };
    match cmd {
        Command::Add | Command::Check => {
            let netns = need("CNI_NETNS")?;
            need("CNI_IFNAME")?;
            if conf.prev_result.is_none() && cmd == Command::Check {
                return Err(CniError::new(INVALID_CONFIG, "CHECK needs prevResult", ""));
            }
            if pod.is_empty() || namespace.is_empty() {
                // Not a Kubernetes pod: nothing for the mesh to do.
                return Ok(if cmd == Command::Add {
                    passthrough()
                } else {
                    String::new()
                });
            }
            let event = PodEvent {
                op: if cmd == Command::Add { "add" } else { "check" }.into(),
                pod: pod.clone(),
                namespace: namespace.clone(),
                container_id,
                netns,
            };
            let reply = agent.send(&socket, &event).map_err(|e| {
                CniError::new(
                    TRY_AGAIN_LATER,
                    format!("the Keelson node agent is not reachable for {namespace}/{pod}"),
                    e,
                )
            })?;
            if !reply.ok {
                return Err(CniError::new(
                    ENROLMENT_FAILED,
                    format!("pod {namespace}/{pod} could not be enrolled in the mesh"),
                    reply.error,
                ));
            }
            Ok(if cmd == Command::Add {
                passthrough()
            } else {
                String::new()
            })
        }
        Command::Del => {
            // DEL must succeed even when the agent or the netns is gone.
            if !pod.is_empty() {
                let event = PodEvent {
                    op: "del".into(),
                    pod,
                    namespace,
                    container_id,
                    netns: env("CNI_NETNS").unwrap_or_default(),
                };
                let _ = agent.send(&socket, &event);
            }
            Ok(String::new())
        }
        Command::Version => unreachable!("handled above"),
    }
}

/// The agent over its unix socket: one JSON line each way, bounded in time.
pub struct SocketAgent {
    pub timeout: std::time::Duration,
}

impl Agent for SocketAgent {
    fn send(&self, socket: &std::path::Path, event: &PodEvent) -> Result<AgentReply, String> {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::os::unix::net::UnixStream::connect(socket)
            .map_err(|e| format!("{}: {e}", socket.display()))?;
        s.set_read_timeout(Some(self.timeout))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(self.timeout))
            .map_err(|e| e.to_string())?;
        let mut line = serde_json::to_string(event).map_err(|e| e.to_string())?;
        line.push('\n');
        s.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
        let mut reply = String::new();
        BufReader::new(s)
            .read_line(&mut reply)
            .map_err(|e| format!("no reply: {e}"))?;
        serde_json::from_str(&reply).map_err(|e| format!("bad reply {reply:?}: {e}"))
    }
}

#[cfg(test)]
mod tests;
