//! `keelson app collector`: a small OpenTelemetry collector for the local mesh. It takes
//! OTLP/gRPC trace exports (`TraceService/Export`, docs/OBSERVABILITY.md) and prints each
//! span as one JSON line on stdout (the pod's log): trace and span ids in hex, the parent,
//! name, kind, status, the sender's `service.name` and the attributes.

use anyhow::{Context, Result};
use xds::otlp::trace_service_server::{TraceService, TraceServiceServer};
use xds::otlp::{any_value, ExportTraceServiceRequest, ExportTraceServiceResponse, KeyValue};

struct Printer;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn value(kv: &KeyValue) -> serde_json::Value {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone().into(),
        Some(any_value::Value::BoolValue(b)) => (*b).into(),
        Some(any_value::Value::IntValue(n)) => (*n).into(),
        Some(any_value::Value::DoubleValue(d)) => (*d).into(),
        None => serde_json::Value::Null,
    }
}

fn attributes(kvs: &[KeyValue]) -> serde_json::Map<String, serde_json::Value> {
    kvs.iter().map(|kv| (kv.key.clone(), value(kv))).collect()
}

/// The spans of one export, a JSON object each.
pub fn lines(req: &ExportTraceServiceRequest) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource
            .get("service.name")
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                let kind = match s.kind {
                    2 => "server",
                    3 => "client",
                    1 => "internal",
                    _ => "other",
                };
                let status = match s.status.as_ref().map_or(0, |st| st.code) {
                    1 => "ok",
                    2 => "error",
                    _ => "unset",
                };
                out.push(serde_json::json!({
                    "service": service,
                    "trace_id": hex(&s.trace_id),
                    "span_id": hex(&s.span_id),
                    "parent_span_id": hex(&s.parent_span_id),
                    "name": s.name,
                    "kind": kind,
                    "status": status,
                    "duration_us": s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) / 1000,
                    "attributes": attributes(&s.attributes),
                }));
            }
        }
    }
    out
}

#[tonic::async_trait]
impl TraceService for Printer {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for line in lines(req.get_ref()) {
            println!("{line}");
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves OTLP/gRPC on `port` until killed.
pub async fn serve(port: u16) -> Result<()> {
    let addr: std::net::SocketAddr = ([0, 0, 0, 0], port).into();
    eprintln!("collector listening on :{port} (OTLP/gRPC)");
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Printer))
        .serve(addr)
        .await
        .context("OTLP server")
}
