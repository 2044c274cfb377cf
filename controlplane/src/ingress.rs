//! Ingress gateways (docs/GATEWAY.md): a Gateway of class `istio`, an Istio `Gateway` and an
//! `Ingress` of class `istio` each become one resolved [`IngressGateway`] (listeners,
//! certificates from their Secrets, the namespaces whose routes may attach, the uids of the
//! proxy pods that serve it); an Ingress also becomes the VirtualService that routes like it.
//! The status Istio writes for them (Gateway and listener conditions, HTTPRoute parents, the
//! Ingress's address) is computed here too, for the API server and for `keelson status`.

use std::collections::BTreeMap;

use l7::gateway::{
    Certificate, GatewayKind, HostFilter, IngressGateway, Protocol, ResolvedListener,
    INGRESS_GATEWAY_SUFFIX, INGRESS_LABELS,
};
use l7::httproute::ParentRef;
use resources::{Gateway, HttpRoute, MeshSettings, Pod, Resources};
use serde_json::{json, Value};

/// What the ingress gateways of a model come to.
#[derive(Debug, Default)]
pub struct Translated {
    pub gateways: Vec<IngressGateway>,
    /// The VirtualServices made from Ingresses: (namespace, name, spec).
    pub virtual_services: Vec<(String, String, l7::istio::VirtualServiceSpec)>,
}

fn ns_of(meta_ns: &Option<String>) -> &str {
    meta_ns.as_deref().unwrap_or("default")
}

fn uid(mesh: &MeshSettings, pod: &Pod) -> String {
    format!(
        "{}//Pod/{}/{}",
        mesh.cluster_id,
        ns_of(&pod.metadata.namespace),
        pod.metadata.name
    )
}

/// The pods whose labels include every one of `selector` (an empty selector selects none).
fn selected<'a>(
    res: &'a Resources,
    selector: &BTreeMap<String, String>,
) -> impl Iterator<Item = &'a Pod> + 'a {
    let selector = selector.clone();
    res.pods.iter().filter(move |p| {
        !selector.is_empty()
            && selector
                .iter()
                .all(|(k, v)| p.metadata.labels.get(k) == Some(v))
    })
}

/// The pods of a Gateway of class `istio`: its namespace's pods labelled with its name.
fn gateway_pods<'a>(res: &'a Resources, g: &'a Gateway) -> impl Iterator<Item = &'a Pod> + 'a {
    res.pods.iter().filter(move |p| {
        ns_of(&p.metadata.namespace) == g.namespace()
            && p.metadata.labels.get(resources::labels::GATEWAY_NAME) == Some(&g.metadata.name)
    })
}

fn ingress_selector() -> BTreeMap<String, String> {
    BTreeMap::from([(INGRESS_LABELS[0].0.into(), INGRESS_LABELS[0].1.into())])
}

/// A TLS Secret's pair; `Err` is the reason for the listener's `ResolvedRefs`.
fn certificate(res: &Resources, ns: &str, name: &str) -> Result<Certificate, String> {
    let secret = res
        .secrets
        .iter()
        .find(|s| s.metadata.name == name && ns_of(&s.metadata.namespace) == ns)
        .ok_or_else(|| format!("Secret {ns}/{name} not found"))?;
    let (chain_pem, key_pem) = secret
        .tls_pair()
        .map_err(|e| format!("Secret {ns}/{name}: {e}"))?;
    Ok(Certificate {
        secret: format!("{ns}/{name}"),
        chain_pem,
        key_pem,
    })
}

/// One listener of a Gateway of class `istio`, and why its references do not resolve.
fn gateway_listener(
    res: &Resources,
    g: &Gateway,
    l: &l7::gateway::Listener,
) -> (ResolvedListener, Result<(), (&'static str, String)>) {
    let ns = g.namespace();
    let mut refs = Ok(());
    let mut certificates = Vec::new();
    for r in l.tls.iter().flat_map(|t| t.certificate_refs.iter()) {
        let kind_ok = r.kind.as_deref().is_none_or(|k| k == "Secret")
            && r.group.as_deref().is_none_or(str::is_empty);
        let rns = r.namespace.as_deref().unwrap_or(ns);
        if !kind_ok {
            refs = Err((
                "InvalidCertificateRef",
                format!("{} is not a Secret", r.name),
            ));
        } else if rns != ns {
            refs = Err((
                "RefNotPermitted",
                format!("Secret {rns}/{} is in another namespace", r.name),
            ));
        } else {
            match certificate(res, rns, &r.name) {
                Ok(c) => certificates.push(c),
                Err(e) => refs = Err(("InvalidCertificateRef", e)),
            }
        }
    }
    let route_namespaces = match l
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref())
    {
        None => Some(vec![ns.to_string()]),
        Some(n) => match n.from.as_deref() {
            Some("All") => None,
            Some("Selector") => {
                let want = n
                    .selector
                    .as_ref()
                    .map(|s| s.match_labels.clone())
                    .unwrap_or_default();
                Some(
                    res.namespaces
                        .iter()
                        .filter(|n| {
                            want.iter()
                                .all(|(k, v)| n.metadata.labels.get(k) == Some(v))
                        })
                        .map(|n| n.metadata.name.clone())
                        .collect(),
                )
            }
            _ => Some(vec![ns.to_string()]),
        },
    };
    let listener = ResolvedListener {
        name: l.name.clone(),
        port: l.port,
        protocol: if l.protocol == "HTTPS" {
            Protocol::Https
        } else {
            Protocol::Http
        },
        hosts: l
            .hostname
            .iter()
            .map(|h| HostFilter {
                namespace: None,
                host: h.clone(),
            })
            .collect(),
        certificates,
        https_redirect: false,
        route_namespaces,
    };
    (listener, refs)
}

/// The port a gateway pod listens on for server port `port`: the target port of a port
/// `port` of a Service selecting the pods, else `port` itself (as istiod maps a Gateway
/// server's port through the gateway's Service: 80 → 8080 on the default ingress).
fn listen_port(res: &Resources, pods: &[&Pod], port: u16) -> u16 {
    res.services
        .iter()
        .filter(|s| {
            !s.spec.selector.is_empty()
                && pods.iter().any(|p| {
                    ns_of(&p.metadata.namespace) == ns_of(&s.metadata.namespace)
                        && s.spec
                            .selector
                            .iter()
                            .all(|(k, v)| p.metadata.labels.get(k) == Some(v))
                })
        })
        .flat_map(|s| s.spec.ports.iter())
        .find(|p| p.port == port)
        .and_then(|p| match &p.target_port {
            Some(resources::IntOrString::Int(t)) => Some(*t),
            _ => None,
        })
        .unwrap_or(port)
}

/// Every ingress gateway of the model, and the VirtualServices of its Ingresses.
pub fn translate(res: &Resources, mesh: &MeshSettings) -> Translated {
    let mut out = Translated::default();
    for g in res.gateways.iter().filter(|g| g.is_ingress()) {
        out.gateways.push(IngressGateway {
            namespace: g.namespace().to_string(),
            name: g.metadata.name.clone(),
            kind: GatewayKind::GatewayApi,
            proxy_uids: gateway_pods(res, g).map(|p| uid(mesh, p)).collect(),
            listeners: g
                .spec
                .listeners
                .iter()
                .map(|l| gateway_listener(res, g, l).0)
                .collect(),
        });
    }
    for g in &res.istio_gateways {
        let ns = ns_of(&g.metadata.namespace);
        let pods: Vec<&Pod> = selected(res, &g.spec.selector).collect();
        // Istio reads credentialName from the gateway pods' namespace.
        let secret_ns = pods.first().map_or(ns, |p| ns_of(&p.metadata.namespace));
        let listeners = g
            .spec
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let tls = s.tls.as_ref();
                let https = s.port.protocol.eq_ignore_ascii_case("HTTPS");
                ResolvedListener {
                    name: s
                        .name
                        .clone()
                        .or(s.port.name.clone())
                        .unwrap_or_else(|| format!("server-{i}")),
                    port: listen_port(res, &pods, s.port.number),
                    protocol: if https {
                        Protocol::Https
                    } else {
                        Protocol::Http
                    },
                    hosts: s
                        .hosts
                        .iter()
                        .map(|h| {
                            let (hns, host) = l7::gateway::split_server_host(h);
                            HostFilter {
                                namespace: hns.map(|n| if n == "." { ns } else { n }.to_string()),
                                host: host.to_string(),
                            }
                        })
                        .collect(),
                    certificates: tls
                        .and_then(|t| t.credential_name.as_deref())
                        .filter(|_| https)
                        .and_then(|name| {
                            certificate(res, secret_ns, name)
                                .or_else(|_| certificate(res, ns, name))
                                .map_err(|e| tracing::warn!(gateway = %format!("{ns}/{}", g.metadata.name), error = %e, "server certificate"))
                                .ok()
                        })
                        .into_iter()
                        .collect(),
                    https_redirect: !https && tls.is_some_and(|t| t.https_redirect),
                    route_namespaces: None,
                }
            })
            .collect();
        out.gateways.push(IngressGateway {
            namespace: ns.to_string(),
            name: g.metadata.name.clone(),
            kind: GatewayKind::Istio,
            proxy_uids: pods.iter().map(|p| uid(mesh, p)).collect(),
            listeners,
        });
    }
    let ingress_pods: Vec<&Pod> = selected(res, &ingress_selector()).collect();
    for i in res
        .ingresses
        .iter()
        .filter(|i| i.spec.is_istio(&i.metadata.annotations))
    {
        let ns = ns_of(&i.metadata.namespace);
        let name = format!("{}{INGRESS_GATEWAY_SUFFIX}", i.metadata.name);
        let any = |hosts: &[String]| -> Vec<HostFilter> {
            hosts
                .iter()
                .filter(|h| *h != "*")
                .map(|h| HostFilter {
                    namespace: None,
                    host: h.clone(),
                })
                .collect()
        };
        let mut listeners = vec![ResolvedListener {
            name: "http".into(),
            port: listen_port(res, &ingress_pods, 80),
            protocol: Protocol::Http,
            hosts: any(&i.spec.hosts()),
            certificates: Vec::new(),
            https_redirect: false,
            route_namespaces: None,
        }];
        for (ti, t) in i.spec.tls.iter().enumerate() {
            let Some(secret) = &t.secret_name else {
                continue;
            };
            let found = certificate(res, ns, secret).or_else(|_| {
                let pod_ns = ingress_pods
                    .first()
                    .map_or(ns, |p| ns_of(&p.metadata.namespace));
                certificate(res, pod_ns, secret)
            });
            match found {
                Ok(c) => listeners.push(ResolvedListener {
                    name: format!("https-{ti}"),
                    port: listen_port(res, &ingress_pods, 443),
                    protocol: Protocol::Https,
                    hosts: any(&t.hosts),
                    certificates: vec![c],
                    https_redirect: false,
                    route_namespaces: None,
                }),
                Err(e) => {
                    tracing::warn!(ingress = %format!("{ns}/{}", i.metadata.name), error = %e, "ingress TLS")
                }
            }
        }
        let port_of = |svc: &str, port: &str| {
            res.services
                .iter()
                .find(|s| s.metadata.name == svc && ns_of(&s.metadata.namespace) == ns)
                .and_then(|s| {
                    s.spec
                        .ports
                        .iter()
                        .find(|p| p.name.as_deref() == Some(port))
                })
                .map(|p| p.port)
        };
        out.virtual_services.push((
            ns.to_string(),
            name.clone(),
            i.spec.virtual_service(&format!("{ns}/{name}"), &port_of),
        ));
        out.gateways.push(IngressGateway {
            namespace: ns.to_string(),
            name,
            kind: GatewayKind::Ingress,
            proxy_uids: ingress_pods.iter().map(|p| uid(mesh, p)).collect(),
            listeners,
        });
    }
    out
}

// ---- Status ----

pub fn condition(kind: &str, ok: bool, reason: &str, message: &str) -> Value {
    json!({
        "type": kind, "status": if ok { "True" } else { "False" }, "reason": reason,
        "message": message, "observedGeneration": 0,
        // Fixed, so an unchanged status is not re-applied; the API server keeps the time
        // of the first apply when the status does not change.
        "lastTransitionTime": "1970-01-01T00:00:00Z",
    })
}

/// The external address of the Service that selects `pods` or is named `service`: its
/// load balancer's, else its cluster IP.
fn address(res: &Resources, ns: &str, service: Option<&str>, pods: &[&Pod]) -> Option<String> {
    let svc = res.services.iter().find(|s| {
        let same_ns = ns_of(&s.metadata.namespace) == ns;
        match service {
            Some(name) => same_ns && s.metadata.name == name,
            None => {
                !s.spec.selector.is_empty()
                    && pods.iter().any(|p| {
                        ns_of(&p.metadata.namespace) == ns_of(&s.metadata.namespace)
                            && s.spec
                                .selector
                                .iter()
                                .all(|(k, v)| p.metadata.labels.get(k) == Some(v))
                    })
            }
        }
    })?;
    svc.status
        .load_balancer
        .ingress
        .iter()
        .find_map(|i| i.ip.clone().or(i.hostname.clone()))
        .or(svc.spec.cluster_ip.clone())
}

/// The name of the Service of a Gateway of class `istio` (as Istio's deployment
/// controller names it).
pub fn gateway_service(name: &str) -> String {
    format!("{name}-istio")
}

/// The number of HTTPRoutes attached to each listener of `g`.
fn attached(res: &Resources, g: &Gateway, l: &ResolvedListener) -> usize {
    res.http_routes
        .iter()
        .filter(|r| {
            route_parent_result(res, r, g, l).is_ok()
                && r.spec.parent_refs.iter().any(|p| names(p, r, g))
        })
        .count()
}

fn names(p: &ParentRef, r: &HttpRoute, g: &Gateway) -> bool {
    p.is_gateway()
        && p.name == g.metadata.name
        && p.namespace
            .as_deref()
            .unwrap_or(ns_of(&r.metadata.namespace))
            == g.namespace()
}

/// Whether route `r` attaches to listener `l` of `g`; `Err`: the reason (Gateway API
/// reasons of the `Accepted` condition).
fn route_parent_result(
    _res: &Resources,
    r: &HttpRoute,
    _g: &Gateway,
    l: &ResolvedListener,
) -> Result<(), &'static str> {
    let rns = ns_of(&r.metadata.namespace);
    if !l
        .route_namespaces
        .as_ref()
        .is_none_or(|ns| ns.iter().any(|n| n == rns))
    {
        return Err("NotAllowedByListeners");
    }
    let host = l.hosts.first().map(|h| h.host.as_str());
    if let Some(h) = host {
        if !r.spec.hostnames.is_empty()
            && !r
                .spec
                .hostnames
                .iter()
                .any(|rh| l7::gateway::hosts_intersect(rh, h))
        {
            return Err("NoMatchingListenerHostname");
        }
    }
    Ok(())
}

/// A Gateway of class `istio`: `Accepted`, `Programmed` (a pod serves it), its address,
/// and per listener `Accepted`, `Programmed`, `ResolvedRefs` and the attached routes.
pub fn gateway_status(res: &Resources, g: &Gateway) -> Value {
    let (name, ns) = (g.metadata.name.as_str(), g.namespace());
    let pods: Vec<&Pod> = gateway_pods(res, g).collect();
    let service = gateway_service(name);
    let addr = address(res, ns, Some(&service), &pods);
    let programmed = if pods.is_empty() {
        condition(
            "Programmed",
            false,
            "Pending",
            "no gateway pod runs for it yet",
        )
    } else {
        condition(
            "Programmed",
            true,
            "Programmed",
            &format!(
                "Resource programmed, assigned to service(s) {service}.{ns}.svc.cluster.local"
            ),
        )
    };
    let listeners: Vec<Value> = g
        .spec
        .listeners
        .iter()
        .map(|l| {
            let (resolved, refs) = gateway_listener(res, g, l);
            let refs = match refs {
                Ok(()) => condition("ResolvedRefs", true, "ResolvedRefs", "No errors found"),
                Err((reason, msg)) => condition("ResolvedRefs", false, reason, &msg),
            };
            json!({
                "name": l.name,
                "supportedKinds": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}],
                "attachedRoutes": attached(res, g, &resolved),
                "conditions": [
                    condition("Accepted", true, "Accepted", "No errors found"),
                    condition("Programmed", !pods.is_empty(), if pods.is_empty() { "Pending" } else { "Programmed" }, if pods.is_empty() { "no gateway pod" } else { "No errors found" }),
                    refs,
                ],
            })
        })
        .collect();
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns},
        "status": {
            "addresses": addr.map(|a| vec![json!({"type": "IPAddress", "value": a})]).unwrap_or_default(),
            "conditions": [
                condition("Accepted", true, "Accepted", "Resource accepted"),
                programmed,
            ],
            "listeners": listeners,
        },
    })
}

/// The status of a parent of an HTTPRoute that is a Gateway of class `istio`: `Accepted`
/// when it attaches to one of the listeners the ref names; `None` when the parent is not
/// such a Gateway.
pub fn route_parent_accepted(res: &Resources, r: &HttpRoute, p: &ParentRef) -> Option<Value> {
    if !p.is_gateway() {
        return None;
    }
    let rns = ns_of(&r.metadata.namespace);
    let gns = p.namespace.as_deref().unwrap_or(rns);
    let Some(g) = res
        .gateways
        .iter()
        .find(|g| g.metadata.name == p.name && g.namespace() == gns)
    else {
        return Some(condition(
            "Accepted",
            false,
            "NoMatchingParent",
            &format!("Gateway {gns}/{} not found", p.name),
        ));
    };
    if !g.is_ingress() {
        return None;
    }
    let mut reason = "NoMatchingParent";
    for l in &g.spec.listeners {
        if p.section_name.as_ref().is_some_and(|s| *s != l.name)
            || p.port.is_some_and(|port| port != l.port)
        {
            continue;
        }
        let (resolved, _) = gateway_listener(res, g, l);
        match route_parent_result(res, r, g, &resolved) {
            Ok(()) => return Some(condition("Accepted", true, "Accepted", "Route was valid")),
            Err(why) => reason = why,
        }
    }
    Some(condition(
        "Accepted",
        false,
        reason,
        "no listener of the Gateway admits this route",
    ))
}

/// An Istio Gateway and an Ingress have no conditions in Istio; `keelson status` shows
/// theirs in the same shape: `Programmed` when a gateway pod serves them, and (Ingress) the
/// address Istio writes to `status.loadBalancer`.
pub fn other_statuses(res: &Resources) -> Vec<Value> {
    let mut out = Vec::new();
    for g in &res.istio_gateways {
        let ns = ns_of(&g.metadata.namespace);
        let pods: Vec<&Pod> = selected(res, &g.spec.selector).collect();
        let pod_ns = pods.first().map_or(ns, |p| ns_of(&p.metadata.namespace));
        let addr = address(res, pod_ns, None, &pods);
        out.push(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": {"name": g.metadata.name, "namespace": ns},
            "status": {
                "addresses": addr.map(|a| vec![json!({"type": "IPAddress", "value": a})]).unwrap_or_default(),
                "conditions": [
                    condition("Accepted", true, "Accepted", "Resource accepted"),
                    if pods.is_empty() {
                        condition("Programmed", false, "NoResources", "no pod matches spec.selector")
                    } else {
                        condition("Programmed", true, "Programmed", &format!("served by {} pod(s)", pods.len()))
                    },
                ],
            },
        }));
    }
    let pods: Vec<&Pod> = selected(res, &ingress_selector()).collect();
    let pod_ns = pods
        .first()
        .map_or("istio-system", |p| ns_of(&p.metadata.namespace));
    let addr = address(res, pod_ns, None, &pods);
    for i in &res.ingresses {
        let ns = ns_of(&i.metadata.namespace);
        let ours = i.spec.is_istio(&i.metadata.annotations);
        out.push(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": i.metadata.name, "namespace": ns},
            "status": {
                "loadBalancer": {"ingress": addr.iter().filter(|_| ours).map(|a| json!({"ip": a})).collect::<Vec<_>>()},
                "conditions": [
                    if ours {
                        condition("Accepted", true, "Accepted", "class istio")
                    } else {
                        condition("Accepted", false, "NotIstio", "not of class istio: another controller's")
                    },
                    condition("Programmed", ours && !pods.is_empty(), if pods.is_empty() { "NoResources" } else { "Programmed" },
                        if pods.is_empty() { "no ingress gateway pod" } else { "served by the ingress gateway" }),
                ],
            },
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n";

    fn model(extra: &str) -> Resources {
        let mut r = Resources::default();
        r.add_text(
            "t",
            &format!(
                "apiVersion: v1
kind: Pod
metadata: {{name: ingress-0, namespace: istio-system, labels: {{istio: ingressgateway, app: istio-ingressgateway}}}}
spec: {{nodeName: n}}
status: {{podIP: 10.0.0.5}}
---
apiVersion: v1
kind: Pod
metadata: {{name: gw-0, namespace: default, labels: {{gateway.networking.k8s.io/gateway-name: gw}}}}
spec: {{nodeName: n}}
status: {{podIP: 10.0.0.6}}
---
apiVersion: v1
kind: Service
metadata: {{name: gw-istio, namespace: default}}
spec: {{type: LoadBalancer, clusterIP: 10.96.0.50, ports: [{{port: 80}}]}}
status: {{loadBalancer: {{ingress: [{{ip: 198.18.0.2}}]}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: cert, namespace: default}}
type: kubernetes.io/tls
stringData: {{tls.crt: {CERT:?}, tls.key: {KEY:?}}}
---
{extra}"
            ),
        )
        .unwrap();
        r
    }

    #[test]
    fn three_flavours_resolve_to_gateways() {
        let res = model(
            "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
  - {name: https, port: 443, protocol: HTTPS, hostname: bookinfo.example.com, tls: {certificateRefs: [{name: cert}]}}
  - {name: broken, port: 8443, protocol: HTTPS, tls: {certificateRefs: [{name: missing}]}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ['./*']
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: default}
spec:
  ingressClassName: istio
  rules: [{host: web.example.com, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: other, namespace: default}
spec:
  ingressClassName: nginx
  rules: [{http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}}]
",
        );
        let mesh = MeshSettings::default();
        let t = translate(&res, &mesh);
        assert_eq!(t.gateways.len(), 3, "{t:?}");
        let api = &t.gateways[0];
        assert_eq!(api.proxy_uids, ["Kubernetes//Pod/default/gw-0"]);
        assert_eq!(api.listeners[0].route_namespaces, None);
        assert_eq!(api.listeners[1].certificates.len(), 1);
        assert!(api.listeners[2].certificates.is_empty());
        let istio = &t.gateways[1];
        assert_eq!(istio.proxy_uids, ["Kubernetes//Pod/istio-system/ingress-0"]);
        assert_eq!(
            istio.listeners[0].hosts[0].namespace.as_deref(),
            Some("default")
        );
        let ing = &t.gateways[2];
        assert_eq!(
            (ing.name.as_str(), ing.kind),
            ("web.ingress", GatewayKind::Ingress)
        );
        assert_eq!(t.virtual_services.len(), 1);
        assert_eq!(t.virtual_services[0].2.gateways, ["default/web.ingress"]);

        let status = gateway_status(&res, &res.gateways[0]);
        assert_eq!(status["status"]["addresses"][0]["value"], "198.18.0.2");
        assert_eq!(status["status"]["conditions"][1]["status"], "True");
        let broken = &status["status"]["listeners"][2]["conditions"][2];
        assert_eq!(broken["status"], "False");
        assert_eq!(broken["reason"], "InvalidCertificateRef");
        let others = other_statuses(&res);
        assert_eq!(others[0]["status"]["conditions"][1]["status"], "True");
        assert_eq!(others[2]["status"]["conditions"][0]["reason"], "NotIstio");
    }

    #[test]
    fn route_parents_are_accepted_only_where_a_listener_admits_them() {
        let res = model(
            "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: istio
  listeners:
  - {name: web, port: 80, protocol: HTTP, hostname: web.example.com}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ok, namespace: default}
spec:
  parentRefs: [{name: gw}]
  hostnames: ['*.example.com']
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: otherhost, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: web}]
  hostnames: [api.example.org]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: otherns, namespace: team}
spec:
  parentRefs: [{name: gw, namespace: default}]
",
        );
        let reason = |i: usize| {
            let r = &res.http_routes[i];
            route_parent_accepted(&res, r, &r.spec.parent_refs[0]).unwrap()["reason"].clone()
        };
        assert_eq!(reason(0), "Accepted");
        assert_eq!(reason(1), "NoMatchingListenerHostname");
        assert_eq!(reason(2), "NotAllowedByListeners");
        let status = gateway_status(&res, &res.gateways[0]);
        assert_eq!(status["status"]["listeners"][0]["attachedRoutes"], 1);
    }
}
