//! The ztunnel HBONE server (15008) against clients the test controls: identities, status
//! codes, refused ports. The test client runs in a pod outside the mesh, so nothing redirects it.

use std::net::SocketAddr;

use identity::Identity;
use keelson_tests::*;

fn options() -> Options {
    Options {
        pods: vec![
            PodSpec::meshed("server").serving_echo(8080),
            PodSpec::plain("outsider"),
        ],
        ..Options::default()
    }
}

fn server_id() -> Identity {
    Identity::new("cluster.local", "default", "server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_are_checked_both_ways() {
    let tb = Testbed::start(options()).unwrap();
    spawn_echo(&tb, "server", 8080).unwrap();
    let server = tb.ip("server");
    let target = SocketAddr::new(server, 8080).to_string();
    let req = hbone::ConnectRequest::new(target, "10.10.0.3:1".parse().unwrap(), None);
    let ca = testbed_ca(&tb);
    let good = ca
        .issue(&Identity::new("cluster.local", "default", "outsider"))
        .unwrap();

    // A properly identified client gets a stream.
    let conn = hbone_from(
        &tb,
        "outsider",
        server,
        hbone::tls::client_config(&good, vec![server_id()]).unwrap(),
    )
    .await
    .unwrap();
    let mut s = conn
        .connect(&req)
        .await
        .expect("valid client must be accepted");
    s.send
        .send_data(bytes::Bytes::from_static(b"ping"), true)
        .unwrap();
    let echoed = s.recv.data().await.unwrap().unwrap();
    assert_eq!(&echoed[..], b"ping");

    // The client refuses a server that is not the identity it expects.
    let wrong = vec![Identity::new("cluster.local", "default", "someone-else")];
    let err = hbone_from(
        &tb,
        "outsider",
        server,
        hbone::tls::client_config(&good, wrong).unwrap(),
    )
    .await
    .err();
    assert!(matches!(err, Some(hbone::HboneError::Tls(_))), "{err:?}");

    // No client certificate: no stream.
    let r = async {
        let c = hbone_from(&tb, "outsider", server, tls_without_client_cert()).await?;
        c.connect(&req).await
    }
    .await;
    assert!(
        r.is_err(),
        "a client without a certificate must be rejected"
    );

    // A certificate from another root: no stream.
    let other =
        identity::LocalCa::generate("cluster.local", identity::ca::DEFAULT_CERT_TTL).unwrap();
    let mut foreign = other
        .issue(&Identity::new("cluster.local", "default", "outsider"))
        .unwrap();
    foreign.roots = vec![ca.root_der().clone()];
    let r = async {
        let c = hbone_from(
            &tb,
            "outsider",
            server,
            hbone::tls::client_config(&foreign, vec![server_id()]).unwrap(),
        )
        .await?;
        c.connect(&req).await
    }
    .await;
    assert!(
        r.is_err(),
        "a client certificate from another root must be rejected"
    );

    // Right root, wrong trust domain: no stream.
    let other_td = ca
        .issue(&Identity::new("evil.example", "default", "outsider"))
        .unwrap();
    let r = async {
        let c = hbone_from(
            &tb,
            "outsider",
            server,
            hbone::tls::client_config(&other_td, vec![server_id()]).unwrap(),
        )
        .await?;
        c.connect(&req).await
    }
    .await;
    assert!(
        r.is_err(),
        "a client in another trust domain must be rejected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_400_and_own_ports_are_refused() {
    let tb = Testbed::start(options()).unwrap();
    spawn_echo(&tb, "server", 8080).unwrap();
    let server = tb.ip("server");
    let ca = testbed_ca(&tb);
    let cert = ca
        .issue(&Identity::new("cluster.local", "default", "outsider"))
        .unwrap();
    let conn = hbone_from(
        &tb,
        "outsider",
        server,
        hbone::tls::client_config(&cert, vec![server_id()]).unwrap(),
    )
    .await
    .unwrap();

    // Not CONNECT.
    let get = http::Request::get(format!("https://{server}:8080/"))
        .body(())
        .unwrap();
    let (resp, _) = conn.raw_sender().send_request(get, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 400);

    let status = |authority: &str| {
        let authority = authority.to_string();
        let req =
            hbone::ConnectRequest::new(authority.clone(), "10.10.0.3:1".parse().unwrap(), None);
        let conn = conn.clone();
        async move {
            match conn.connect(&req).await {
                Ok(_) => 200,
                Err(hbone::HboneError::Status(s)) => s.as_u16(),
                Err(e) => panic!("{authority}: unexpected error {e}"),
            }
        }
    };
    // Malformed authorities and an IP that is not this pod.
    assert_eq!(status("not_a_host:80").await, 400);
    assert_eq!(status("echo:0").await, 400);
    assert_eq!(
        status("10.10.0.99:8080").await,
        400,
        "authority IP must match the pod"
    );
    assert_eq!(status(&format!("{server}:0")).await, 400, "port 0");
    // ztunnel's own ports are never a destination; 15020 (metrics) and 15053 (DNS) are
    // ztunnel's own listeners in this pod, which it would otherwise dial. 503 as upstream.
    for port in [15001, 15006, 15008, 15020, 15053] {
        assert_eq!(
            status(&format!("{server}:{port}")).await,
            503,
            "port {port}"
        );
    }
    // Nothing listening: 503.
    assert_eq!(status(&format!("{server}:9999")).await, 503);
    // A service hostname authority resolves to the pod's target port.
    assert_eq!(
        status(&format!(
            "{}:{}",
            testbed::SERVICE_HOST,
            testbed::SERVICE_PORT
        ))
        .await,
        200
    );
    assert_eq!(status(&format!("{server}:8080")).await, 200);

    // The bad requests were logged and counted, and the connection still works.
    let m = tb.metrics("server").unwrap();
    let failed = metric_value(
        &m,
        "istio_tcp_connections_failed_total",
        &[("reporter", "destination")],
    )
    .unwrap_or(0.0);
    assert!(failed >= 7.0, "failed connections counted: {failed}\n{m}");
    assert!(
        tb.log("server").contains("connection failed"),
        "access log of the failures"
    );
}

/// A certificate for `outsider` made by the testbed's CA with `edit` applied to it, and the
/// chain to present (`intermediates` CAs between the root and the leaf).
fn crafted(
    tb: &Testbed,
    intermediates: usize,
    edit: impl FnOnce(&mut rcgen::CertificateParams),
) -> identity::WorkloadCertificate {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
    };
    let dir = tb.ca_dir();
    let root_pem = std::fs::read_to_string(dir.join("root-cert.pem")).unwrap();
    let mut issuer_key =
        KeyPair::from_pem(&std::fs::read_to_string(dir.join("root-key.pem")).unwrap()).unwrap();
    let mut issuer = CertificateParams::from_ca_cert_pem(&root_pem)
        .unwrap()
        .self_signed(&issuer_key)
        .unwrap();
    let mut chain = Vec::new();
    for i in 0..intermediates {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("intermediate {i}"));
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer, &issuer_key).unwrap();
        chain.insert(0, cert.der().clone());
        (issuer, issuer_key) = (cert, key);
    }
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![SanType::URI(
        "spiffe://cluster.local/ns/default/sa/outsider"
            .try_into()
            .unwrap(),
    )];
    p.is_ca = IsCa::ExplicitNoCa;
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = std::time::SystemTime::now();
    p.not_before = (now - std::time::Duration::from_secs(3600)).into();
    p.not_after = (now + std::time::Duration::from_secs(3600)).into();
    edit(&mut p);
    let key = KeyPair::generate().unwrap();
    let leaf = p.signed_by(&key, &issuer, &issuer_key).unwrap();
    chain.insert(0, leaf.der().clone());
    let root = rustls_pemfile_root(&root_pem);
    identity::WorkloadCertificate {
        identity: Identity::new("cluster.local", "default", "outsider"),
        chain,
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        roots: vec![root],
        not_before: now,
        not_after: now,
    }
}

fn rustls_pemfile_root(pem: &str) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// The certificate cases of the test plan (docs/HARDENING.md, bad input 11-16): each is
/// refused by ztunnel's HBONE server in well under a second (a NUL or another scheme in the
/// URI SAN too); a well-made one is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_client_certificates_are_refused() {
    use rcgen::{BasicConstraints, ExtendedKeyUsagePurpose, IsCa, SanType};
    let tb = Testbed::start(options()).unwrap();
    spawn_echo(&tb, "server", 8080).unwrap();
    let server = tb.ip("server");
    let req = hbone::ConnectRequest::new(
        SocketAddr::new(server, 8080).to_string(),
        "10.10.0.3:1".parse().unwrap(),
        None,
    );
    let day = std::time::Duration::from_secs(24 * 3600);
    let now = std::time::SystemTime::now();
    let try_cert = |cert: identity::WorkloadCertificate| {
        let tls = hbone::tls::client_config(&cert, vec![server_id()]).unwrap();
        let (tb, req) = (&tb, &req);
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let c = hbone_from(tb, "outsider", server, tls).await?;
                c.connect(req).await
            }
            .await;
            (r.is_ok(), started.elapsed())
        }
    };
    let (ok, _) = try_cert(crafted(&tb, 0, |_| {})).await;
    assert!(ok, "a well-made certificate is accepted");
    let (ok, _) = try_cert(crafted(&tb, 1, |_| {})).await;
    assert!(ok, "one intermediate is fine");

    let cases: Vec<(&str, identity::WorkloadCertificate)> = vec![
        (
            "expired",
            crafted(&tb, 0, |p| {
                p.not_before = (now - 2 * day).into();
                p.not_after = (now - day).into();
            }),
        ),
        (
            "not yet valid",
            crafted(&tb, 0, |p| {
                p.not_before = (now + day).into();
                p.not_after = (now + 2 * day).into();
            }),
        ),
        (
            "DNS SAN only",
            crafted(&tb, 0, |p| {
                p.subject_alt_names =
                    vec![SanType::DnsName("spiffe.cluster.local".try_into().unwrap())];
            }),
        ),
        (
            "two URI SANs",
            crafted(&tb, 0, |p| {
                p.subject_alt_names.push(SanType::URI(
                    "spiffe://cluster.local/ns/default/sa/admin"
                        .try_into()
                        .unwrap(),
                ));
            }),
        ),
        (
            "a NUL inside the URI SAN",
            crafted(&tb, 0, |p| {
                p.subject_alt_names = vec![SanType::URI(
                    "spiffe://cluster.local/ns/default/sa/outsider\0.admin"
                        .try_into()
                        .unwrap(),
                )];
            }),
        ),
        (
            "a URI SAN that is not SPIFFE",
            crafted(&tb, 0, |p| {
                p.subject_alt_names = vec![SanType::URI(
                    "https://cluster.local/ns/default/sa/outsider"
                        .try_into()
                        .unwrap(),
                )];
            }),
        ),
        (
            "CA certificate as leaf",
            crafted(&tb, 0, |p| {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
            }),
        ),
        (
            "serverAuth only",
            crafted(&tb, 0, |p| {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]
            }),
        ),
        ("a chain of 12 intermediates", crafted(&tb, 12, |_| {})),
    ];
    for (what, cert) in cases {
        let (ok, took) = try_cert(cert).await;
        assert!(!ok, "{what}: accepted");
        assert!(took < std::time::Duration::from_secs(2), "{what}: {took:?}");
    }
    // The server is fine.
    let (ok, _) = try_cert(crafted(&tb, 0, |_| {})).await;
    assert!(ok);
}
