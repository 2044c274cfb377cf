//! The mesh-wide settings resource names are read under.

/// Mesh-wide settings the translation needs.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    pub cluster_id: String,
    pub trust_domain: String,
    pub domain_suffix: String,
    /// Istio's root namespace: its policies without a selector apply mesh-wide.
    pub root_namespace: String,
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            cluster_id: "Kubernetes".into(),
            trust_domain: "cluster.local".into(),
            domain_suffix: "cluster.local".into(),
            root_namespace: "istio-system".into(),
        }
    }
}
