//! The Kubernetes kinds Keelson's control plane reads and writes, each with its API group,
//! version and resource name. One list serves twice: the Kubernetes source watches exactly
//! the kinds of [`READ`], and `keelson install` grants exactly [`READ_VERBS`] on them plus
//! the verbs of [`WRITE`], nothing more (docs/KUBERNETES.md, "Permissions").

/// A kind the resource model reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiKind {
    /// The API group; `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The resource name in URLs and RBAC rules.
    pub plural: &'static str,
    pub namespaced: bool,
}

impl ApiKind {
    /// `apiVersion` as objects carry it: `v1`, or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const fn kind(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
) -> ApiKind {
    ApiKind {
        group,
        version,
        kind,
        plural,
        namespaced,
    }
}

const GATEWAY_API: &str = "gateway.networking.k8s.io";
const ISTIO_NETWORKING: &str = "networking.istio.io";
const ISTIO_SECURITY: &str = "security.istio.io";

/// What the translation reads: the kinds [`crate::Resources`] holds.
pub const READ: &[ApiKind] = &[
    kind("", "v1", "Namespace", "namespaces", false),
    kind("", "v1", "Node", "nodes", false),
    kind("", "v1", "Pod", "pods", true),
    kind("", "v1", "Service", "services", true),
    kind("", "v1", "ServiceAccount", "serviceaccounts", true),
    kind(GATEWAY_API, "v1", "Gateway", "gateways", true),
    kind(GATEWAY_API, "v1", "HTTPRoute", "httproutes", true),
    kind(GATEWAY_API, "v1", "GRPCRoute", "grpcroutes", true),
    kind(
        ISTIO_NETWORKING,
        "v1",
        "VirtualService",
        "virtualservices",
        true,
    ),
    kind(
        ISTIO_NETWORKING,
        "v1",
        "DestinationRule",
        "destinationrules",
        true,
    ),
    kind(ISTIO_NETWORKING, "v1", "Gateway", "gateways", true),
    kind(
        ISTIO_NETWORKING,
        "v1",
        "ServiceEntry",
        "serviceentries",
        true,
    ),
    kind("networking.k8s.io", "v1", "Ingress", "ingresses", true),
    kind("", "v1", "Secret", "secrets", true),
    kind(
        ISTIO_SECURITY,
        "v1",
        "RequestAuthentication",
        "requestauthentications",
        true,
    ),
    kind(
        ISTIO_SECURITY,
        "v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
        true,
    ),
    kind(
        ISTIO_SECURITY,
        "v1",
        "PeerAuthentication",
        "peerauthentications",
        true,
    ),
    kind("telemetry.istio.io", "v1", "Telemetry", "telemetries", true),
    // Only `istio` (the mesh config) is kept of them.
    kind("", "v1", "ConfigMap", "configmaps", true),
];

/// Verbs the control plane uses on a resource it writes, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiWrite {
    /// Only in the control plane's own namespace (a Role, not the ClusterRole).
    pub own_namespace: bool,
    pub group: &'static str,
    /// Resource name, with `/status` for the status subresource.
    pub plural: &'static str,
    pub verbs: &'static [&'static str],
    pub why: &'static str,
}

/// What the control plane writes.
pub const WRITE: &[ApiWrite] = &[
    ApiWrite {
        own_namespace: true,
        group: "",
        plural: "secrets",
        verbs: &["get", "create"],
        why: "the CA's root certificate and key, kept across restarts (Secret keelson-ca)",
    },
    ApiWrite {
        own_namespace: false,
        group: "apps",
        plural: "deployments",
        verbs: &["create", "update", "patch", "delete"],
        why: "the waypoint controller's Deployment per waypoint Gateway and per Gateway of class istio",
    },
    ApiWrite {
        own_namespace: false,
        group: "",
        plural: "services",
        verbs: &["create", "update", "patch", "delete"],
        why: "the waypoint controller's Service per waypoint Gateway and per Gateway of class istio (LoadBalancer)",
    },
    ApiWrite {
        own_namespace: false,
        group: "",
        plural: "serviceaccounts",
        verbs: &["create", "patch"],
        why: "the identity of each waypoint (a ServiceAccount named after its Gateway)",
    },
    ApiWrite {
        own_namespace: false,
        group: GATEWAY_API,
        plural: "gateways/status",
        verbs: &["update", "patch"],
        why: "Accepted and Programmed conditions and the address of waypoint and ingress Gateways, with listener conditions",
    },
    ApiWrite {
        own_namespace: false,
        group: GATEWAY_API,
        plural: "httproutes/status",
        verbs: &["update", "patch"],
        why: "Accepted and ResolvedRefs conditions of HTTPRoute parents",
    },
    ApiWrite {
        own_namespace: false,
        group: GATEWAY_API,
        plural: "grpcroutes/status",
        verbs: &["update", "patch"],
        why: "Accepted and ResolvedRefs conditions of GRPCRoute parents",
    },
    ApiWrite {
        own_namespace: false,
        group: ISTIO_NETWORKING,
        plural: "gateways/status",
        verbs: &["update", "patch"],
        why: "Accepted and Programmed conditions of Istio Gateways",
    },
    ApiWrite {
        own_namespace: false,
        group: "networking.k8s.io",
        plural: "ingresses/status",
        verbs: &["update", "patch"],
        why: "the ingress gateway's load balancer address on Ingresses of class istio",
    },
    ApiWrite {
        own_namespace: false,
        group: "",
        plural: "events",
        verbs: &["create", "patch"],
        why: "an Event on each resource that fails validation, naming the field",
    },
    ApiWrite {
        own_namespace: false,
        group: "",
        plural: "configmaps",
        verbs: &["create", "update", "patch"],
        why: "the mesh root certificate (keelson-ca-root-cert) for proxies to verify the control plane",
    },
    ApiWrite {
        own_namespace: false,
        group: "authentication.k8s.io",
        plural: "tokenreviews",
        verbs: &["create"],
        why: "verifying the service-account tokens proxies present to xDS and the CA",
    },
];

/// How the control plane reads [`READ`]: its watchers list, then watch.
pub const READ_VERBS: &[&str] = &["list", "watch"];

/// How the node agent reads [`AGENT_READ`]: one `get` of the pod and its namespace per CNI
/// ADD (`cni-plugin/src/lookup.rs`).
pub const AGENT_VERBS: &[&str] = &["get"];

/// What the node agent reads: the labels that enrol pods and namespaces.
pub const AGENT_READ: &[ApiKind] = &[
    kind("", "v1", "Namespace", "namespaces", false),
    kind("", "v1", "Node", "nodes", false),
    kind("", "v1", "Pod", "pods", true),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_the_model_reads_is_listed_once() {
        let mut r = crate::Resources::default();
        for k in READ {
            let doc = format!(
                "apiVersion: {}\nkind: {}\nmetadata: {{name: x, namespace: default}}\n",
                k.api_version(),
                k.kind
            );
            // Every listed kind is one the model keeps (not counted as ignored).
            let _ = r.add_text("kinds", &doc);
            assert!(!r.ignored.contains_key(k.kind), "{} is ignored", k.kind);
        }
        let mut names: Vec<_> = READ.iter().map(|k| (k.group, k.plural)).collect();
        names.dedup();
        assert_eq!(names.len(), READ.len());
        assert_eq!(READ[5].api_version(), "gateway.networking.k8s.io/v1");
    }
}
