//! The node agent's view of pods and namespaces on a cluster (`keelson-cni agent
//! --kubernetes`): each pod the runtime adds is read from the API server, with its
//! namespace, when the CNI call comes (its labels decide enrolment, its status its
//! address). The agent's threads are not async: the requests run on a small runtime of
//! their own and the caller waits for the answer.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1 as k8s;
use kube::api::Api;
use kube::Client;
use resources::{Namespace, Pod, Resources};

/// How long one lookup may take: the runtime's CNI timeout is longer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the API server is.
#[derive(Debug, Clone, Default)]
pub struct ApiOptions {
    /// A kubeconfig; `None`: `KUBECONFIG`, `~/.kube/config` or the in-cluster account.
    pub kubeconfig: Option<PathBuf>,
}

pub struct ApiLookup {
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl ApiLookup {
    pub fn new(opts: &ApiOptions) -> anyhow::Result<ApiLookup> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let kubeconfig = opts.kubeconfig.clone();
        let client = wait(&runtime, async move {
            let config = match kubeconfig {
                Some(path) => {
                    let kc = kube::config::Kubeconfig::read_from(&path)?;
                    kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
                }
                None => kube::Config::infer().await?,
            };
            anyhow::Ok(Client::try_from(config)?)
        })
        .context("the API server client")??;
        Ok(ApiLookup { runtime, client })
    }

    /// The pod `namespace/name` and its namespace, as the resource model reads them.
    pub fn pod(&self, namespace: &str, name: &str) -> Result<(Pod, Option<Namespace>), String> {
        let client = self.client.clone();
        let (ns, name) = (namespace.to_string(), name.to_string());
        let (pod, namespace) = wait(&self.runtime, async move {
            let pod = Api::<k8s::Pod>::namespaced(client.clone(), &ns)
                .get(&name)
                .await
                .map_err(|e| format!("pod {ns}/{name}: {e}"))?;
            let namespace = Api::<k8s::Namespace>::all(client)
                .get_opt(&ns)
                .await
                .map_err(|e| format!("namespace {ns}: {e}"))?;
            Ok::<_, String>((pod, namespace))
        })
        .map_err(|e| e.to_string())??;
        let mut res = Resources::default();
        add(&mut res, "Pod", &pod)?;
        if let Some(n) = &namespace {
            add(&mut res, "Namespace", n)?;
        }
        let pod = res.pods.pop().ok_or("the pod did not read")?;
        Ok((pod, res.namespaces.pop()))
    }
}

/// Adds a typed API object to `res` through the model's own reader.
fn add<T: serde::Serialize>(res: &mut Resources, kind: &str, o: &T) -> Result<(), String> {
    let mut v = serde_json::to_value(o).map_err(|e| e.to_string())?;
    v["apiVersion"] = "v1".into();
    v["kind"] = kind.into();
    let v = serde_yaml::to_value(v).map_err(|e| e.to_string())?;
    res.add_value("kubernetes", v).map_err(|e| e.to_string())
}

/// Runs `f` on `rt` and waits for it from any thread (also one inside another runtime).
fn wait<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv_timeout(TIMEOUT)
        .map_err(|_| anyhow::anyhow!("no answer from the API server within {TIMEOUT:?}"))
}
