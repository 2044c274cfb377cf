//! `keelson install` and `keelson uninstall`: every object a cluster needs, built from typed
//! `k8s-openapi` structs ([`objects`]) with typed, validated values ([`values`]), printed as
//! YAML for `kubectl apply -f -`, or applied through the API server with `--apply`
//! ([`apply`]; docs/KUBERNETES.md).

pub mod apply;
pub mod objects;
pub mod values;

pub use objects::Object;
pub use values::Values;

/// What `keelson install` and `uninstall` were asked for.
#[derive(Debug, Default)]
pub struct InstallArgs {
    pub values_file: Option<String>,
    pub sets: Vec<String>,
    /// Apply (or delete) through the API server instead of printing.
    pub apply: bool,
    /// The kubeconfig for `apply`; `None`: `KUBECONFIG`, `~/.kube/config` or in-cluster.
    pub kubeconfig: Option<String>,
}

impl InstallArgs {
    /// `[--values FILE] [--set k=v]... [--dry-run | --apply [--kubeconfig FILE]]`
    /// (printing, the dry run, is the default).
    pub fn parse(args: &[&str]) -> Result<InstallArgs, String> {
        let mut out = InstallArgs::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || {
                it.next()
                    .map(|v| v.to_string())
                    .ok_or(format!("{a} needs a value"))
            };
            match *a {
                "--values" | "-f" => out.values_file = Some(value()?),
                "--set" => out.sets.push(value()?),
                "--dry-run" => out.apply = false,
                "--apply" => out.apply = true,
                "--kubeconfig" => out.kubeconfig = Some(value()?),
                other => return Err(format!("unknown option {other}")),
            }
        }
        Ok(out)
    }

    pub fn values(&self) -> Result<Values, String> {
        let text = match &self.values_file {
            Some(f) => Some(std::fs::read_to_string(f).map_err(|e| format!("reading {f}: {e}"))?),
            None => None,
        };
        Values::load(text.as_deref(), &self.sets)
    }
}

/// The objects, to apply or delete through the API server (`--apply`).
pub fn objects(values: &Values) -> Vec<Object> {
    objects::all(values)
}

/// The install as one multi-document YAML stream.
pub fn manifest(values: &Values) -> Result<String, String> {
    let mut out = String::from("# keelson install: apply with `kubectl apply -f -`\n");
    for o in objects::all(values) {
        out.push_str("---\n");
        out.push_str(&o.to_yaml().map_err(|e| format!("{}: {e}", o.describe()))?);
    }
    Ok(out)
}

/// What `keelson uninstall` removes, last-created first, as `kubectl delete` would be told.
pub fn removal(values: &Values) -> Vec<String> {
    objects::all(values)
        .iter()
        .rev()
        .map(Object::describe)
        .collect()
}
