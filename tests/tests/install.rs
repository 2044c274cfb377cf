//! `keelson install` through the real binary: its output parsed back into `k8s-openapi`
//! types and checked against what the binaries open and listen on, the RBAC against the
//! control plane's list of watched kinds, and the image build files against the workspace's
//! binaries.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, PodSpec, Service};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proxycore::config::{Config, Ports};

/// Runs `keelson ARGS`: (exit success, stdout, stderr).
fn keelson(args: &[&str]) -> (bool, String, String) {
    let bin = netns::find_binary("keelson").unwrap();
    let out = Command::new(bin).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The install's documents by `Kind/name`.
fn install(args: &[&str]) -> HashMap<String, serde_yaml::Value> {
    let mut full = vec!["install"];
    full.extend_from_slice(args);
    let (ok, out, err) = keelson(&full);
    assert!(ok, "{err}");
    let mut docs = HashMap::new();
    for doc in out.split("\n---\n").skip(1) {
        let v: serde_yaml::Value = serde_yaml::from_str(doc).unwrap();
        let key = format!(
            "{}/{}",
            v["kind"].as_str().unwrap(),
            v["metadata"]["name"].as_str().unwrap()
        );
        assert!(docs.insert(key.clone(), v).is_none(), "{key} twice");
    }
    docs
}

fn typed<T: serde::de::DeserializeOwned>(
    docs: &HashMap<String, serde_yaml::Value>,
    key: &str,
) -> T {
    let v = docs.get(key).unwrap_or_else(|| panic!("no {key}"));
    serde_yaml::from_value(v.clone()).unwrap()
}

fn pod(ds: &DaemonSet) -> PodSpec {
    ds.spec.clone().unwrap().template.spec.unwrap()
}

/// The host path behind the mount at (or above) `path` in `c`, and the mount's path.
fn host_path_of(spec: &PodSpec, c: &Container, path: &Path) -> Option<(String, PathBuf)> {
    let m = c
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| path.starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())?;
    let v = spec.volumes.iter().flatten().find(|v| v.name == m.name)?;
    let host = v.host_path.as_ref()?.path.clone();
    Some((host, PathBuf::from(&m.mount_path)))
}

/// Whether some mount of `c` holds `path`.
fn mounted(c: &Container, path: &Path) -> bool {
    c.volume_mounts
        .iter()
        .flatten()
        .any(|m| path.starts_with(&m.mount_path))
}

/// The value after `flag` in `args`.
fn arg<'a>(args: &'a [String], flag: &str) -> &'a str {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    &args[i + 1]
}

#[test]
fn ztunnel_daemon_set_mounts_what_it_opens_and_serves_its_ports() {
    let docs = install(&[]);
    let ds: DaemonSet = typed(&docs, "DaemonSet/ztunnel");
    let spec = pod(&ds);
    let c = &spec.containers[0];
    // The container's environment, as ztunnel reads it (field references filled in).
    let mut env: HashMap<String, String> = HashMap::new();
    for e in c.env.iter().flatten() {
        let v = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(_)) => format!("from-{}", e.name.to_lowercase()),
            _ => panic!("{} has no value", e.name),
        };
        env.insert(e.name.clone(), v);
    }
    env.insert("INSTANCE_IP".into(), "10.0.0.5".into());
    let cfg = Config::from_source(&env).expect("ztunnel accepts the DaemonSet's environment");
    assert_eq!(
        cfg.proxy_mode,
        proxycore::config::ProxyMode::Shared,
        "one ztunnel per node"
    );
    // Every file it opens is mounted: the ZDS socket from the node, the projected token,
    // the root certificate. Paths are relative to the image's `/`.
    let abs = |p: &Path| Path::new("/").join(p.strip_prefix(".").unwrap_or(p));
    let (zds_host, _) = host_path_of(&spec, c, &cfg.inpod_uds).expect("ZDS socket on a hostPath");
    let token_path = Path::new(&cfg.auth_token);
    assert!(mounted(c, &abs(token_path)), "{}", cfg.auth_token);
    for target in [cfg.xds.as_ref().unwrap(), cfg.ca.as_ref().unwrap()] {
        let root = &target.root_ca;
        assert!(mounted(c, &abs(root)), "{}", root.display());
    }
    let token = spec
        .volumes
        .iter()
        .flatten()
        .find_map(|v| {
            v.projected.as_ref()?.sources.as_ref()?[0]
                .service_account_token
                .clone()
        })
        .expect("a projected service-account token");
    assert_eq!(token.audience.as_deref(), Some("istio-ca"));
    assert_eq!(
        abs(token_path).file_name().unwrap().to_str(),
        Some(token.path.as_str())
    );
    // Ports and probes are the binary's.
    let ports = Ports::default();
    let declared: BTreeSet<i32> = c.ports.iter().flatten().map(|p| p.container_port).collect();
    let expected: BTreeSet<i32> = [ports.inbound_hbone, ports.metrics, ports.readiness]
        .map(i32::from)
        .into();
    assert_eq!(declared, expected);
    let probe = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.port, IntOrString::Int(i32::from(ports.readiness)));
    assert_eq!(probe.path.as_deref(), Some("/healthz/ready"));
    // Drain: the grace period is the drain deadline.
    assert_eq!(
        spec.termination_grace_period_seconds,
        Some(cfg.drain_deadline.as_secs() as i64)
    );
    let caps = c
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .clone()
        .unwrap();
    let added: BTreeSet<String> = caps.add.unwrap().into_iter().collect();
    assert_eq!(
        added,
        ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]
            .map(String::from)
            .into()
    );

    // The node agent hands pods over on the same node directory.
    let cni: DaemonSet = typed(&docs, "DaemonSet/keelson-cni");
    let cni_spec = pod(&cni);
    let agent = &cni_spec.containers[0];
    let args = agent.args.clone().unwrap();
    let zds = PathBuf::from(arg(&args, "--zds-socket"));
    let (agent_zds_host, agent_mount) = host_path_of(&cni_spec, agent, &zds).unwrap();
    let (_, zt_mount) = host_path_of(&spec, c, &cfg.inpod_uds).unwrap();
    assert_eq!(agent_zds_host, zds_host);
    assert_eq!(
        zds.strip_prefix(&agent_mount).unwrap(),
        cfg.inpod_uds.strip_prefix(&zt_mount).unwrap()
    );
}

#[test]
fn cni_daemon_set_installs_into_the_node_directories_and_unchains_on_stop() {
    let docs = install(&["--set", "cni.confDir=/etc/cni/custom.d"]);
    let ds: DaemonSet = typed(&docs, "DaemonSet/keelson-cni");
    let spec = pod(&ds);
    let init = &spec.init_containers.as_ref().unwrap()[0];
    let args = init.args.clone().unwrap();
    assert_eq!(args[0], "install");
    let bin = PathBuf::from(arg(&args, "--cni-bin-dir"));
    let conf = PathBuf::from(arg(&args, "--cni-conf-dir"));
    assert_eq!(host_path_of(&spec, init, &bin).unwrap().0, "/opt/cni/bin");
    assert_eq!(
        host_path_of(&spec, init, &conf).unwrap().0,
        "/etc/cni/custom.d"
    );
    // The plugin (run by the runtime on the node) reaches the agent at the same path.
    let socket = PathBuf::from(arg(&args, "--agent-socket"));
    let agent = &spec.containers[0];
    let agent_args = agent.args.clone().unwrap();
    assert_eq!(PathBuf::from(arg(&agent_args, "--socket")), socket);
    let (host, mount) = host_path_of(&spec, agent, &socket).unwrap();
    assert_eq!(
        Path::new(&host),
        mount,
        "the socket's path is the same on the node"
    );
    let stop = agent.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
    let cmd = stop.exec.as_ref().unwrap().command.clone().unwrap();
    assert_eq!(cmd[1], "uninstall");
    assert_eq!(arg(&cmd, "--cni-conf-dir"), conf.to_str().unwrap());
    assert_eq!(spec.host_network, Some(true));
}

#[test]
fn ebpf_redirection_gives_the_agent_and_ztunnel_the_same_pin_root_on_the_node_bpffs() {
    let env_of = |c: &Container, name: &str| {
        c.env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    let docs = install(&["--set", "cni.redirect=ebpf"]);
    let mut roots = Vec::new();
    for ds in ["DaemonSet/keelson-cni", "DaemonSet/ztunnel"] {
        let ds: DaemonSet = typed(&docs, ds);
        let spec = pod(&ds);
        let c = &spec.containers[0];
        let root = PathBuf::from(env_of(c, "KEELSON_BPF_ROOT").expect("KEELSON_BPF_ROOT"));
        // The pins are on the node's bpffs, at the same path inside and outside.
        let (host, mount) = host_path_of(&spec, c, &root).unwrap();
        assert_eq!(
            (host.as_str(), mount.as_path()),
            ("/sys/fs/bpf", Path::new("/sys/fs/bpf"))
        );
        roots.push(root);
    }
    assert_eq!(roots[0], roots[1]);
    let agent: DaemonSet = typed(&docs, "DaemonSet/keelson-cni");
    assert_eq!(
        arg(
            &pod(&agent).containers[0].args.clone().unwrap(),
            "--redirect"
        ),
        "ebpf"
    );
    // Without eBPF, nothing of it.
    let docs = install(&[]);
    let ztunnel: DaemonSet = typed(&docs, "DaemonSet/ztunnel");
    let c = &pod(&ztunnel).containers[0];
    assert_eq!(env_of(c, "KEELSON_BPF_ROOT"), None);
    assert!(!mounted(c, Path::new("/sys/fs/bpf")));
}

#[test]
fn control_plane_ports_and_rbac_are_exactly_what_it_uses() {
    let docs = install(&[]);
    let svc: Service = typed(&docs, "Service/keelson");
    let dep: Deployment = typed(&docs, "Deployment/keelson");
    let svc_ports: BTreeSet<i32> = svc
        .spec
        .unwrap()
        .ports
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    let container = &dep.spec.unwrap().template.spec.unwrap().containers[0];
    let c_ports: BTreeSet<i32> = container
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    let expected: BTreeSet<i32> =
        [15012, i32::from(controlplane::run::DEFAULT_MONITORING_PORT)].into();
    assert_eq!(svc_ports, expected);
    assert_eq!(c_ports, expected);
    // The command line is one the control plane takes, its state directory is writable, and
    // its serving certificate names the Service proxies dial.
    let args = container.args.clone().unwrap();
    assert_eq!(&args[..2], ["controlplane", "--kubernetes"]);
    let state = arg(&args, "--state-dir");
    assert!(mounted(container, Path::new(state)), "{state}");
    assert_eq!(arg(&args, "--san"), "keelson.istio-system.svc");
    let (ok, _, err) = keelson(
        &[&args[..], &["--no-such-option".to_string()]]
            .concat()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(!ok && err.contains("--no-such-option"), "{err}");
    // ztunnel is pointed at that Service.
    let ds: DaemonSet = typed(&docs, "DaemonSet/ztunnel");
    let env = pod(&ds).containers[0].env.clone().unwrap();
    let xds = env.iter().find(|e| e.name == "XDS_ADDRESS").unwrap();
    assert_eq!(xds.value.as_deref(), Some("keelson.istio-system.svc:15012"));

    // RBAC: list and watch on every kind the Kubernetes source reads, the verbs of every
    // write, and nothing else.
    let role: ClusterRole = typed(&docs, "ClusterRole/keelson");
    let mut granted = triples(&role);
    // Secrets are written only in its own namespace (a Role); cluster-wide they are only
    // read (list, watch), for the ingress gateways' TLS certificates.
    let own: ClusterRole = {
        let mut v = docs["Role/keelson"].clone();
        v["kind"] = "ClusterRole".into();
        serde_yaml::from_value(v).unwrap()
    };
    assert_eq!(
        docs["Role/keelson"]["metadata"]["namespace"],
        "istio-system"
    );
    let own = triples(&own);
    assert!(own.iter().all(|(_, res, _)| res == "secrets"), "{own:?}");
    assert!(granted
        .iter()
        .filter(|(_, res, _)| res == "secrets")
        .all(|(_, _, verb)| verb == "list" || verb == "watch"));
    granted.extend(own);
    let mut needed = BTreeSet::new();
    for k in resources::kinds::READ {
        for verb in resources::kinds::READ_VERBS {
            needed.insert((k.group.to_string(), k.plural.to_string(), verb.to_string()));
        }
    }
    for w in resources::kinds::WRITE {
        for verb in w.verbs {
            needed.insert((w.group.to_string(), w.plural.to_string(), verb.to_string()));
        }
    }
    assert_eq!(granted, needed);
    let agent: ClusterRole = typed(&docs, "ClusterRole/keelson-cni");
    let agent_needed: BTreeSet<_> = resources::kinds::AGENT_READ
        .iter()
        .flat_map(|k| {
            resources::kinds::AGENT_VERBS
                .iter()
                .map(|v| (k.group.to_string(), k.plural.to_string(), v.to_string()))
        })
        .collect();
    assert_eq!(triples(&agent), agent_needed);
}

/// (group, resource, verb) of every rule; no wildcards allowed.
fn triples(role: &ClusterRole) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for r in role.rules.iter().flatten() {
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    assert!(g != "*" && res != "*" && v != "*", "wildcard in {r:?}");
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out
}

#[test]
fn istiod_mode_installs_only_the_data_plane_pointed_at_istiod() {
    let docs = install(&[
        "--set",
        "mode=istiod",
        "--set",
        "istiod.xdsAddress=istiod.mesh.svc:15012",
    ]);
    assert!(!docs.contains_key("Deployment/keelson"));
    assert!(!docs.contains_key("ClusterRole/keelson"));
    assert!(!docs.contains_key("Deployment/istio-ingressgateway"));
    let ds: DaemonSet = typed(&docs, "DaemonSet/ztunnel");
    let spec = pod(&ds);
    let env = spec.containers[0].env.clone().unwrap();
    let get = |n: &str| {
        env.iter()
            .find(|e| e.name == n)
            .unwrap()
            .value
            .clone()
            .unwrap()
    };
    assert_eq!(get("XDS_ADDRESS"), "istiod.mesh.svc:15012");
    assert_eq!(get("CA_ADDRESS"), "istiod.istio-system.svc:15012");
    let root = spec
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.config_map.as_ref())
        .unwrap();
    assert_eq!(root.name, "istio-ca-root-cert");
}

#[test]
fn bad_values_are_refused_naming_the_key_and_uninstall_lists_every_object() {
    let (ok, out, err) = keelson(&["install", "--set", "ztunnel.logLevle=debug"]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.contains("ztunnel.logLevle"), "{err}");
    let (ok, _, err) = keelson(&["install", "--set", "controlPlane.replicas=many"]);
    assert!(!ok && err.contains("controlPlane.replicas"), "{err}");

    let docs = install(&[]);
    let (ok, out, _) = keelson(&["uninstall"]);
    assert!(ok);
    let listed: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(listed.len(), docs.len(), "{out}");
    assert_eq!(listed.last(), Some(&"Namespace istio-system"));
    for key in docs.keys() {
        let (kind, name) = key.split_once('/').unwrap();
        assert!(
            listed
                .iter()
                .any(|l| l.starts_with(kind) && l.ends_with(name)),
            "{key} not removed"
        );
    }
}

/// Every image the install names has a build file, and every build file builds and copies
/// a binary this workspace has.
#[test]
fn image_build_files_copy_workspace_binaries() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let meta = Command::new("cargo")
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(root)
        .output()
        .unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&meta.stdout).unwrap();
    let bins: BTreeSet<String> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    let dir = root.join("deploy/images");
    let mut images = BTreeSet::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let Some(image) = path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .strip_suffix(".Dockerfile")
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        let built: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split("--bin ").nth(1))
            .map(|b| b.split_whitespace().next().unwrap())
            .collect();
        let copied: Vec<(&str, &str)> = text
            .lines()
            .filter(|l| l.starts_with("COPY --from=build"))
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w[2], w[3])
            })
            .collect();
        assert!(!built.is_empty() && !copied.is_empty(), "{image}");
        for b in &built {
            assert!(
                bins.contains(*b),
                "{image} builds {b}, not a workspace binary"
            );
        }
        let entry = text
            .lines()
            .find_map(|l| l.strip_prefix("ENTRYPOINT "))
            .map(|e| serde_json::from_str::<Vec<String>>(e).unwrap()[0].clone())
            .unwrap_or_else(|| panic!("{image} has no ENTRYPOINT"));
        for (from, to) in &copied {
            let bin = from.rsplit('/').next().unwrap();
            assert!(
                built.contains(&bin),
                "{image} copies {from}, which it does not build"
            );
            assert_eq!(*from, format!("/src/target/release/{bin}"));
            assert_eq!(entry, *to, "{image}: the entry point is the copied binary");
        }
        // Images without capabilities run as a user, not root.
        if ["keelson", "waypoint"].contains(&image) {
            assert!(text.contains("\nUSER 65532"), "{image} runs as root");
        }
        images.insert(image.to_string());
    }
    let docs = install(&[]);
    for v in docs.values() {
        let text = serde_yaml::to_string(v).unwrap();
        for line in text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("image: "))
        {
            let name = line.rsplit('/').next().unwrap().split(':').next().unwrap();
            assert!(
                images.contains(name),
                "the install uses {line}; no build file for {name}"
            );
        }
    }
    assert_eq!(
        images,
        ["keelson", "keelson-cni", "waypoint", "ztunnel"]
            .map(String::from)
            .into()
    );
}

/// `--apply`: every object server-side applied through the API server (here the in-process
/// double), in order; `uninstall --apply` deletes them all, last first.
#[test]
fn apply_and_uninstall_go_through_the_api_server() {
    let dir = std::env::temp_dir().join(format!("keelson-apply-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = testbed::apiserver::ApiServer::start(listener, &dir).unwrap();
    let kubeconfig = api.kubeconfig.to_str().unwrap().to_string();
    let docs = install(&[]);

    let (ok, out, err) = keelson(&["install", "--apply", "--kubeconfig", &kubeconfig]);
    assert!(ok, "{err}");
    let patches: Vec<_> = api
        .writes()
        .into_iter()
        .filter(|w| w.method == "PATCH")
        .collect();
    assert_eq!(patches.len(), docs.len(), "{out}");
    let first = &patches[0];
    assert_eq!(first.path, "/api/v1/namespaces/istio-system");
    assert_eq!(first.body["kind"], "Namespace");
    let ds = patches
        .iter()
        .find(|w| w.path == "/apis/apps/v1/namespaces/istio-system/daemonsets/ztunnel")
        .expect("the ztunnel DaemonSet applied");
    assert_eq!(
        ds.body["spec"]["template"]["spec"]["serviceAccountName"],
        "ztunnel"
    );
    assert!(patches
        .iter()
        .any(|w| w.path == "/apis/policy/v1/namespaces/istio-system/poddisruptionbudgets/keelson"));

    let (ok, out, err) = keelson(&["uninstall", "--apply", "--kubeconfig", &kubeconfig]);
    assert!(ok, "{err}");
    let deletes: Vec<_> = api
        .writes()
        .into_iter()
        .filter(|w| w.method == "DELETE")
        .collect();
    assert_eq!(deletes.len(), docs.len(), "{out}");
    assert_eq!(
        deletes.last().unwrap().path,
        "/api/v1/namespaces/istio-system"
    );
    drop(api);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The default ingress gateway (docs/GATEWAY.md): the labels Istio Gateways select, the
/// waypoint image running `waypoint gateway` as the account destination policies name, a
/// LoadBalancer Service 80→8080 and 443→8443; off with `ingressGateway.enabled=false`.
#[test]
fn the_default_ingress_gateway_is_installed() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Service;
    let docs = install(&["--set", "ingressGateway.replicas=2"]);
    let d: Deployment = typed(&docs, "Deployment/istio-ingressgateway");
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let template = spec.template;
    let labels = template.metadata.unwrap().labels.unwrap();
    assert_eq!(labels["istio"], "ingressgateway");
    assert_eq!(labels["app"], "istio-ingressgateway");
    assert_eq!(labels["istio.io/dataplane-mode"], "none");
    let pod = template.spec.unwrap();
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("istio-ingressgateway-service-account")
    );
    let c = &pod.containers[0];
    assert_eq!(c.args.as_deref(), Some(&["gateway".to_string()][..]));
    assert!(c.image.as_deref().unwrap().contains("/waypoint:"));
    let env = c.env.clone().unwrap();
    let xds = env.iter().find(|e| e.name == "XDS_ADDRESS").unwrap();
    assert_eq!(xds.value.as_deref(), Some("keelson.istio-system.svc:15012"));
    assert!(docs.contains_key("ServiceAccount/istio-ingressgateway-service-account"));
    let svc: Service = typed(&docs, "Service/istio-ingressgateway");
    let svc = svc.spec.unwrap();
    assert_eq!(svc.type_.as_deref(), Some("LoadBalancer"));
    let ports: Vec<(i32, String)> = svc
        .ports
        .unwrap()
        .iter()
        .map(|p| {
            let target = match p.target_port.clone().unwrap() {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i) => i.to_string(),
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s,
            };
            (p.port, target)
        })
        .collect();
    assert!(ports.contains(&(80, "8080".into())), "{ports:?}");
    assert!(ports.contains(&(443, "8443".into())), "{ports:?}");
    assert_eq!(svc.selector.unwrap()["istio"], "ingressgateway");
    let off = install(&["--set", "ingressGateway.enabled=false"]);
    assert!(!off.contains_key("Deployment/istio-ingressgateway"));
}
