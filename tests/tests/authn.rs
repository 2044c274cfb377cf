//! RequestAuthentication at a waypoint (docs/WIRE.md §8): JWTs checked against a JWKS the
//! control plane reads from a file, 401 for a token that does not verify, and the verified
//! principal and claims matched by an AuthorizationPolicy's `requestPrincipals` and
//! `request.auth.claims[...]`.

use keelson_tests::mesh::{eventually_sync as eventually, Mesh, WAYPOINT};
use l7::jwt::testing::Signer;

#[test]
fn jwts_authenticate_requests_and_policies_match_their_claims() {
    let mesh = Mesh::tagged("j");
    mesh.ok(&["up"]);
    let waypoint = mesh.write("waypoint.yaml", WAYPOINT);
    mesh.ok(&["apply", "-f", waypoint.to_str().unwrap()]);
    let signer = Signer::new();
    let jwks = mesh.write("jwks.json", &signer.jwks());
    let policies = mesh.write(
        "jwt.yaml",
        &format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: jwt
spec:
  jwtRules:
  - issuer: issuer.keelson.test
    jwksUri: file://{}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: productpage-for-devs
spec:
  targetRefs: [{{kind: Service, group: \"\", name: productpage}}]
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: [\"issuer.keelson.test/*\"]}}}}]
    when: [{{key: \"request.auth.claims[groups]\", values: [dev]}}]
",
            jwks.display()
        ),
    );
    mesh.ok(&["apply", "-f", policies.to_str().unwrap()]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |sub: &str, groups: &[&str], exp: u64| {
        signer.token(&serde_json::json!({
            "iss": "issuer.keelson.test", "sub": sub, "groups": groups, "exp": exp,
        }))
    };
    let call = |token: Option<&str>| {
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        let mut args = vec!["-H", "x-probe: 1"];
        if let Some(a) = &auth {
            args = vec!["-H", a.as_str()];
        }
        args.push("http://productpage:9080/productpage");
        mesh.curl_i(&args)
    };
    let dev = token("alice", &["dev"], now + 600);
    // Until the policies are in, then: no token 403, a dev's token 200.
    let mut last = (0, String::new());
    assert!(
        eventually(15, || {
            last = call(None);
            last.0 == 403
        }),
        "{last:?}"
    );
    let (status, page) = call(Some(&dev));
    assert_eq!(status, 200, "{page}");
    // A verified token without the claim: 403; one that does not verify: 401.
    assert_eq!(call(Some(&token("bob", &["ops"], now + 600))).0, 403);
    let (status, body) = call(Some(&token("alice", &["dev"], now - 3600)));
    assert!(status == 401 && body.contains("Jwt is expired"), "{body}");
    let forged = Signer::new().token(&serde_json::json!({
        "iss": "issuer.keelson.test", "sub": "mallory", "groups": ["dev"], "exp": now + 600,
    }));
    let (status, body) = call(Some(&forged));
    assert!(
        status == 401 && body.contains("Jwt verification fails"),
        "{body}"
    );
    // The denial and the 401 are in the waypoint's access log, with why.
    assert!(
        eventually(5, || mesh
            .waypoint_log()
            .contains("request authentication: Jwt is expired")),
        "{}",
        mesh.waypoint_log()
    );

    // A JWKS served by a pod in the mesh, named by URL: the waypoint fetches it through the
    // mesh; reviews then admits that issuer's tokens only.
    let remote = Signer::new();
    let dir = mesh.home.join("jwks-site");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("keys.json"), remote.jwks()).unwrap();
    let site = mesh.write(
        "jwks-site.yaml",
        &format!(
            "apiVersion: v1
kind: Service
metadata:
  name: jwks
spec:
  selector: {{app: jwks}}
  ports: [{{port: 80, targetPort: 9080, name: http}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: jwks
  labels: {{app: jwks}}
spec:
  containers:
  - name: site
    image: python:3
    command: [python3, -m, http.server, '9080', --directory, {}]
    ports: [{{containerPort: 9080}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: remote
spec:
  targetRefs: [{{kind: Service, group: \"\", name: reviews}}]
  jwtRules:
  - issuer: remote.keelson.test
    jwksUri: http://jwks.default.svc.cluster.local/keys.json
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: reviews-for-remote
spec:
  targetRefs: [{{kind: Service, group: \"\", name: reviews}}]
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: [\"remote.keelson.test/*\"]}}}}]
",
            dir.display()
        ),
    );
    mesh.ok(&["apply", "-f", site.to_str().unwrap()]);
    let remote_token = remote.token(&serde_json::json!({
        "iss": "remote.keelson.test", "sub": "carol", "exp": now + 600,
    }));
    let reviews = |token: &str| {
        let auth = format!("Authorization: Bearer {token}");
        mesh.curl_i(&["-H", &auth, "http://reviews:9080/reviews/0"])
    };
    assert!(
        eventually(20, || {
            last = reviews(&remote_token);
            last.0 == 200
        }),
        "{last:?}\n{}",
        mesh.waypoint_log()
    );
    assert!(mesh.waypoint_log().contains("JWKS fetched"));
    // The other issuer's token verifies (the namespace-wide rule) but is not this issuer's:
    // 403; a forged token of this issuer: 401.
    assert_eq!(reviews(&dev).0, 403);
    let forged = Signer::new().token(&serde_json::json!({
        "iss": "remote.keelson.test", "sub": "mallory", "exp": now + 600,
    }));
    assert_eq!(reviews(&forged).0, 401);
}
