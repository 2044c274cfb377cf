//! `keelson install --apply` and `keelson uninstall --apply`: the same objects, applied to
//! (or deleted from) the cluster through the API server with server-side apply (field
//! manager `keelson-install`), in order; the first failure stops and is reported with the
//! object it was.

use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use kube::Client;

use super::Object;

/// The field manager of the install's writes.
pub const MANAGER: &str = "keelson-install";

/// The API resource, namespace and JSON of `o`.
fn parts(o: &Object) -> anyhow::Result<(ApiResource, Option<String>, serde_json::Value)> {
    let yaml = o.to_yaml()?;
    let v: serde_json::Value = serde_yaml::from_str(&yaml)?;
    let api_version = v["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let kind = v["kind"].as_str().unwrap_or_default();
    let plural = match kind {
        "PodDisruptionBudget" => "poddisruptionbudgets".to_string(),
        k => format!("{}s", k.to_lowercase()),
    };
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural);
    let ns = v["metadata"]["namespace"].as_str().map(str::to_string);
    Ok((ar, ns, v))
}

fn api(client: &Client, ar: &ApiResource, ns: Option<&str>) -> Api<DynamicObject> {
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    }
}

/// Applies every object, printing each as it is done.
pub async fn apply(client: &Client, objects: &[Object]) -> anyhow::Result<()> {
    let params = PatchParams::apply(MANAGER).force();
    for o in objects {
        let (ar, ns, v) = parts(o)?;
        let name = v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        api(client, &ar, ns.as_deref())
            .patch(&name, &params, &Patch::Apply(&v))
            .await
            .map_err(|e| anyhow::anyhow!("applying {}: {e}", o.describe()))?;
        println!("applied {}", o.describe());
    }
    Ok(())
}

/// Deletes every object (already gone is fine), printing each.
pub async fn delete(client: &Client, objects: &[Object]) -> anyhow::Result<()> {
    for o in objects {
        let (ar, ns, v) = parts(o)?;
        let name = v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match api(client, &ar, ns.as_deref())
            .delete(&name, &DeleteParams::default())
            .await
        {
            Ok(_) => println!("deleted {}", o.describe()),
            Err(kube::Error::Api(e)) if e.code == 404 => println!("absent {}", o.describe()),
            Err(e) => anyhow::bail!("deleting {}: {e}", o.describe()),
        }
    }
    Ok(())
}
