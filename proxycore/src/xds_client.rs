//! The delta-ADS client (docs/WIRE.md §3.1–§3.3): one stream to the control plane carrying
//! wildcard subscriptions to Address and Authorization. Every response is applied (its valid
//! resources, even when others in it fail) and answered with an ACK, or a NACK naming each
//! rejected resource. On reconnect the versions held are sent as `initial_resource_versions`;
//! while the control plane is away the last state stays in force. Backoff 10 ms → 15 s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use prost_types::{value::Kind, Struct, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status as RpcStatus};
use xds::type_url;

use crate::admin::Readiness;
use crate::config::Config;
use crate::grpc;
use crate::rbac;
use crate::state::wds::{convert_address, Converted};
use crate::state::{State, Update};

pub const INITIAL_BACKOFF: Duration = Duration::from_millis(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(15);
const MAX_MESSAGE: usize = 200 << 20;
/// The types ztunnel watches, in the order it subscribes.
pub const WATCHED: [&str; 2] = [type_url::ADDRESS, type_url::AUTHORIZATION];
pub const READY_ADDRESS: &str = "xds addresses";
pub const READY_AUTHORIZATION: &str = "xds authorizations";
/// gRPC INVALID_ARGUMENT, the code a NACK carries.
const INVALID_ARGUMENT: i32 = 3;

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

/// The node sent in the first request of each type.
pub fn node(cfg: &Config) -> Node {
    let ip = cfg.instance_ip.clone().unwrap_or_else(|| "1.1.1.1".into());
    let pod = cfg.pod_name.clone().unwrap_or_default();
    let ns = cfg.pod_namespace.clone().unwrap_or_default();
    let mut fields = std::collections::BTreeMap::new();
    for (k, v) in &cfg.node_metadata {
        fields.insert(k.clone(), string(v));
    }
    fields.insert("NAME".into(), string(&pod));
    fields.insert("NAMESPACE".into(), string(&ns));
    fields.insert("INSTANCE_IPS".into(), string(&ip));
    fields.insert(
        "NODE_NAME".into(),
        string(cfg.node_name.as_deref().unwrap_or_default()),
    );
    fields
        .entry("CLUSTER_ID".into())
        .or_insert_with(|| string(&cfg.cluster_id));
    Node {
        id: format!("ztunnel~{ip}~{pod}.{ns}~{ns}.svc.cluster.local"),
        metadata: Some(Struct {
            fields: fields.into_iter().collect(),
        }),
        ..Default::default()
    }
}

/// A type the core does not interpret, subscribed to for a proxy that does (the waypoint's
/// L7 types). The subscriber decodes, checks and keeps each resource in a store of its own.
pub trait Subscription: Send + Sync {
    fn type_url(&self) -> &'static str;
    /// Readiness task: done at the first response of this type.
    fn ready(&self) -> &'static str;
    /// Stores the resources that decode and check, removes `removed`, and returns the ones
    /// rejected, with the reason, to be NACKed by name.
    fn apply(&self, resources: Vec<(String, Vec<u8>)>, removed: &[String])
        -> Vec<(String, String)>;
}

pub struct XdsClient {
    cfg: Arc<Config>,
    metrics: crate::metrics::XdsMetrics,
    state: State,
    readiness: Readiness,
    /// name → version, per type: what this ztunnel holds, sent on reconnect.
    held: HashMap<&'static str, HashMap<String, String>>,
    subscriptions: Vec<Arc<dyn Subscription>>,
}

/// Applies a response of a subscribed type: the rejected resources NACKed by name, the
/// others held.
pub fn apply_subscribed_response(
    sub: &dyn Subscription,
    held: &mut HashMap<String, String>,
    resp: &DeltaDiscoveryResponse,
) -> DeltaDiscoveryRequest {
    let mut errors = Vec::new();
    let mut bodies = Vec::new();
    let mut versions = HashMap::new();
    for r in &resp.resources {
        match &r.resource {
            Some(any) => {
                versions.insert(r.name.clone(), r.version.clone());
                bodies.push((r.name.clone(), any.value.clone()));
            }
            None => errors.push(format!("{}: no resource body", r.name)),
        }
    }
    let offered = bodies.len();
    let rejected = sub.apply(bodies, &resp.removed_resources);
    for (name, _) in &rejected {
        versions.remove(name);
    }
    errors.extend(rejected.iter().map(|(name, e)| format!("{name}: {e}")));
    for name in &resp.removed_resources {
        held.remove(name);
    }
    held.extend(versions);
    ack_or_nack(
        resp,
        offered - rejected.len(),
        resp.removed_resources.len(),
        &errors,
    )
}

/// Logs what a response did and answers it: an ACK, or a NACK listing the rejected
/// resources ("<name>: <reason>; ...").
fn ack_or_nack(
    resp: &DeltaDiscoveryResponse,
    added: usize,
    removed: usize,
    errors: &[String],
) -> DeltaDiscoveryRequest {
    tracing::info!(type_url = %resp.type_url, added, removed, rejected = errors.len(), "xds response applied");
    let error_detail = (!errors.is_empty()).then(|| {
        let message = errors.join("; ");
        tracing::warn!(type_url = %resp.type_url, nonce = %resp.nonce, error = %message, "NACK: resources rejected");
        RpcStatus {
            code: INVALID_ARGUMENT,
            message,
            details: vec![],
        }
    });
    DeltaDiscoveryRequest {
        type_url: resp.type_url.clone(),
        response_nonce: resp.nonce.clone(),
        error_detail,
        ..Default::default()
    }
}

/// Decodes and converts every resource of `resp` as `M`; the ones that fail are listed in
/// `errors` ("<name>: <reason>") and skipped, the others are recorded in `held`.
fn decode_each<M: Message + Default, T>(
    resp: &DeltaDiscoveryResponse,
    held: &mut HashMap<String, String>,
    errors: &mut Vec<String>,
    convert: impl Fn(&str, M) -> Result<T, String>,
) -> Vec<T> {
    let mut out = Vec::new();
    for r in &resp.resources {
        let decoded = r
            .resource
            .as_ref()
            .ok_or_else(|| "no resource body".to_string())
            .and_then(|any| M::decode(any.value.as_slice()).map_err(|e| format!("decode: {e}")))
            .and_then(|m| convert(&r.name, m));
        match decoded {
            Ok(t) => {
                held.insert(r.name.clone(), r.version.clone());
                out.push(t);
            }
            Err(e) => errors.push(format!("{}: {e}", r.name)),
        }
    }
    out
}

/// What applying one response gave: the ACK or NACK to send.
pub fn apply_response(
    state: &State,
    held: &mut HashMap<String, String>,
    resp: &DeltaDiscoveryResponse,
) -> DeltaDiscoveryRequest {
    let mut errors = Vec::new();
    let mut update = Update::default();
    match resp.type_url.as_str() {
        type_url::ADDRESS => {
            let converted = decode_each(resp, held, &mut errors, |name, a| {
                convert_address(name, a).map_err(|e| e.to_string())
            });
            for c in converted {
                match c {
                    Converted::Workload(w) => update.workloads.push(*w),
                    Converted::Service(s) => update.services.push(*s),
                }
            }
            update.removed = resp.removed_resources.clone();
        }
        type_url::AUTHORIZATION => {
            update.policies = decode_each(resp, held, &mut errors, |_, a| {
                rbac::convert(a).map_err(|e| e.to_string())
            });
            update.removed_policies = resp.removed_resources.clone();
        }
        other => {
            tracing::debug!(type_url = other, "ignoring a response of an unknown type");
        }
    }
    for name in &resp.removed_resources {
        held.remove(name);
    }
    let (added, removed) = (
        update.workloads.len() + update.services.len() + update.policies.len(),
        resp.removed_resources.len(),
    );
    if added + removed > 0 {
        state.apply(update);
    }
    ack_or_nack(resp, added, removed, &errors)
}

impl XdsClient {
    pub fn new(
        cfg: Arc<Config>,
        state: State,
        readiness: Readiness,
        metrics: crate::metrics::XdsMetrics,
    ) -> Self {
        readiness.register(READY_ADDRESS);
        readiness.register(READY_AUTHORIZATION);
        XdsClient {
            cfg,
            metrics,
            state,
            readiness,
            held: WATCHED.iter().map(|t| (*t, HashMap::new())).collect(),
            subscriptions: Vec::new(),
        }
    }

    /// Also subscribes to `sub`'s type (after WDS and authorization).
    pub fn subscribe(mut self, sub: Arc<dyn Subscription>) -> Self {
        self.readiness.register(sub.ready());
        self.held.insert(sub.type_url(), HashMap::new());
        self.subscriptions.push(sub);
        self
    }

    /// Runs forever: connect, stream, reconnect with backoff.
    pub async fn run(mut self) {
        let target = self.cfg.xds.clone().expect("xds configured");
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let result = match grpc::channel(&target, self.cfg.packet_mark) {
                Ok(ch) => self.stream(ch).await,
                Err(e) => Err((e, false)),
            };
            let reason = match &result {
                Ok(()) => "Complete",
                Err((_, true)) => "Error",
                Err((_, false)) => "ConnectionError",
            };
            self.metrics
                .connection_terminations
                .get_or_create(&crate::metrics::ReasonLabel { reason })
                .inc();
            match result {
                Ok(()) => {
                    tracing::info!("xds stream ended; reconnecting");
                    backoff = INITIAL_BACKOFF;
                }
                Err((e, got_response)) => {
                    if got_response {
                        backoff = INITIAL_BACKOFF;
                    }
                    tracing::warn!(address = %target.address, error = %e, retry_in = ?backoff,
                        "xds stream failed; keeping the last known state");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One stream. The error carries whether any response arrived (the connection worked).
    async fn stream(
        &mut self,
        channel: tonic::transport::Channel,
    ) -> Result<(), (anyhow::Error, bool)> {
        let auth = grpc::Auth::new(
            &self.cfg.auth_token,
            &self.cfg.cluster_id,
            &self
                .cfg
                .xds
                .as_ref()
                .map(|x| x.headers.clone())
                .unwrap_or_default(),
        )
        .map_err(|e| (e, false))?;
        let mut client = AggregatedDiscoveryServiceClient::with_interceptor(channel, auth)
            .max_decoding_message_size(MAX_MESSAGE);
        let node = node(&self.cfg);
        let types: Vec<&'static str> = WATCHED
            .iter()
            .copied()
            .chain(self.subscriptions.iter().map(|s| s.type_url()))
            .collect();
        // Room for every initial request: they are queued before the stream is opened (and
        // read), so a smaller queue than the types subscribed would wait forever.
        let (tx, rx) = mpsc::channel(types.len() + 8);
        for t in &types {
            let held = &self.held[t];
            tx.send(DeltaDiscoveryRequest {
                node: Some(node.clone()),
                type_url: t.to_string(),
                initial_resource_versions: held
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                ..Default::default()
            })
            .await
            .map_err(|e| (e.into(), false))?;
        }
        let mut inbound = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .map_err(|s| (anyhow::anyhow!("{}: {}", s.code(), s.message()), false))?
            .into_inner();
        tracing::info!(address = %self.cfg.xds.as_ref().map(|x| x.address.as_str()).unwrap_or_default(), "xds stream open");
        let mut got = false;
        loop {
            let resp = match inbound.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(()),
                Err(s) => return Err((anyhow::anyhow!("{}: {}", s.code(), s.message()), got)),
            };
            got = true;
            let url = crate::metrics::UrlLabel {
                url: resp.type_url.clone(),
            };
            self.metrics.messages.get_or_create(&url).inc();
            self.metrics
                .message_bytes
                .get_or_create(&url)
                .inc_by(resp.encoded_len() as u64);
            let Some((t, held)) = self
                .held
                .iter_mut()
                .find(|(t, _)| **t == resp.type_url)
                .map(|(t, h)| (*t, h))
            else {
                // Unknown type: ignored, and ACKed anyway.
                let ack = apply_response(&self.state, &mut HashMap::new(), &resp);
                let _ = tx.send(ack).await;
                continue;
            };
            let sub = self.subscriptions.iter().find(|s| s.type_url() == t);
            let ack = match sub {
                Some(s) => apply_subscribed_response(s.as_ref(), held, &resp),
                None => apply_response(&self.state, held, &resp),
            };
            if tx.send(ack).await.is_err() {
                return Err((anyhow::anyhow!("request stream closed"), got));
            }
            self.readiness.done(match (t, sub) {
                (_, Some(s)) => s.ready(),
                (type_url::ADDRESS, None) => READY_ADDRESS,
                _ => READY_AUTHORIZATION,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds::discovery::Resource;

    fn address(name: &str, tunnel_protocol: i32) -> Resource {
        let a = xds::workload::Address {
            r#type: Some(xds::workload::address::Type::Workload(
                xds::workload::Workload {
                    uid: name.into(),
                    name: name.into(),
                    namespace: "ns".into(),
                    addresses: vec![vec![10, 0, 0, 1]],
                    tunnel_protocol,
                    ..Default::default()
                },
            )),
        };
        Resource {
            name: name.into(),
            version: "v1".into(),
            resource: Some(prost_types::Any {
                type_url: type_url::ADDRESS.into(),
                value: a.encode_to_vec(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn acks_and_nacks_per_resource() {
        let state = State::default();
        let mut held = HashMap::new();
        let resp = DeltaDiscoveryResponse {
            type_url: type_url::ADDRESS.into(),
            nonce: "n1".into(),
            resources: vec![address("good", 1), address("bad", 9), address("worse", 0)],
            ..Default::default()
        };
        let mut resp = resp;
        resp.resources[2].resource = None;
        let nack = apply_response(&state, &mut held, &resp);
        assert_eq!(nack.response_nonce, "n1");
        assert!(nack.node.is_none() && nack.initial_resource_versions.is_empty());
        let msg = nack.error_detail.unwrap().message;
        assert!(
            msg.starts_with("bad: ") && msg.contains("; worse: no resource body"),
            "{msg}"
        );
        assert!(state.workload_by_name("ns", "good").is_some());
        assert_eq!(held.keys().collect::<Vec<_>>(), vec!["good"]);

        // A removal and an unknown name in it: ACK, nothing else disturbed.
        let resp = DeltaDiscoveryResponse {
            type_url: type_url::ADDRESS.into(),
            nonce: "n2".into(),
            removed_resources: vec!["good".into(), "never-seen".into()],
            ..Default::default()
        };
        let ack = apply_response(&state, &mut held, &resp);
        assert!(ack.error_detail.is_none());
        assert_eq!(ack.type_url, type_url::ADDRESS);
        assert!(state.workload_by_name("ns", "good").is_none());
        assert!(held.is_empty());

        // An unknown type: ACKed, ignored.
        let resp = DeltaDiscoveryResponse {
            type_url: "type.googleapis.com/some.Future".into(),
            nonce: "n3".into(),
            resources: vec![address("x", 1)],
            ..Default::default()
        };
        let ack = apply_response(&state, &mut HashMap::new(), &resp);
        assert!(ack.error_detail.is_none() && ack.response_nonce == "n3");
        assert!(state.workload_by_name("ns", "x").is_none());
    }

    #[test]
    fn node_identity_follows_upstream() {
        let cfg = crate::config::Config::from_source(
            &[
                ("PROXY_MODE", "dedicated"),
                ("PROXY_WORKLOAD_INFO", "default/web-0/web"),
                ("LOCAL_XDS_PATH", "/tmp/x.yaml"),
                ("KEELSON_LOCAL_CA_DIR", "/tmp/ca"),
                ("POD_NAME", "ztunnel-abc"),
                ("POD_NAMESPACE", "istio-system"),
                ("INSTANCE_IP", "10.0.0.7"),
                ("NODE_NAME", "node-a"),
                ("ISTIO_META_FOO", "bar"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        )
        .unwrap();
        let n = node(&cfg);
        assert_eq!(
            n.id,
            "ztunnel~10.0.0.7~ztunnel-abc.istio-system~istio-system.svc.cluster.local"
        );
        let md = n.metadata.unwrap().fields;
        for (k, v) in [
            ("NAME", "ztunnel-abc"),
            ("NAMESPACE", "istio-system"),
            ("INSTANCE_IPS", "10.0.0.7"),
            ("NODE_NAME", "node-a"),
            ("FOO", "bar"),
            ("CLUSTER_ID", "Kubernetes"),
        ] {
            assert_eq!(md[k].kind, Some(Kind::StringValue(v.into())), "{k}");
        }
    }
}
