use std::cell::RefCell;
use std::collections::HashMap;

use super::*;

struct FakeAgent {
    reply: Result<AgentReply, String>,
    seen: RefCell<Vec<PodEvent>>,
}

impl Agent for FakeAgent {
    fn send(&self, _: &std::path::Path, ev: &PodEvent) -> Result<AgentReply, String> {
        self.seen.borrow_mut().push(ev.clone());
        self.reply.clone()
    }
}

fn agent(reply: Result<AgentReply, String>) -> FakeAgent {
    FakeAgent {
        reply,
        seen: RefCell::new(vec![]),
    }
}

fn ok(enrolled: bool) -> Result<AgentReply, String> {
    Ok(AgentReply {
        ok: true,
        enrolled,
        error: String::new(),
    })
}

fn env(cmd: &str) -> HashMap<&'static str, String> {
    [
        ("CNI_COMMAND", cmd.to_string()),
        ("CNI_CONTAINERID", "c0ffee".to_string()),
        ("CNI_NETNS", "/var/run/netns/pod".to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0".to_string(),
        ),
    ]
    .into_iter()
    .collect()
}

const CONF: &str = r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"keelson-cni",
  "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"10.0.0.5/24"}]}}"#;

fn call(e: &HashMap<&'static str, String>, stdin: &str, a: &FakeAgent) -> Result<String, CniError> {
    run(&|k: &str| e.get(k).cloned(), stdin, a)
}

#[test]
fn add_passes_the_previous_result_through() {
    let a = agent(ok(true));
    let out = call(&env("ADD"), CONF, &a).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ips"][0]["address"], "10.0.0.5/24");
    let seen = a.seen.borrow();
    assert_eq!(seen[0].pod, "web-0");
    assert_eq!(seen[0].namespace, "default");
    assert_eq!(seen[0].netns, "/var/run/netns/pod");
}

#[test]
fn failures_are_cni_errors_with_codes() {
    // The agent refuses: the pod fails with the reason.
    let a = agent(Ok(AgentReply {
        ok: false,
        enrolled: false,
        error: "ztunnel did not take the pod".into(),
    }));
    let e = call(&env("ADD"), CONF, &a).unwrap_err();
    assert_eq!(e.code, ENROLMENT_FAILED);
    assert!(e.msg.contains("default/web-0") && e.details.contains("ztunnel"));
    // The agent is down: try again later.
    let e = call(&env("ADD"), CONF, &agent(Err("connection refused".into()))).unwrap_err();
    assert_eq!(e.code, TRY_AGAIN_LATER);
    // Bad input.
    let e = call(&env("ADD"), "{not json", &agent(ok(true))).unwrap_err();
    assert_eq!(e.code, DECODE_FAILURE);
    let e = call(
        &env("ADD"),
        r#"{"cniVersion":"9.9.9","name":"x","type":"y"}"#,
        &agent(ok(true)),
    )
    .unwrap_err();
    assert_eq!(e.code, INCOMPATIBLE_VERSION);
    let mut no_id = env("ADD");
    no_id.remove("CNI_CONTAINERID");
    assert_eq!(
        call(&no_id, CONF, &agent(ok(true))).unwrap_err().code,
        INVALID_ENV
    );
    assert_eq!(
        call(&env("SHRUG"), CONF, &agent(ok(true)))
            .unwrap_err()
            .code,
        INVALID_ENV
    );
    // The error object is the spec's.
    let json = serde_json::to_value(CniError::new(7, "m", "d")).unwrap();
    assert_eq!(json["code"], 7);
    assert_eq!(json["cniVersion"], "1.0.0");
}

#[test]
fn del_always_succeeds_and_version_lists_the_specs() {
    let out = call(&env("DEL"), CONF, &agent(Err("agent gone".into()))).unwrap();
    assert!(out.is_empty());
    let v: serde_json::Value =
        serde_json::from_str(&call(&env("VERSION"), "", &agent(ok(true))).unwrap()).unwrap();
    assert!(v["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("0.4.0")));
}

#[test]
fn non_pod_containers_are_passed_through() {
    let mut e = env("ADD");
    e.insert("CNI_ARGS", "IgnoreUnknown=1".into());
    let a = agent(Err("must not be called".into()));
    assert!(call(&e, CONF, &a).is_ok());
    assert!(a.seen.borrow().is_empty());
}
