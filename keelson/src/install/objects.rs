//! Every object `keelson install` puts on a cluster, built from `k8s-openapi` types. The
//! ports, paths and environment variables come from the binaries' own constants, so the
//! manifests and the binaries cannot drift apart (the tests read them back and check).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    ExecAction, HTTPGetAction, HostPathVolumeSource, Lifecycle, LifecycleHandler, Namespace,
    ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource,
    ResourceRequirements, SecurityContext, Service, ServiceAccount, ServiceAccountTokenProjection,
    ServicePort, ServiceSpec, Toleration, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proxycore::config as zt;
use resources::kinds::{ApiKind, ApiWrite};

use super::values::{Mode, Resources, Values};

/// The control plane's names: its Deployment, Service, ServiceAccount and RBAC.
pub const CONTROL_PLANE: &str = "keelson";
pub const ZTUNNEL: &str = "ztunnel";
pub const CNI: &str = "keelson-cni";
/// The ConfigMap the control plane publishes its root certificate in.
pub const ROOT_CERT_CONFIG_MAP: &str = "keelson-ca-root-cert";
/// The xDS and CA port, and the monitoring port (`/metrics`, `/ready`).
pub const XDS_PORT: u16 = 15012;
pub const MONITORING_PORT: u16 = controlplane::run::DEFAULT_MONITORING_PORT;
/// Where the node agent's socket lives, on the node and in the agent's pod.
pub const AGENT_SOCKET_DIR: &str = "/var/run/keelson";
/// The control plane's state directory (its CA files), a writable volume.
pub const STATE_DIR: &str = "/var/lib/keelson";
/// The audience of the tokens proxies present to xDS and the CA.
pub const TOKEN_AUDIENCE: &str = "istio-ca";

/// One object of the install, kept typed.
#[derive(Debug, Clone)]
pub enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
    Deployment(Deployment),
    Service(Service),
    PodDisruptionBudget(PodDisruptionBudget),
    DaemonSet(DaemonSet),
}

impl Object {
    /// `Kind namespace/name` (cluster-scoped objects have no namespace).
    pub fn describe(&self) -> String {
        let (kind, meta) = match self {
            Object::Namespace(o) => ("Namespace", &o.metadata),
            Object::ServiceAccount(o) => ("ServiceAccount", &o.metadata),
            Object::ClusterRole(o) => ("ClusterRole", &o.metadata),
            Object::ClusterRoleBinding(o) => ("ClusterRoleBinding", &o.metadata),
            Object::Role(o) => ("Role", &o.metadata),
            Object::RoleBinding(o) => ("RoleBinding", &o.metadata),
            Object::Deployment(o) => ("Deployment", &o.metadata),
            Object::Service(o) => ("Service", &o.metadata),
            Object::PodDisruptionBudget(o) => ("PodDisruptionBudget", &o.metadata),
            Object::DaemonSet(o) => ("DaemonSet", &o.metadata),
        };
        let name = meta.name.as_deref().unwrap_or_default();
        match &meta.namespace {
            Some(ns) => format!("{kind} {ns}/{name}"),
            None => format!("{kind} {name}"),
        }
    }

    /// The object as YAML, with its `apiVersion` and `kind`.
    pub fn to_yaml(&self) -> Result<String, serde_yaml::Error> {
        match self {
            Object::Namespace(o) => serde_yaml::to_string(o),
            Object::ServiceAccount(o) => serde_yaml::to_string(o),
            Object::ClusterRole(o) => serde_yaml::to_string(o),
            Object::ClusterRoleBinding(o) => serde_yaml::to_string(o),
            Object::Role(o) => serde_yaml::to_string(o),
            Object::RoleBinding(o) => serde_yaml::to_string(o),
            Object::Deployment(o) => serde_yaml::to_string(o),
            Object::Service(o) => serde_yaml::to_string(o),
            Object::PodDisruptionBudget(o) => serde_yaml::to_string(o),
            Object::DaemonSet(o) => serde_yaml::to_string(o),
        }
    }
}

/// Everything the install creates, in the order to apply it.
pub fn all(v: &Values) -> Vec<Object> {
    let mut out = vec![Object::Namespace(Namespace {
        metadata: meta(None, &v.namespace),
        ..Default::default()
    })];
    if v.mode == Mode::Keelson {
        out.extend(control_plane(v));
    }
    out.push(Object::ServiceAccount(service_account(v, ZTUNNEL)));
    out.push(Object::DaemonSet(ztunnel(v)));
    out.push(Object::ServiceAccount(service_account(v, CNI)));
    out.push(Object::ClusterRole(cluster_role(
        CNI,
        resources::kinds::AGENT_READ,
        resources::kinds::AGENT_VERBS,
        &[],
    )));
    out.push(Object::ClusterRoleBinding(binding(v, CNI)));
    out.push(Object::DaemonSet(cni(v)));
    if v.mode == Mode::Keelson && v.ingress_gateway.enabled {
        out.extend(ingress_gateway(v));
    }
    out
}

/// The default ingress gateway, as the control plane's controller builds a gateway's
/// objects (`controlplane::waypoints::default_ingress_gateway_objects`), typed here.
fn ingress_gateway(v: &Values) -> Vec<Object> {
    let settings = controlplane::waypoints::WaypointSettings {
        image: v.image("waypoint"),
        control_plane: format!("{CONTROL_PLANE}.{}.svc:{XDS_PORT}", v.namespace),
        root_cert_config_map: ROOT_CERT_CONFIG_MAP.into(),
        namespace: v.namespace.clone(),
        roots_pem: String::new(),
    };
    controlplane::waypoints::default_ingress_gateway_objects(
        &settings,
        &v.namespace,
        v.ingress_gateway.replicas,
    )
    .into_iter()
    .filter_map(|(ar, obj)| {
        // Built from literals of these very types: they always read back.
        let typed = match ar.kind.as_str() {
            "ServiceAccount" => Object::ServiceAccount(serde_json::from_value(obj).ok()?),
            "Deployment" => Object::Deployment(serde_json::from_value(obj).ok()?),
            "Service" => Object::Service(serde_json::from_value(obj).ok()?),
            _ => return None,
        };
        Some(typed)
    })
    .collect()
}

/// The control plane: its identity, permissions, Deployment, Service and disruption budget.
fn control_plane(v: &Values) -> Vec<Object> {
    vec![
        Object::ServiceAccount(service_account(v, CONTROL_PLANE)),
        Object::ClusterRole(cluster_role(
            CONTROL_PLANE,
            resources::kinds::READ,
            resources::kinds::READ_VERBS,
            resources::kinds::WRITE,
        )),
        Object::ClusterRoleBinding(binding(v, CONTROL_PLANE)),
        Object::Role(Role {
            metadata: meta(Some(&v.namespace), CONTROL_PLANE),
            rules: own_namespace_role(CONTROL_PLANE, resources::kinds::WRITE).rules,
        }),
        Object::RoleBinding(RoleBinding {
            metadata: meta(Some(&v.namespace), CONTROL_PLANE),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: CONTROL_PLANE.into(),
            },
            subjects: binding(v, CONTROL_PLANE).subjects,
        }),
        Object::Deployment(control_plane_deployment(v)),
        Object::Service(Service {
            metadata: meta(Some(&v.namespace), CONTROL_PLANE),
            spec: Some(ServiceSpec {
                selector: Some(app(CONTROL_PLANE)),
                ports: Some(vec![
                    service_port("grpc-xds", XDS_PORT),
                    service_port("http-monitoring", MONITORING_PORT),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        Object::PodDisruptionBudget(PodDisruptionBudget {
            metadata: meta(Some(&v.namespace), CONTROL_PLANE),
            spec: Some(PodDisruptionBudgetSpec {
                // One replica may always be evicted (a node drain never blocks); with more,
                // one stays up.
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(selector(CONTROL_PLANE)),
                ..Default::default()
            }),
            ..Default::default()
        }),
    ]
}

fn control_plane_deployment(v: &Values) -> Deployment {
    let container = Container {
        name: "controlplane".into(),
        image: Some(v.image("keelson")),
        image_pull_policy: Some(v.image_pull_policy.clone()),
        args: Some(strings(&[
            "controlplane",
            "--kubernetes",
            "--state-dir",
            STATE_DIR,
            // The name proxies dial (XDS_ADDRESS): the serving certificate must carry it.
            "--san",
            &format!("{CONTROL_PLANE}.{}.svc", v.namespace),
            "--trust-domain",
            &v.trust_domain,
            "--cluster-id",
            &v.cluster_id,
            "--root-cert-config-map",
            ROOT_CERT_CONFIG_MAP,
            "--waypoint-image",
            &v.image("waypoint"),
        ])),
        env: Some(vec![field_env("POD_NAMESPACE", "metadata.namespace")]),
        ports: Some(vec![
            container_port("grpc-xds", XDS_PORT),
            container_port("http-monitoring", MONITORING_PORT),
        ]),
        readiness_probe: Some(http_probe("/ready", MONITORING_PORT)),
        resources: Some(requirements(&v.control_plane.resources)),
        volume_mounts: Some(vec![mount("state", STATE_DIR)]),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(strings(&["ALL"])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Deployment {
        metadata: meta(Some(&v.namespace), CONTROL_PLANE),
        spec: Some(DeploymentSpec {
            replicas: Some(v.control_plane.replicas),
            selector: selector(CONTROL_PLANE),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(app(CONTROL_PLANE)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(CONTROL_PLANE.into()),
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "state".into(),
                        empty_dir: Some(Default::default()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The ztunnel DaemonSet: shared mode, pods handed over by the node agent through the
/// socket directory both mount from the node.
fn ztunnel(v: &Values) -> DaemonSet {
    let ports = zt::Ports::default();
    let (xds, ca, root_map) = match v.mode {
        Mode::Keelson => {
            let cp = format!("{CONTROL_PLANE}.{}.svc:{XDS_PORT}", v.namespace);
            (cp.clone(), cp, ROOT_CERT_CONFIG_MAP.to_string())
        }
        Mode::Istiod => (
            v.istiod.xds_address.clone(),
            v.istiod.ca_address.clone(),
            v.istiod.root_cert_config_map.clone(),
        ),
    };
    let inpod_dir = parent(zt::DEFAULT_INPOD_UDS);
    let container = Container {
        name: "istio-proxy".into(),
        image: Some(v.image("ztunnel")),
        image_pull_policy: Some(v.image_pull_policy.clone()),
        args: Some(strings(&["proxy", "ztunnel"])),
        env: Some(vec![
            env(zt::PROXY_MODE, "shared"),
            env(zt::XDS_ADDRESS, &xds),
            env(zt::CA_ADDRESS, &ca),
            env(zt::CLUSTER_ID, &v.cluster_id),
            env(zt::INPOD_UDS, zt::DEFAULT_INPOD_UDS),
            env(zt::LOG_FORMAT, &v.ztunnel.log_format),
            env("RUST_LOG", &v.ztunnel.log_level),
            env(
                zt::TERMINATION_GRACE_PERIOD_SECONDS,
                &v.ztunnel.drain_seconds.to_string(),
            ),
            field_env(zt::NODE_NAME, "spec.nodeName"),
            field_env(zt::POD_NAME, "metadata.name"),
            field_env(zt::POD_NAMESPACE, "metadata.namespace"),
            field_env(zt::INSTANCE_IP, "status.podIP"),
        ]),
        ports: Some(vec![
            container_port("hbone", ports.inbound_hbone),
            container_port("http-monitoring", ports.metrics),
            container_port("http-ready", ports.readiness),
        ]),
        readiness_probe: Some(http_probe("/healthz/ready", ports.readiness)),
        resources: Some(requirements(&v.ztunnel.resources)),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(1337),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(strings(&["NET_ADMIN", "SYS_ADMIN", "NET_RAW"])),
                drop: Some(strings(&["ALL"])),
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            mount("ztunnel-socket", &inpod_dir),
            mount("istio-token", &parent(absolute(zt::DEFAULT_AUTH_TOKEN))),
            mount("root-cert", &parent(absolute(zt::DEFAULT_ROOT_CA))),
        ]),
        ..Default::default()
    };
    let volumes = vec![
        host_path("ztunnel-socket", &inpod_dir, "DirectoryOrCreate"),
        Volume {
            name: "istio-token".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(43_200),
                        path: file_name(zt::DEFAULT_AUTH_TOKEN),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "root-cert".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: root_map,
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    let (mut container, mut volumes) = (container, volumes);
    with_bpffs(v, &mut container, &mut volumes);
    daemon_set(
        v,
        ZTUNNEL,
        PodSpec {
            service_account_name: Some(ZTUNNEL.into()),
            // Long enough for open connections to finish while draining.
            termination_grace_period_seconds: Some(v.ztunnel.drain_seconds),
            containers: vec![container],
            volumes: Some(volumes),
            ..node_pod()
        },
    )
}

/// The CNI DaemonSet: an init step installs and chains the plugin, the agent enrols pods,
/// and stopping the agent unchains the plugin again.
fn cni(v: &Values) -> DaemonSet {
    let socket = format!("{AGENT_SOCKET_DIR}/cni.sock");
    let zds_dir = parent(zt::DEFAULT_INPOD_UDS);
    let (host_bin, host_conf) = ("/host/opt/cni/bin", "/host/etc/cni/net.d");
    let install = Container {
        name: "install-cni".into(),
        image: Some(v.image(CNI)),
        image_pull_policy: Some(v.image_pull_policy.clone()),
        args: Some(strings(&[
            "install",
            "--cni-bin-dir",
            host_bin,
            "--cni-conf-dir",
            host_conf,
            "--agent-socket",
            &socket,
        ])),
        volume_mounts: Some(vec![
            mount("cni-bin-dir", host_bin),
            mount("cni-net-dir", host_conf),
        ]),
        ..Default::default()
    };
    let agent = Container {
        name: "agent".into(),
        image: Some(v.image(CNI)),
        image_pull_policy: Some(v.image_pull_policy.clone()),
        args: Some(strings(&[
            "agent",
            "--kubernetes",
            "--socket",
            &socket,
            "--zds-socket",
            zt::DEFAULT_INPOD_UDS,
            "--redirect",
            &v.cni.redirect,
            "--host-probe-snat",
        ])),
        env: Some(vec![field_env("NODE_NAME", "spec.nodeName")]),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(strings(&[
                        "/usr/local/bin/keelson-cni",
                        "uninstall",
                        "--cni-bin-dir",
                        host_bin,
                        "--cni-conf-dir",
                        host_conf,
                    ])),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        resources: Some(requirements(&v.cni.resources)),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                add: Some(strings(&["NET_ADMIN", "SYS_ADMIN", "NET_RAW"])),
                drop: Some(strings(&["ALL"])),
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            mount("cni-bin-dir", host_bin),
            mount("cni-net-dir", host_conf),
            mount("agent-socket", AGENT_SOCKET_DIR),
            mount("ztunnel-socket", &zds_dir),
            VolumeMount {
                mount_propagation: Some("HostToContainer".into()),
                ..mount("netns", "/var/run/netns")
            },
        ]),
        ..Default::default()
    };
    let mut agent = agent;
    let mut volumes = vec![
        host_path("cni-bin-dir", &v.cni.bin_dir, "DirectoryOrCreate"),
        host_path("cni-net-dir", &v.cni.conf_dir, "DirectoryOrCreate"),
        host_path("agent-socket", AGENT_SOCKET_DIR, "DirectoryOrCreate"),
        host_path("ztunnel-socket", &zds_dir, "DirectoryOrCreate"),
        host_path("netns", "/var/run/netns", "DirectoryOrCreate"),
    ];
    with_bpffs(v, &mut agent, &mut volumes);
    daemon_set(
        v,
        CNI,
        PodSpec {
            service_account_name: Some(CNI.into()),
            // The agent writes the node's probe rules and reads pod namespaces by their
            // host paths.
            host_network: Some(true),
            init_containers: Some(vec![install]),
            containers: vec![agent],
            volumes: Some(volumes),
            ..node_pod()
        },
    )
}

/// With eBPF redirection, the agent pins each pod's program under the node's bpffs and
/// ztunnel opens the pins there (docs/KUBERNETES.md, "eBPF redirection"): both mount
/// /sys/fs/bpf and are told where the pins go.
fn with_bpffs(v: &Values, container: &mut Container, volumes: &mut Vec<Volume>) {
    if v.cni.redirect != "ebpf" {
        return;
    }
    container
        .env
        .get_or_insert_with(Vec::new)
        .push(env("KEELSON_BPF_ROOT", "/sys/fs/bpf/keelson"));
    container
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(VolumeMount {
            mount_propagation: Some("HostToContainer".into()),
            ..mount("bpffs", "/sys/fs/bpf")
        });
    volumes.push(host_path("bpffs", "/sys/fs/bpf", "Directory"));
}

/// What every per-node pod has: it runs on every node, before anything else is scheduled.
fn node_pod() -> PodSpec {
    PodSpec {
        priority_class_name: Some("system-node-critical".into()),
        tolerations: Some(vec![Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

fn daemon_set(v: &Values, name: &str, spec: PodSpec) -> DaemonSet {
    DaemonSet {
        metadata: meta(Some(&v.namespace), name),
        spec: Some(DaemonSetSpec {
            selector: selector(name),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(app(name)),
                    // Never captured by the mesh itself.
                    annotations: Some(BTreeMap::from([(
                        "ambient.istio.io/redirection".to_string(),
                        "disabled".to_string(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(spec),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A ClusterRole of `read_verbs` on each of `read` and the verbs of `write`, one rule per
/// API group and verb set.
pub fn cluster_role(
    name: &str,
    read: &[ApiKind],
    read_verbs: &[&str],
    write: &[ApiWrite],
) -> ClusterRole {
    let mut rules: BTreeMap<(String, Vec<String>), Vec<String>> = BTreeMap::new();
    for k in read {
        rules
            .entry((k.group.to_string(), strings(read_verbs)))
            .or_default()
            .push(k.plural.to_string());
    }
    for w in write.iter().filter(|w| !w.own_namespace) {
        rules
            .entry((w.group.to_string(), strings(w.verbs)))
            .or_default()
            .push(w.plural.to_string());
    }
    ClusterRole {
        metadata: meta(None, name),
        rules: Some(
            rules
                .into_iter()
                .map(|((group, verbs), mut resources)| {
                    resources.sort();
                    resources.dedup();
                    PolicyRule {
                        api_groups: Some(vec![group]),
                        resources: Some(resources),
                        verbs,
                        ..Default::default()
                    }
                })
                .collect(),
        ),
        ..Default::default()
    }
}

/// The writes of `write` confined to the control plane's own namespace, as rules (for its
/// Role).
fn own_namespace_role(name: &str, write: &[ApiWrite]) -> ClusterRole {
    let own: Vec<ApiWrite> = write.iter().filter(|w| w.own_namespace).copied().collect();
    let own: Vec<ApiWrite> = own
        .into_iter()
        .map(|w| ApiWrite {
            own_namespace: false,
            ..w
        })
        .collect();
    cluster_role(name, &[], &[], &own)
}

fn binding(v: &Values, name: &str) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(None, name),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: name.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: name.into(),
            namespace: Some(v.namespace.clone()),
            ..Default::default()
        }]),
    }
}

fn service_account(v: &Values, name: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(Some(&v.namespace), name),
        ..Default::default()
    }
}

fn meta(namespace: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(str::to_string),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/part-of".to_string(),
            "keelson".to_string(),
        )])),
        ..Default::default()
    }
}

fn app(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_string(), name.to_string())])
}

fn selector(name: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(app(name)),
        ..Default::default()
    }
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn field_env(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn service_port(name: &str, port: u16) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: i32::from(port),
        target_port: Some(IntOrString::Int(i32::from(port))),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn http_probe(path: &str, port: u16) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(port)),
            ..Default::default()
        }),
        period_seconds: Some(5),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

fn requirements(r: &Resources) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(r.cpu.clone())),
            ("memory".to_string(), Quantity(r.memory.clone())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity(r.memory_limit.clone()),
        )])),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..Default::default()
    }
}

fn host_path(name: &str, path: &str, kind: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some(kind.into()),
        }),
        ..Default::default()
    }
}

/// `./var/run/x` (relative to the image's `/`) as `/var/run/x`.
fn absolute(path: &str) -> &str {
    path.strip_prefix('.').unwrap_or(path)
}

fn parent(path: &str) -> String {
    std::path::Path::new(path)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn file_name(path: &str) -> String {
    std::path::Path::new(path)
        .file_name()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}
