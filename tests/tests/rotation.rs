//! F7 of docs/HARDENING.md: the mesh's root CA replaced under traffic. The control plane
//! first trusts a new root beside the old one (`extra-roots.pem`), then signs with the new
//! one while still trusting the old, then drops the old. New connections made all along
//! never fail, and at the end a certificate from the old root is refused.

use std::sync::Arc;
use std::time::Duration;

use identity::{ca::EXTRA_ROOTS_FILE, Identity, LocalCa};
use keelson_tests::*;

const TTL: Duration = Duration::from_secs(6);

/// Waits a certificate lifetime (every certificate is renewed at half of it, so all those
/// in use now come from the control plane started last), then until every ztunnel's
/// certificates are valid and trust `roots` roots.
async fn renewed(tb: &Testbed, roots: u64) -> bool {
    tokio::time::sleep(TTL).await;
    eventually(Duration::from_secs(30), || async {
        ["client", "server"].iter().all(|pod| {
            let d = tb.config_dump(pod).unwrap();
            d["certificates"].as_array().is_some_and(|certs| {
                !certs.is_empty()
                    && certs
                        .iter()
                        .all(|c| c["state"] == "available" && c["roots"].as_u64() == Some(roots))
            })
        })
    })
    .await
    .is_some()
}

/// A CONNECT to the server's echo from the outsider pod with `tls`.
async fn served(
    tb: &Testbed,
    req: &hbone::ConnectRequest,
    tls: Arc<rustls::ClientConfig>,
) -> Result<hbone::stream::H2Stream, hbone::HboneError> {
    let c = hbone_from(tb, "outsider", tb.ip("server"), tls).await?;
    c.connect(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_is_rotated_without_a_failed_connection() {
    let mut tb = Testbed::start(Options {
        pods: vec![
            PodSpec::meshed("client"),
            PodSpec::meshed("server").serving_echo(8080),
            PodSpec::plain("outsider"),
        ],
        source: Source::ControlPlane,
        env: vec![
            ("SECRET_TTL".into(), format!("{}s", TTL.as_secs())),
            ("POOL_UNUSED_RELEASE_TIMEOUT".into(), "100ms".into()),
        ],
        ..Options::default()
    })
    .unwrap();
    let to = spawn_echo(&tb, "server", 8080).unwrap();
    let dir = tb.cp_state_dir();
    let old_cert = std::fs::read_to_string(dir.join("root-cert.pem")).unwrap();
    let old_key = std::fs::read_to_string(dir.join("root-key.pem")).unwrap();
    let old = LocalCa::from_pem(&old_cert, &old_key, TTL).unwrap();
    let new = LocalCa::generate("cluster.local", TTL).unwrap();

    let server_id = Identity::new("cluster.local", "default", "server");
    let outsider = Identity::new("cluster.local", "default", "outsider");
    let req = hbone::ConnectRequest::new(to.to_string(), "10.10.0.4:1".parse().unwrap(), None);

    // Traffic all along: a new connection every 300 ms, each checked; each on a new HBONE
    // connection (the pool lets one go after 100 ms unused), so with the certificates of
    // the moment.
    let traffic = Traffic::start(tb.pod("client").path(), to, Duration::from_millis(300), 6);

    // A node that has not renewed since the previous phase holds a certificate from that
    // phase: it must be served too (the ztunnels here renew in step, so it is the test that
    // plays the late node, from the outsider pod).
    let late = |ca: &LocalCa| {
        let cert = ca.issue(&outsider).unwrap();
        hbone::tls::client_config(&cert, vec![server_id.clone()]).unwrap()
    };

    // 1. The new root is trusted beside the old, which still signs.
    std::fs::write(dir.join(EXTRA_ROOTS_FILE), new.root_pem()).unwrap();
    tb.restart_control_plane().unwrap();
    assert!(
        renewed(&tb, 2).await,
        "phase 1: {}",
        tb.config_dump("client").unwrap()["certificates"]
    );
    served(&tb, &req, late(&old))
        .await
        .expect("phase 1, a node still on the old root alone");

    // 2. The new root signs; the old is still trusted.
    std::fs::write(dir.join("root-cert.pem"), new.root_pem()).unwrap();
    identity::ca::write_private(&dir.join("root-key.pem"), &new.key_pem()).unwrap();
    std::fs::write(dir.join(EXTRA_ROOTS_FILE), &old_cert).unwrap();
    tb.restart_control_plane().unwrap();
    assert!(renewed(&tb, 2).await, "phase 2");
    let old_and_new = LocalCa::from_pem(&old_cert, &old_key, TTL)
        .unwrap()
        .with_extra_roots(new.root_pem())
        .unwrap();
    served(&tb, &req, late(&old_and_new))
        .await
        .expect("phase 2, a node of phase 1");

    // 3. The old root goes.
    std::fs::remove_file(dir.join(EXTRA_ROOTS_FILE)).unwrap();
    tb.restart_control_plane().unwrap();
    assert!(renewed(&tb, 1).await, "phase 3");
    let new_and_old = LocalCa::from_pem(new.root_pem(), &new.key_pem(), TTL)
        .unwrap()
        .with_extra_roots(&old_cert)
        .unwrap();
    served(&tb, &req, late(&new_and_old))
        .await
        .expect("phase 3, a node of phase 2");

    let (made, errors) = traffic.stop().await;
    eprintln!(
        "{made} connections during the rotation, {} failed",
        errors.len()
    );
    assert!(made > 40, "{made} connections");
    assert!(errors.is_empty(), "{errors:?}");

    // A client holding a certificate from the old root is refused now; one from the new
    // root is served.
    let server_id = Identity::new("cluster.local", "default", "server");
    let outsider = Identity::new("cluster.local", "default", "outsider");
    let try_with = |ca: &LocalCa| {
        let cert = ca.issue(&outsider).unwrap();
        hbone::tls::client_config(&cert, vec![server_id.clone()]).unwrap()
    };
    let req = hbone::ConnectRequest::new(to.to_string(), "10.10.0.4:1".parse().unwrap(), None);
    let with_old = async {
        let c = hbone_from(&tb, "outsider", to.ip(), try_with(&old)).await?;
        c.connect(&req).await
    }
    .await;
    assert!(
        with_old.is_err(),
        "a certificate from the old root was accepted"
    );
    let with_new = async {
        let c = hbone_from(&tb, "outsider", to.ip(), try_with(&new)).await?;
        c.connect(&req).await
    }
    .await;
    assert!(with_new.is_ok(), "{:?}", with_new.err());
}
