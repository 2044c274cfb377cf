//! An in-process stand-in for the Kubernetes API server, for tests on a machine where no
//! cluster runs. It speaks the real protocol over HTTPS (a kubeconfig with its CA and a
//! token): lists with a `resourceVersion`, watch streams of `ADDED`/`MODIFIED`/`DELETED`
//! and `BOOKMARK` events, `410 Gone` when a watch asks for a version it has forgotten
//! ([`ApiServer::expire`]), and a record of every write it receives. Objects are kept as
//! JSON by resource (`pods`, `gateways`, ...) and `namespace/name`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};
use tokio::sync::watch;

type Body = BoxBody<Bytes, Infallible>;

/// Answers a TokenReview: the token's username and bound node, or `None` to refuse it.
pub type Reviewer = Box<dyn Fn(&str) -> Option<(String, Option<String>)> + Send>;

/// A write the server received.
#[derive(Debug, Clone)]
pub struct Write {
    pub method: String,
    pub path: String,
    pub body: Value,
}

#[derive(Default)]
struct Store {
    /// The last resource version handed out.
    rv: u64,
    /// By resource, then `namespace/name`.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    /// Every change: (version, resource, event type, object).
    history: Vec<(u64, String, &'static str, Value)>,
    /// Watches asking for a version at or below this get `410 Gone`.
    forgotten_below: u64,
    /// Lists served, by resource.
    lists: BTreeMap<String, usize>,
    writes: Vec<Write>,
    /// Paths of the single objects read.
    reads: Vec<String>,
    /// Objects by the document set (`sync`) they came from.
    origins: BTreeMap<String, Vec<(String, String)>>,
    reviewer: Option<Reviewer>,
}

/// The running server.
pub struct ApiServer {
    store: Arc<Mutex<Store>>,
    /// Bumped on every change (watch streams wake on it), and on `expire`.
    changed: watch::Sender<u64>,
    pub kubeconfig: PathBuf,
    pub addr: SocketAddr,
    /// Its own runtime (the testbed is driven from synchronous code); shut down in the
    /// background on drop, which may happen inside a test's runtime.
    runtime: Option<tokio::runtime::Runtime>,
    serving: Option<(tokio_rustls::TlsAcceptor, Shared, String)>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The resource name of a kind (the kinds the control plane reads, and what it writes).
pub fn plural(kind: &str) -> String {
    resources::kinds::READ
        .iter()
        .find(|k| k.kind == kind)
        .map(|k| k.plural.to_string())
        .unwrap_or_else(|| format!("{}s", kind.to_lowercase()))
}

impl ApiServer {
    /// Serves on `listener` (already bound, e.g. inside a network namespace) and writes a
    /// kubeconfig for it into `dir`.
    pub fn start(listener: std::net::TcpListener, dir: &Path) -> Result<ApiServer> {
        let addr = listener.local_addr()?;
        let cert = rcgen::generate_simple_self_signed(vec![addr.ip().to_string()])?;
        let cert_pem = cert.cert.pem();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)?;
        let mut tls = tls;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_text(addr, &cert_pem))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let store = Arc::new(Mutex::new(Store::default()));
        let (changed, _) = watch::channel(0);
        let mut server = ApiServer {
            store,
            changed,
            kubeconfig,
            addr,
            runtime: Some(runtime),
            serving: None,
        };
        let shared = Shared {
            store: server.store.clone(),
            changed: server.changed.clone(),
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        server.accept(listener, acceptor.clone(), shared.clone())?;
        server.serving = Some((acceptor, shared, cert_pem));
        Ok(server)
    }

    /// Also serves on `listener` (another namespace's loopback, at the same address);
    /// returns the kubeconfig for it.
    pub fn serve_also(&self, listener: std::net::TcpListener, name: &str) -> Result<PathBuf> {
        let (acceptor, shared, cert_pem) = self.serving.clone().context("serving")?;
        let addr = listener.local_addr()?;
        let path = self.kubeconfig.with_file_name(format!("kubeconfig-{name}"));
        std::fs::write(&path, kubeconfig_text(addr, &cert_pem))?;
        self.accept(listener, acceptor, shared)?;
        Ok(path)
    }

    fn accept(
        &self,
        listener: std::net::TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
        shared: Shared,
    ) -> Result<()> {
        listener.set_nonblocking(true)?;
        runtime_handle(self).spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, shared) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(shared.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok(())
    }

    /// Adds or replaces the objects of `text` (multi-document YAML) and deletes the objects
    /// the previous call for `origin` had and this one has not, as replacing a file would.
    pub fn sync(&self, origin: &str, text: &str) -> Result<()> {
        let mut docs = Vec::new();
        for doc in text.split("\n---\n") {
            let v: serde_yaml::Value = serde_yaml::from_str(doc).context("YAML")?;
            if !v.is_null() {
                docs.push(serde_json::to_value(v)?);
            }
        }
        let mut store = self.store.lock().unwrap();
        let mut now = Vec::new();
        for mut v in docs {
            let kind = v["kind"].as_str().context("kind")?.to_string();
            let (res, key) = (plural(&kind), key_of(&v));
            now.push((res.clone(), key.clone()));
            let old = store.objects.get(&res).and_then(|o| o.get(&key)).cloned();
            let unchanged = old.as_ref().is_some_and(|o| same(o, &v));
            if unchanged {
                continue;
            }
            store.rv += 1;
            let rv = store.rv;
            v["metadata"]["resourceVersion"] = rv.to_string().into();
            if v["metadata"].get("uid").is_none() {
                v["metadata"]["uid"] = format!("uid-{res}-{key}").replace('/', "-").into();
            }
            let event = if old.is_some() { "MODIFIED" } else { "ADDED" };
            store
                .objects
                .entry(res.clone())
                .or_default()
                .insert(key, v.clone());
            store.history.push((rv, res, event, v));
        }
        let before = store.origins.insert(origin.to_string(), now.clone());
        for (res, key) in before.unwrap_or_default() {
            if now.contains(&(res.clone(), key.clone())) {
                continue;
            }
            if let Some(v) = store.objects.get_mut(&res).and_then(|o| o.remove(&key)) {
                store.rv += 1;
                let rv = store.rv;
                store.history.push((rv, res, "DELETED", v));
            }
        }
        let rv = store.rv;
        drop(store);
        self.changed.send_replace(rv);
        Ok(())
    }

    /// Forgets every version so far: open watches end with `410 Gone`, and re-watching
    /// from any version seen gets it too, until the client lists again.
    pub fn expire(&self) {
        let mut store = self.store.lock().unwrap();
        store.rv += 1;
        store.forgotten_below = store.rv;
        store.history.clear();
        let rv = store.rv;
        drop(store);
        self.changed.send_replace(rv);
    }

    /// Answers TokenReviews with `reviewer` (without one every token is refused).
    pub fn set_token_reviewer(&self, reviewer: Reviewer) {
        self.store.lock().unwrap().reviewer = Some(reviewer);
    }

    /// How many lists of `resource` were served.
    pub fn lists(&self, resource: &str) -> usize {
        self.store
            .lock()
            .unwrap()
            .lists
            .get(resource)
            .copied()
            .unwrap_or(0)
    }

    /// The paths of the single objects read (GET of one pod or namespace).
    pub fn reads(&self) -> Vec<String> {
        self.store.lock().unwrap().reads.clone()
    }

    pub fn writes(&self) -> Vec<Write> {
        self.store.lock().unwrap().writes.clone()
    }
}

fn runtime_handle(s: &ApiServer) -> tokio::runtime::Handle {
    s.runtime.as_ref().expect("running").handle().clone()
}

/// Equal but for the fields the server sets.
fn same(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("resourceVersion");
            m.remove("uid");
        }
        v
    };
    strip(a) == strip(b)
}

fn key_of(v: &Value) -> String {
    format!(
        "{}/{}",
        v["metadata"]["namespace"].as_str().unwrap_or_default(),
        v["metadata"]["name"].as_str().unwrap_or_default()
    )
}

fn kubeconfig_text(addr: SocketAddr, ca_pem: &str) -> String {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{addr}\n    certificate-authority-data: {ca}\nusers:\n- name: test\n  user:\n    token: test-token\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\ncurrent-context: test\n"
    )
}

#[derive(Clone)]
struct Shared {
    store: Arc<Mutex<Store>>,
    changed: watch::Sender<u64>,
}

impl Shared {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        let query: BTreeMap<String, String> = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if parts.method != Method::GET {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let mut store = self.store.lock().unwrap();
            store.writes.push(Write {
                method: parts.method.to_string(),
                path: path.clone(),
                body: body.clone(),
            });
            if path.ends_with("/tokenreviews") {
                let token = body["spec"]["token"].as_str().unwrap_or_default();
                let answer = store.reviewer.as_ref().and_then(|r| r(token));
                body["status"] = match answer {
                    Some((username, node)) => json!({
                        "authenticated": true,
                        "audiences": body["spec"]["audiences"],
                        "user": {"username": username, "extra": node.map(|n|
                            json!({"authentication.kubernetes.io/node-name": [n]}))},
                    }),
                    None => json!({"authenticated": false, "error": "invalid bearer token"}),
                };
            }
            // A create on a namespaced collection (`/api/v1/namespaces/<ns>/<resource>`) is
            // kept, so it can be read back; a second one of the same name is a conflict.
            let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            let create = parts.method == Method::POST;
            if let (true, ["api", "v1", "namespaces", ns, res]) = (create, segs.as_slice()) {
                if *res != "events" {
                    let name = body["metadata"]["name"].as_str().unwrap_or_default();
                    let key = format!("{ns}/{name}");
                    let of = store.objects.entry(res.to_string()).or_default();
                    if of.contains_key(&key) {
                        return reply(
                            StatusCode::CONFLICT,
                            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                    "status": "Failure", "reason": "AlreadyExists", "code": 409,
                                    "message": format!("{res} {key} already exists")}),
                        );
                    }
                    of.insert(key, body.clone());
                }
            }
            if parts.method == Method::DELETE {
                return reply(
                    StatusCode::OK,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Success", "code": 200}),
                );
            }
            return reply(StatusCode::CREATED, &body);
        }
        if let Some(found) = self.get_one(&path) {
            return found;
        }
        // GET /api/v1/<resource> or /apis/<group>/<version>/<resource>: cluster-wide.
        let resource = path.rsplit('/').next().unwrap_or_default().to_string();
        if query.get("watch").map(String::as_str) == Some("true") {
            let from: u64 = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            return self.watch(resource, from);
        }
        let mut store = self.store.lock().unwrap();
        *store.lists.entry(resource.clone()).or_default() += 1;
        let items: Vec<Value> = store
            .objects
            .get(&resource)
            .map(|o| o.values().cloned().collect())
            .unwrap_or_default();
        let list = json!({
            "apiVersion": "v1", "kind": "List",
            "metadata": {"resourceVersion": store.rv.to_string()},
            "items": items,
        });
        reply(StatusCode::OK, &list)
    }

    /// GET of one object: `/api/v1/namespaces/<ns>/<resource>/<name>` or
    /// `/api/v1/namespaces/<name>`; `None` for any other path.
    fn get_one(&self, path: &str) -> Option<Response<Body>> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (res, key) = match parts.as_slice() {
            ["api", "v1", "namespaces", ns, res, name] => (res.to_string(), format!("{ns}/{name}")),
            ["api", "v1", "namespaces", name] => ("namespaces".to_string(), format!("/{name}")),
            _ => return None,
        };
        let mut store = self.store.lock().unwrap();
        store.reads.push(path.to_string());
        Some(match store.objects.get(&res).and_then(|o| o.get(&key)) {
            Some(v) => reply(StatusCode::OK, v),
            None => reply(
                StatusCode::NOT_FOUND,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "reason": "NotFound", "code": 404,
                        "message": format!("{res} {key} not found")}),
            ),
        })
    }

    /// A watch stream of `resource` from version `from`: the events after it, then each new
    /// one as it happens; `410 Gone` when `from` was forgotten or gets forgotten.
    fn watch(&self, resource: String, from: u64) -> Response<Body> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
        let (store, mut changed) = (self.store.clone(), self.changed.subscribe());
        tokio::spawn(async move {
            let mut at = from;
            loop {
                let lines = {
                    let s = store.lock().unwrap();
                    if at < s.forgotten_below {
                        vec![gone()]
                    } else {
                        let mut lines: Vec<Value> = s
                            .history
                            .iter()
                            .filter(|(rv, res, _, _)| *rv > at && *res == resource)
                            .map(|(_, _, t, o)| json!({"type": t, "object": o}))
                            .collect();
                        at = s.rv;
                        if lines.is_empty() {
                            // Keeps the client's version current without an object.
                            lines.push(json!({"type": "BOOKMARK", "object": {
                                "kind": "Bookmark", "apiVersion": "v1",
                                "metadata": {"resourceVersion": at.to_string()}}}));
                        }
                        lines
                    }
                };
                let end = lines[0]["type"] == "ERROR";
                for l in lines {
                    let mut text = l.to_string();
                    text.push('\n');
                    if tx.send(Ok(Frame::data(Bytes::from(text)))).await.is_err() {
                        return;
                    }
                }
                if end || changed.changed().await.is_err() {
                    return;
                }
            }
        });
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(StreamBody::new(stream).boxed())
            .unwrap()
    }
}

fn gone() -> Value {
    json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410}})
}

fn reply(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap()
}
