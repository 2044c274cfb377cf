//! The user's Kubernetes YAML, as the local mesh reads it: Deployments and Pods become pods
//! to run (with the program each container runs), everything else goes to the control plane
//! as is (Services get a cluster IP when they have none).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// A workload to run: a Deployment's pod template (with its replica count) or a bare Pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// `Deployment` or `Pod`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub replicas: u32,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub service_account: String,
    /// A node the template asks for (`spec.nodeName`).
    pub node_name: Option<String>,
    pub containers: Vec<ContainerPlan>,
    /// The LoadBalancer Service (in the workload's namespace) its pods stand behind: the
    /// first pod gets an address reachable from the machine, published as the Service's
    /// `status.loadBalancer` (an ingress gateway's).
    pub load_balancer: Option<String>,
}

/// One container: the process that stands for it and its ports.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerPlan {
    pub name: String,
    pub image: String,
    pub program: Program,
    pub env: Vec<(String, String)>,
    pub ports: Vec<u16>,
}

/// What runs for a container. Processes run on this machine (no images): a bundled app for
/// the bookinfo sample images, or the container's own command.
#[derive(Debug, Clone, PartialEq)]
pub enum Program {
    App {
        name: String,
        version: String,
        port: u16,
    },
    Command(Vec<String>),
    /// The `waypoint` binary, for a Gateway of class `istio-waypoint`.
    Waypoint,
    /// `waypoint gateway`, the ingress gateway: for a Gateway of class `istio`, and the
    /// mesh's default `istio-system/istio-ingressgateway`.
    Gateway,
}

impl Program {
    /// Whether it is one of Keelson's proxies (it gets a token for its own service account
    /// and the control plane's address).
    pub fn is_proxy(&self) -> bool {
        matches!(self, Program::Waypoint | Program::Gateway)
    }
}

/// A resource handed to the control plane.
#[derive(Debug, Clone)]
pub struct Resource {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub value: serde_yaml::Value,
}

impl Resource {
    /// `kind/namespace/name`, the identity `apply` and `delete` go by.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.kind,
            self.namespace.as_deref().unwrap_or("-"),
            self.name
        )
    }
}

#[derive(Debug, Default)]
pub struct Manifest {
    pub workloads: Vec<Workload>,
    pub resources: Vec<Resource>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    #[serde(default)]
    service_account_name: Option<String>,
    #[serde(default)]
    service_account: Option<String>,
    #[serde(default)]
    node_name: Option<String>,
    #[serde(default)]
    host_network: bool,
    #[serde(default)]
    containers: Vec<Container>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    name: String,
    #[serde(default)]
    image: String,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    #[serde(default)]
    ports: Vec<Port>,
}

#[derive(Deserialize)]
struct EnvVar {
    name: String,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Port {
    container_port: u16,
}

#[derive(Deserialize)]
struct PodDoc {
    metadata: Meta,
    #[serde(default)]
    spec: PodSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeploymentDoc {
    metadata: Meta,
    spec: DeploymentSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeploymentSpec {
    #[serde(default)]
    replicas: Option<u32>,
    #[serde(default)]
    selector: Option<Selector>,
    template: Template,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Selector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Template {
    #[serde(default)]
    metadata: Meta,
    spec: PodSpec,
}

/// The bundled app standing for a bookinfo sample image
/// (`docker.io/istio/examples-bookinfo-reviews-v2:1.20.2` → reviews v2).
pub fn bundled_app(image: &str) -> Option<(String, String)> {
    let last = image.rsplit('/').next()?;
    let tag = last
        .split('@')
        .next()
        .and_then(|l| l.split_once(':'))
        .map(|(_, t)| t);
    let last = last.split(['@', ':']).next()?;
    // The weather demo's images: `keelson/weather-<app>:<version>`.
    if let Some(app) = last.strip_prefix("weather-") {
        let known = ["frontend", "advertisement", "forecast", "recommendation"];
        let version = tag.filter(|t| t.starts_with('v')).unwrap_or("v1");
        return known.contains(&app).then(|| (app.into(), version.into()));
    }
    // httpbin (kennethreitz/httpbin, kong/httpbin, mccutchen/go-httpbin), and fortio's
    // image standing for an echo server (the walkthroughs run `fortio load` from it).
    if last.contains("httpbin") {
        return Some(("httpbin".into(), "v1".into()));
    }
    if last == "fortio" {
        return Some(("echo".into(), "v1".into()));
    }
    // The OpenTelemetry collector's images: the bundled OTLP receiver, which logs spans.
    if last.starts_with("opentelemetry-collector") {
        return Some(("collector".into(), "v1".into()));
    }
    let rest = last.strip_prefix("examples-bookinfo-")?;
    let (app, version) = rest.rsplit_once('-')?;
    let known = ["productpage", "details", "reviews", "ratings"];
    (known.contains(&app) && version.starts_with('v')).then(|| (app.into(), version.into()))
}

fn plan_container(c: Container, owner: &str) -> Result<ContainerPlan, String> {
    let ports: Vec<u16> = c.ports.iter().map(|p| p.container_port).collect();
    let program = if !c.command.is_empty() {
        Program::Command(c.command.into_iter().chain(c.args).collect())
    } else if let Some((name, version)) = bundled_app(&c.image) {
        Program::App {
            name,
            version,
            port: ports.first().copied().unwrap_or(9080),
        }
    } else {
        return Err(format!(
            "{owner}: container {:?}: image {:?} has no bundled equivalent and the container \
             has no command (processes run on this machine: give a command, or use a bookinfo \
             sample image)",
            c.name, c.image
        ));
    };
    Ok(ContainerPlan {
        name: c.name,
        image: c.image,
        program,
        env: c
            .env
            .into_iter()
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect(),
        ports,
    })
}

fn workload(
    kind: &str,
    meta: Meta,
    spec: PodSpec,
    replicas: u32,
    template_meta: Meta,
) -> Result<Workload, String> {
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let owner = format!("{kind} {namespace}/{}", meta.name);
    if meta.name.is_empty() {
        return Err(format!("{kind}: metadata.name is missing"));
    }
    if spec.host_network {
        return Err(format!(
            "{owner}: hostNetwork pods are not supported by the local mesh"
        ));
    }
    if spec.containers.is_empty() {
        return Err(format!("{owner}: spec.containers is empty"));
    }
    let containers = spec
        .containers
        .into_iter()
        .map(|c| plan_container(c, &owner))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Workload {
        kind: kind.into(),
        namespace,
        name: meta.name,
        replicas,
        labels: template_meta.labels,
        annotations: template_meta.annotations,
        service_account: spec
            .service_account_name
            .or(spec.service_account)
            .unwrap_or_else(|| "default".into()),
        node_name: spec.node_name,
        containers,
        load_balancer: None,
    })
}

impl Manifest {
    /// Every YAML file of `path` (a file, or a directory read recursively in name order).
    pub fn load(path: &Path) -> Result<Manifest> {
        let mut files = Vec::new();
        collect(path, &mut files)?;
        if files.is_empty() {
            bail!("no .yaml or .yml files in {}", path.display());
        }
        let mut m = Manifest::default();
        for f in files {
            let text =
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            m.add_text(&f.display().to_string(), &text)?;
        }
        Ok(m)
    }

    /// Adds the documents of one file; an error names the file, the document and the field.
    pub fn add_text(&mut self, file: &str, text: &str) -> Result<()> {
        for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = serde_yaml::Value::deserialize(de)
                .map_err(|e| anyhow::anyhow!("{file}: document {}: {e}", i + 1))?;
            if value.is_null() {
                continue;
            }
            let text = |v: &serde_yaml::Value| v.as_str().map(str::to_string);
            let kind = value.get("kind").and_then(text).unwrap_or_default();
            let meta = value.get("metadata");
            let name = meta.and_then(|m| m.get("name")).and_then(text);
            let namespace = meta.and_then(|m| m.get("namespace")).and_then(text);
            let doc = Resource {
                kind,
                namespace,
                name: name.unwrap_or_default(),
                value,
            };
            if doc.kind.is_empty() {
                bail!("{file}: document {}: no kind", i + 1);
            }
            self.add_document(file, doc)?;
        }
        Ok(())
    }

    /// Adds one document: a workload (Deployment, Pod), a waypoint Gateway (and what it
    /// deploys), or a resource for the control plane, checked now with the control plane's
    /// own reader so a bad policy is reported before anything is built.
    fn add_document(&mut self, file: &str, doc: Resource) -> Result<()> {
        let err = |e: String| anyhow::anyhow!("{file}: {} {}: {e}", doc.kind, doc.name);
        match doc.kind.as_str() {
            "Deployment" => {
                let d: DeploymentDoc =
                    serde_yaml::from_value(doc.value.clone()).map_err(|e| err(e.to_string()))?;
                if let Some(sel) = &d.spec.selector {
                    for (k, v) in &sel.match_labels {
                        if d.spec.template.metadata.labels.get(k) != Some(v) {
                            return Err(err(format!(
                                "spec.selector.matchLabels {k}={v} does not match the template's labels"
                            )));
                        }
                    }
                }
                let replicas = d.spec.replicas.unwrap_or(1);
                let mut meta = d.metadata;
                meta.labels.clear();
                let w = workload(
                    "Deployment",
                    meta,
                    d.spec.template.spec,
                    replicas,
                    d.spec.template.metadata,
                )
                .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
                self.workloads.push(w);
            }
            "Pod" => {
                let p: PodDoc =
                    serde_yaml::from_value(doc.value.clone()).map_err(|e| err(e.to_string()))?;
                let template = Meta {
                    labels: p.metadata.labels.clone(),
                    annotations: p.metadata.annotations.clone(),
                    ..Meta::default()
                };
                let w = workload("Pod", p.metadata, p.spec, 1, template)
                    .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
                self.workloads.push(w);
            }
            _ => {
                let text = serde_yaml::to_string(&doc.value)?;
                resources::Resources::default()
                    .add_text(file, &text)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let waypoint = doc.kind == "Gateway"
                    && doc
                        .value
                        .get("spec")
                        .and_then(|s| s.get("gatewayClassName"))
                        .and_then(|c| c.as_str())
                        == Some(resources::WAYPOINT_CLASS);
                if waypoint {
                    let ns = doc.namespace.as_deref().unwrap_or("default");
                    self.add_waypoint(&doc.name, ns)?;
                }
                let class = doc
                    .value
                    .get("spec")
                    .and_then(|s| s.get("gatewayClassName"))
                    .and_then(|c| c.as_str());
                let gateway_api = doc
                    .value
                    .get("apiVersion")
                    .and_then(|v| v.as_str())
                    .is_some_and(|v| v.starts_with("gateway.networking.k8s.io/"));
                if doc.kind == "Gateway" && gateway_api && class == Some(l7::gateway::GATEWAY_CLASS)
                {
                    let ns = doc.namespace.as_deref().unwrap_or("default");
                    let ports: Vec<u16> = doc.value["spec"]["listeners"]
                        .as_sequence()
                        .map(|ls| {
                            ls.iter()
                                .filter_map(|l| l["port"].as_u64())
                                .filter_map(|p| u16::try_from(p).ok())
                                .collect()
                        })
                        .unwrap_or_default();
                    self.add_ingress_gateway(&doc.name, ns, &ports)?;
                }
                self.resources.push(doc);
            }
        }
        Ok(())
    }
}

impl Manifest {
    /// What a waypoint Gateway deploys (as istiod's deployment controller does): a pod
    /// running the waypoint as the Gateway's own service account, outside the mesh's
    /// capture, and a Service on 15008 that WDS names the waypoint by.
    fn add_waypoint(&mut self, gateway: &str, namespace: &str) -> Result<()> {
        let label = resources::labels::GATEWAY_NAME;
        let labels: BTreeMap<String, String> = [
            (label.to_string(), gateway.to_string()),
            (
                resources::labels::DATAPLANE_MODE.to_string(),
                "none".to_string(),
            ),
        ]
        .into();
        self.workloads.push(Workload {
            kind: "Gateway".into(),
            namespace: namespace.into(),
            name: gateway.into(),
            replicas: 1,
            labels,
            annotations: BTreeMap::new(),
            service_account: gateway.into(),
            node_name: None,
            containers: vec![ContainerPlan {
                name: "istio-proxy".into(),
                image: "keelson/waypoint".into(),
                program: Program::Waypoint,
                env: Vec::new(),
                ports: vec![15008],
            }],
            load_balancer: None,
        });
        for yaml in [
            format!("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {gateway}\n  namespace: {namespace}\n"),
            format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: {gateway}\n  namespace: {namespace}\n  labels:\n    {label}: {gateway}\nspec:\n  selector:\n    {label}: {gateway}\n  ports:\n  - name: mesh\n    port: 15008\n"
            ),
        ] {
            let value: serde_yaml::Value = serde_yaml::from_str(&yaml)?;
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            self.resources.push(Resource {
                kind,
                namespace: Some(namespace.into()),
                name: gateway.into(),
                value,
            });
        }
        Ok(())
    }
}

impl Manifest {
    /// What a Gateway of class `istio` deploys (as istiod's deployment controller does):
    /// a pod `<name>-istio` running the ingress gateway as its own service account, outside
    /// the capture, and a LoadBalancer Service of the same name on the listeners' ports.
    fn add_ingress_gateway(&mut self, gateway: &str, namespace: &str, ports: &[u16]) -> Result<()> {
        let name = format!("{gateway}-istio");
        let label = resources::labels::GATEWAY_NAME;
        let mut service_ports = String::new();
        let mut seen = std::collections::BTreeSet::new();
        for p in ports.iter().filter(|p| seen.insert(**p)) {
            service_ports.push_str(&format!("  - name: port-{p}\n    port: {p}\n"));
        }
        self.add_gateway_objects(
            &name,
            namespace,
            &[(label, gateway)],
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels:\n    {label}: {gateway}\nspec:\n  type: LoadBalancer\n  selector:\n    {label}: {gateway}\n  ports:\n{service_ports}"
            ),
        )
    }

    /// The mesh's default ingress gateway, as Istio's install makes it: the pods
    /// `istio-system/istio-ingressgateway` (labels `istio: ingressgateway`, `app:
    /// istio-ingressgateway`), which Istio Gateways select and which serve every Ingress of
    /// class `istio`, behind a LoadBalancer Service whose ports 80 and 443 go to 8080 and
    /// 8443 (so a Gateway server on port 80 or 8080 both answer `$GATEWAY_URL`).
    pub fn add_default_ingress(&mut self) -> Result<()> {
        let (ns, name) = (INGRESS_NAMESPACE, INGRESS_NAME);
        let namespace: serde_yaml::Value = serde_yaml::from_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"
        ))?;
        if !self
            .resources
            .iter()
            .any(|r| r.kind == "Namespace" && r.name == ns)
        {
            self.resources.push(Resource {
                kind: "Namespace".into(),
                namespace: None,
                name: ns.into(),
                value: namespace,
            });
        }
        let labels = l7::gateway::INGRESS_LABELS;
        self.add_gateway_objects(
            name,
            ns,
            &labels,
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{istio: ingressgateway, app: {name}}}\nspec:\n  type: LoadBalancer\n  selector: {{istio: ingressgateway}}\n  ports:\n  - {{name: status-port, port: 15021, targetPort: 15021}}\n  - {{name: http2, port: 80, targetPort: 8080}}\n  - {{name: https, port: 443, targetPort: 8443}}\n"
            ),
        )
    }

    /// An ingress gateway's pod template, service account and Service.
    fn add_gateway_objects(
        &mut self,
        name: &str,
        namespace: &str,
        labels: &[(&str, &str)],
        service: &str,
    ) -> Result<()> {
        let mut all: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.insert(resources::labels::DATAPLANE_MODE.into(), "none".into());
        let account = if name == INGRESS_NAME {
            format!("{name}-service-account")
        } else {
            name.to_string()
        };
        self.workloads.push(Workload {
            kind: "Deployment".into(),
            namespace: namespace.into(),
            name: name.into(),
            replicas: 1,
            labels: all,
            annotations: BTreeMap::new(),
            service_account: account.clone(),
            node_name: None,
            containers: vec![ContainerPlan {
                name: "istio-proxy".into(),
                image: "keelson/waypoint".into(),
                program: Program::Gateway,
                env: Vec::new(),
                // Its readiness port: the listeners come with the gateways it serves.
                ports: vec![15021],
            }],
            load_balancer: Some(name.into()),
        });
        for yaml in [
            format!("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {account}\n  namespace: {namespace}\n"),
            service.to_string(),
        ] {
            let value: serde_yaml::Value = serde_yaml::from_str(&yaml)?;
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            let name = value["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            self.resources.push(Resource {
                kind,
                namespace: Some(namespace.into()),
                name,
                value,
            });
        }
        Ok(())
    }
}

impl Manifest {
    /// An add-on of the mesh (Prometheus): one pod outside the capture, its service
    /// account, and a LoadBalancer Service `service` in front of it (address from this
    /// machine).
    pub fn add_addon(
        &mut self,
        namespace: &str,
        name: &str,
        container: ContainerPlan,
        service: &str,
    ) -> Result<()> {
        let mut labels = BTreeMap::new();
        labels.insert("app".to_string(), name.to_string());
        labels.insert(resources::labels::DATAPLANE_MODE.into(), "none".into());
        self.workloads.push(Workload {
            kind: "Deployment".into(),
            namespace: namespace.into(),
            name: name.into(),
            replicas: 1,
            labels,
            annotations: BTreeMap::new(),
            service_account: name.into(),
            node_name: None,
            containers: vec![container],
            load_balancer: Some(name.into()),
        });
        for yaml in [
            format!("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"),
            service.to_string(),
        ] {
            let value: serde_yaml::Value = serde_yaml::from_str(&yaml)?;
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            self.resources.push(Resource {
                kind,
                namespace: Some(namespace.into()),
                name: name.into(),
                value,
            });
        }
        Ok(())
    }
}

/// The default ingress gateway's namespace and name.
pub const INGRESS_NAMESPACE: &str = "istio-system";
pub const INGRESS_NAME: &str = "istio-ingressgateway";

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for e in entries {
        if e.is_dir() {
            collect(&e, out)?;
        } else if e.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_images_map_to_bundled_apps() {
        assert_eq!(
            bundled_app("docker.io/istio/examples-bookinfo-reviews-v2:1.20.2"),
            Some(("reviews".into(), "v2".into()))
        );
        assert_eq!(
            bundled_app("examples-bookinfo-productpage-v1"),
            Some(("productpage".into(), "v1".into()))
        );
        assert_eq!(bundled_app("nginx:1.25"), None);
        assert_eq!(
            bundled_app("otel/opentelemetry-collector-contrib:0.114.0"),
            Some(("collector".into(), "v1".into()))
        );
        assert_eq!(
            bundled_app("keelson/weather-forecast:v2"),
            Some(("forecast".into(), "v2".into()))
        );
        assert_eq!(
            bundled_app("docker.io/kong/httpbin:0.1.0"),
            Some(("httpbin".into(), "v1".into()))
        );
        assert_eq!(bundled_app("examples-bookinfo-mongodb-v1"), None);
    }

    #[test]
    fn the_bundled_bookinfo_is_read() {
        let mut m = Manifest::default();
        m.add_text("bookinfo.yaml", super::super::BOOKINFO).unwrap();
        let names: Vec<&str> = m.workloads.iter().map(|w| w.name.as_str()).collect();
        assert!(
            names.contains(&"reviews-v3") && names.contains(&"curl"),
            "{names:?}"
        );
        let reviews = m.workloads.iter().find(|w| w.name == "reviews-v2").unwrap();
        assert_eq!(reviews.labels["version"], "v2");
        assert_eq!(reviews.service_account, "bookinfo-reviews");
        assert!(
            matches!(&reviews.containers[0].program, Program::App { name, version, port: 9080 } if name == "reviews" && version == "v2")
        );
        assert!(m
            .resources
            .iter()
            .any(|r| r.kind == "Service" && r.name == "productpage"));
    }

    #[test]
    fn errors_name_the_file_and_the_resource() {
        let mut m = Manifest::default();
        let e = m
            .add_text(
                "web.yaml",
                "kind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    spec:\n      containers: [{name: web, image: nginx}]\n",
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("web.yaml") && e.contains("Deployment default/web") && e.contains("nginx"),
            "{e}"
        );
        let e = m
            .add_text(
                "p.yaml",
                "kind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  rules: [{from: [{source: {ipBlocks: [bogus]}}]}]\n",
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.yaml") && e.contains("ipBlocks"), "{e}");
    }
}
