//! The control plane's second source of resources: the Kubernetes API server. One watcher
//! per kind of [`resources::kinds::READ`] (list, then watch; a relist after `410 Gone` or
//! a broken stream, with backoff) keeps a store of every object; each change rebuilds the
//! same [`Resources`] model the file source builds, so the translation is one and the same.
//!
//! A resource that fails the model's checks is left out, logged with the field, and
//! reported on the object as a `Warning` Event (`InvalidResource`); the rest keeps serving.
//! Readiness: [`KubeSource::start`] returns once every kind's initial list is in.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use resources::kinds::ApiKind;
use resources::Resources;
use tokio::sync::{mpsc, watch};

/// The objects of every watched kind, by kind then `namespace/name`.
type Objects = BTreeMap<&'static str, BTreeMap<String, serde_yaml::Value>>;

/// Where to find the API server.
#[derive(Debug, Clone, Default)]
pub struct KubeOptions {
    /// A kubeconfig file; `None`: `KUBECONFIG`, `~/.kube/config` or the in-cluster service
    /// account, as `kubectl` would.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// What the waypoint controller deploys; `None`: no controller.
    pub waypoints: Option<crate::waypoints::WaypointSettings>,
    /// The control plane's own namespace (its CA Secret); `None`: `istio-system`.
    pub namespace: Option<String>,
}

/// A running source: the latest model, replaced on every change.
pub struct KubeSource {
    pub client: Client,
    pub resources: watch::Receiver<Arc<Resources>>,
}

/// A client for `opts`.
pub async fn client(opts: &KubeOptions) -> anyhow::Result<Client> {
    let config = match &opts.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

impl KubeSource {
    /// Starts a watcher per kind and returns once each has listed its objects.
    pub async fn start(client: Client) -> anyhow::Result<KubeSource> {
        let (changes, mut changed) = mpsc::unbounded_channel::<(&'static str, Change)>();
        let mut pending: HashSet<&'static str> = HashSet::new();
        for kind in resources::kinds::READ {
            pending.insert(kind.kind);
            tokio::spawn(watch_kind(client.clone(), *kind, changes.clone()));
        }
        let mut objects = Objects::new();
        let reporter = Reporter::new(client.clone());
        // The initial lists: nothing is served from a partial view.
        while !pending.is_empty() {
            let (kind, change) = changed
                .recv()
                .await
                .ok_or_else(|| anyhow::anyhow!("the watchers stopped"))?;
            if let Change::Listed(_) = &change {
                pending.remove(kind);
            }
            apply(&mut objects, kind, change);
        }
        let (tx, rx) = watch::channel(Arc::new(model(&objects, &reporter)));
        tracing::info!(
            kinds = resources::kinds::READ.len(),
            "kubernetes: initial lists in"
        );
        tokio::spawn(async move {
            while let Some((kind, change)) = changed.recv().await {
                apply(&mut objects, kind, change);
                // Everything that arrived together becomes one model.
                while let Ok((kind, change)) = changed.try_recv() {
                    apply(&mut objects, kind, change);
                }
                // The runner compares snapshots: an unchanged model pushes nothing.
                if tx.send(Arc::new(model(&objects, &reporter))).is_err() {
                    return;
                }
            }
        });
        Ok(KubeSource {
            client,
            resources: rx,
        })
    }
}

/// What a watcher saw.
enum Change {
    Applied(String, serde_yaml::Value),
    Deleted(String),
    /// A (re)list completed with exactly these objects.
    Listed(BTreeMap<String, serde_yaml::Value>),
}

fn apply(objects: &mut Objects, kind: &'static str, change: Change) {
    let of_kind = objects.entry(kind).or_default();
    match change {
        Change::Applied(key, v) => {
            of_kind.insert(key, v);
        }
        Change::Deleted(key) => {
            of_kind.remove(&key);
        }
        Change::Listed(all) => *of_kind = all,
    }
}

/// Lists and watches one kind for ever; a relist replaces what the kind held.
async fn watch_kind(
    client: Client,
    kind: ApiKind,
    changes: mpsc::UnboundedSender<(&'static str, Change)>,
) {
    let gvk = GroupVersionKind::gvk(kind.group, kind.version, kind.kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, kind.plural);
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listing: BTreeMap<String, serde_yaml::Value> = BTreeMap::new();
    while let Some(event) = stream.next().await {
        let change = match event {
            Ok(Event::Init) => {
                listing.clear();
                continue;
            }
            Ok(Event::InitApply(o)) => {
                if let Some((key, v)) = value(&kind, o) {
                    listing.insert(key, v);
                }
                continue;
            }
            Ok(Event::InitDone) => Change::Listed(std::mem::take(&mut listing)),
            Ok(Event::Apply(o)) => match value(&kind, o) {
                Some((key, v)) => Change::Applied(key, v),
                None => continue,
            },
            Ok(Event::Delete(o)) => match value(&kind, o) {
                Some((key, _)) => Change::Deleted(key),
                None => continue,
            },
            Err(e) => {
                tracing::warn!(kind = kind.kind, error = %e, "kubernetes watch failed; retrying");
                continue;
            }
        };
        if changes.send((kind.kind, change)).is_err() {
            return;
        }
    }
}

/// The object as the model reads it (with its `apiVersion` and `kind`), by
/// `namespace/name`.
fn value(kind: &ApiKind, mut o: DynamicObject) -> Option<(String, serde_yaml::Value)> {
    let key = format!(
        "{}/{}",
        o.metadata.namespace.as_deref().unwrap_or_default(),
        o.metadata.name.as_deref()?
    );
    // Fields the model never reads, and which change on every write.
    o.metadata.managed_fields = None;
    o.metadata.resource_version = None;
    let mut json = serde_json::to_value(&o).ok()?;
    json["apiVersion"] = kind.api_version().into();
    json["kind"] = kind.kind.into();
    Some((key, serde_yaml::to_value(json).ok()?))
}

/// The model of every object; one that fails its checks is left out and reported.
fn model(objects: &Objects, reporter: &Reporter) -> Resources {
    let mut all = Resources::default();
    for (kind, of_kind) in objects {
        for (key, v) in of_kind {
            let mut one = Resources::default();
            match one.add_value(&format!("kubernetes {kind} {key}"), v.clone()) {
                Ok(()) => all.extend(one),
                Err(e) => reporter.invalid(kind, v, &e.to_string()),
            }
        }
    }
    all
}

/// Reports invalid resources as Events, once per object version and reason.
struct Reporter {
    client: Client,
    seen: Mutex<HashSet<String>>,
}

impl Reporter {
    fn new(client: Client) -> Reporter {
        Reporter {
            client,
            seen: Mutex::default(),
        }
    }

    fn invalid(&self, kind: &str, v: &serde_yaml::Value, reason: &str) {
        let meta = &v["metadata"];
        let (ns, name, uid) = (
            meta["namespace"].as_str().unwrap_or("default").to_string(),
            meta["name"].as_str().unwrap_or_default().to_string(),
            meta["uid"].as_str().unwrap_or_default().to_string(),
        );
        if !self
            .seen
            .lock()
            .unwrap()
            .insert(format!("{kind}/{ns}/{name}/{uid}/{reason}"))
        {
            return;
        }
        tracing::error!(%kind, namespace = %ns, %name, error = %reason, "resource rejected; the rest keeps serving");
        let event = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": format!("{name}."), "namespace": ns},
            "involvedObject": {
                "apiVersion": v["apiVersion"], "kind": kind, "name": name,
                "namespace": ns, "uid": uid,
            },
            "reason": "InvalidResource",
            "message": reason,
            "type": "Warning",
            "source": {"component": "keelson-controlplane"},
        });
        let client = self.client.clone();
        tokio::spawn(async move {
            let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client, &ns);
            let Ok(event) = serde_json::from_value(event) else {
                return;
            };
            if let Err(e) = api.create(&PostParams::default(), &event).await {
                tracing::warn!(error = %e, "cannot record an Event for a rejected resource");
            }
        });
    }
}

/// The Secret the CA is kept in (root certificate, key, extra roots), in the control
/// plane's namespace: every replica and every restart signs with the same root.
pub const CA_SECRET: &str = "keelson-ca";
const CA_FILES: [&str; 3] = [
    identity::ca::ROOT_CERT_FILE,
    identity::ca::ROOT_KEY_FILE,
    identity::ca::EXTRA_ROOTS_FILE,
];

/// Makes `state_dir` hold the cluster's CA: the Secret's files when it exists; else the
/// CA `create` makes there is stored as the Secret (a replica that loses the race takes
/// the winner's).
pub async fn sync_ca_secret(
    client: &Client,
    namespace: &str,
    state_dir: &std::path::Path,
    create: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::ByteString;
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let restore = |s: &Secret| -> anyhow::Result<()> {
        std::fs::create_dir_all(state_dir)?;
        for f in CA_FILES {
            if let Some(b) = s.data.as_ref().and_then(|d| d.get(f)) {
                identity::ca::write_private(&state_dir.join(f), &String::from_utf8_lossy(&b.0))?;
            }
        }
        Ok(())
    };
    if let Some(s) = api.get_opt(CA_SECRET).await? {
        tracing::info!(secret = CA_SECRET, %namespace, "CA restored from its Secret");
        return restore(&s);
    }
    create()?;
    let mut data = BTreeMap::new();
    for f in CA_FILES {
        if let Ok(text) = std::fs::read(state_dir.join(f)) {
            data.insert(f.to_string(), ByteString(text));
        }
    }
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(CA_SECRET.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = CA_SECRET, %namespace, "CA stored in its Secret");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let s = api.get(CA_SECRET).await?;
            restore(&s)
        }
        Err(e) => Err(e.into()),
    }
}
