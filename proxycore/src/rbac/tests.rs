use super::*;

fn id(ns: &str, sa: &str) -> Option<Identity> {
    Some(Identity::new("cluster.local", ns, sa))
}

fn conn(src: Option<Identity>, src_ip: &str, dst_port: u16) -> Conn {
    Conn {
        src_identity: src,
        src_ip: src_ip.parse().unwrap(),
        dst_ip: "10.0.0.9".parse().unwrap(),
        dst_port,
    }
}

fn policy(action: Action, m: Match) -> Policy {
    Policy {
        name: "p".into(),
        namespace: "ns".into(),
        scope: Scope::Namespace,
        action,
        rules: vec![vec![vec![m]]],
        dry_run: false,
    }
}

fn cidr(s: &str) -> Cidr {
    let (a, l) = s.split_once('/').unwrap();
    Cidr {
        addr: a.parse().unwrap(),
        len: l.parse().unwrap(),
    }
}

fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.into())
}

/// The matrix: (case, policies, connection, allowed?).
#[test]
fn policy_matrix() {
    let web = || id("shop", "web");
    let admin = || id("ops", "admin");
    let allow = |m: Match| policy(Action::Allow, m);
    let deny = |m: Match| policy(Action::Deny, m);
    let cases: Vec<(&str, Vec<Policy>, Conn, bool)> = vec![
        (
            "no policies allow",
            vec![],
            conn(web(), "10.1.0.1", 80),
            true,
        ),
        (
            "allow-all rule",
            vec![policy(Action::Allow, Match::default())],
            conn(None, "10.1.0.1", 80),
            true,
        ),
        (
            "allow principal exact",
            vec![allow(Match {
                principals: vec![exact("cluster.local/ns/shop/sa/web")],
                ..Default::default()
            })],
            conn(web(), "10.1.0.1", 80),
            true,
        ),
        (
            "allow principal other",
            vec![allow(Match {
                principals: vec![exact("cluster.local/ns/shop/sa/web")],
                ..Default::default()
            })],
            conn(admin(), "10.1.0.1", 80),
            false,
        ),
        (
            "principal needs identity",
            vec![allow(Match {
                principals: vec![StringMatch::Presence],
                ..Default::default()
            })],
            conn(None, "10.1.0.1", 80),
            false,
        ),
        (
            "principal prefix",
            vec![allow(Match {
                principals: vec![StringMatch::Prefix("cluster.local/ns/shop/".into())],
                ..Default::default()
            })],
            conn(web(), "10.1.0.1", 80),
            true,
        ),
        (
            "principal suffix",
            vec![allow(Match {
                principals: vec![StringMatch::Suffix("/sa/admin".into())],
                ..Default::default()
            })],
            conn(web(), "10.1.0.1", 80),
            false,
        ),
        (
            "allow namespace",
            vec![allow(Match {
                namespaces: vec![exact("ops")],
                ..Default::default()
            })],
            conn(admin(), "10.1.0.1", 80),
            true,
        ),
        (
            "not_namespaces",
            vec![allow(Match {
                not_namespaces: vec![exact("ops")],
                ..Default::default()
            })],
            conn(admin(), "10.1.0.1", 80),
            false,
        ),
        (
            "service account pair",
            vec![allow(Match {
                service_accounts: vec![("shop".into(), "web".into())],
                ..Default::default()
            })],
            conn(web(), "10.1.0.1", 80),
            true,
        ),
        (
            "service account other ns",
            vec![allow(Match {
                service_accounts: vec![("ops".into(), "web".into())],
                ..Default::default()
            })],
            conn(web(), "10.1.0.1", 80),
            false,
        ),
        (
            "not service account",
            vec![allow(Match {
                not_service_accounts: vec![("shop".into(), "web".into())],
                ..Default::default()
            })],
            conn(web(), "10.1.0.1", 80),
            false,
        ),
        (
            "source CIDR in",
            vec![allow(Match {
                source_ips: vec![cidr("10.1.0.0/16")],
                ..Default::default()
            })],
            conn(None, "10.1.7.7", 80),
            true,
        ),
        (
            "source CIDR out",
            vec![allow(Match {
                source_ips: vec![cidr("10.1.0.0/16")],
                ..Default::default()
            })],
            conn(None, "10.2.0.1", 80),
            false,
        ),
        (
            "not source CIDR",
            vec![allow(Match {
                not_source_ips: vec![cidr("10.1.0.1/32")],
                ..Default::default()
            })],
            conn(None, "10.1.0.1", 80),
            false,
        ),
        (
            "destination CIDR",
            vec![allow(Match {
                destination_ips: vec![cidr("10.0.0.0/24")],
                ..Default::default()
            })],
            conn(None, "10.1.0.1", 80),
            true,
        ),
        (
            "not destination CIDR",
            vec![allow(Match {
                not_destination_ips: vec![cidr("10.0.0.9/32")],
                ..Default::default()
            })],
            conn(None, "10.1.0.1", 80),
            false,
        ),
        (
            "destination port",
            vec![allow(Match {
                destination_ports: vec![8080],
                ..Default::default()
            })],
            conn(web(), "10.1.0.1", 8080),
            true,
        ),
        (
            "other destination port",
            vec![allow(Match {
                destination_ports: vec![8080],
                ..Default::default()
            })],
            conn(web(), "10.1.0.1", 9090),
            false,
        ),
        (
            "not destination port",
            vec![allow(Match {
                not_destination_ports: vec![9090],
                ..Default::default()
            })],
            conn(web(), "10.1.0.1", 9090),
            false,
        ),
        (
            "kinds are AND-ed",
            vec![allow(Match {
                namespaces: vec![exact("shop")],
                destination_ports: vec![80],
                ..Default::default()
            })],
            conn(web(), "10.1.0.1", 81),
            false,
        ),
        (
            "deny wins over allow",
            vec![
                allow(Match::default()),
                deny(Match {
                    namespaces: vec![exact("shop")],
                    ..Default::default()
                }),
            ],
            conn(web(), "10.1.0.1", 80),
            false,
        ),
        (
            "deny not matching leaves allow",
            vec![deny(Match {
                namespaces: vec![exact("ops")],
                ..Default::default()
            })],
            conn(web(), "10.1.0.1", 80),
            true,
        ),
        (
            "STRICT: plaintext denied",
            vec![deny(Match {
                not_principals: vec![StringMatch::Presence],
                ..Default::default()
            })],
            conn(None, "10.1.0.1", 80),
            false,
        ),
        (
            "STRICT: mTLS passes",
            vec![deny(Match {
                not_principals: vec![StringMatch::Presence],
                ..Default::default()
            })],
            conn(web(), "10.1.0.1", 80),
            true,
        ),
        (
            "one of several allows",
            vec![
                allow(Match {
                    namespaces: vec![exact("ops")],
                    ..Default::default()
                }),
                allow(Match {
                    destination_ports: vec![80],
                    ..Default::default()
                }),
            ],
            conn(web(), "10.1.0.1", 80),
            true,
        ),
        (
            "IPv6 CIDR",
            vec![allow(Match {
                source_ips: vec![cidr("fd00::/8")],
                ..Default::default()
            })],
            conn(None, "fd00::5", 80),
            true,
        ),
        (
            "v4-mapped source",
            vec![allow(Match {
                source_ips: vec![cidr("10.1.0.0/16")],
                ..Default::default()
            })],
            conn(None, "::ffff:10.1.0.1", 80),
            true,
        ),
    ];
    assert!(cases.len() >= 20);
    for (name, policies, c, allowed) in cases {
        let d = evaluate(&policies, &c);
        assert_eq!(d == Decision::Allow, allowed, "{name}: {d:?}");
    }
}

#[test]
fn rules_clauses_and_matches_combine_as_specified() {
    let web = id("shop", "web");
    let ns = |n: &str| Match {
        namespaces: vec![exact(n)],
        ..Default::default()
    };
    let port = |p: u16| Match {
        destination_ports: vec![p],
        ..Default::default()
    };
    let mut p = policy(Action::Allow, Match::default());
    // One rule: (ns=shop OR ns=ops) AND (port 80).
    p.rules = vec![vec![vec![ns("shop"), ns("ops")], vec![port(80)]]];
    assert!(p.matches(&conn(web.clone(), "10.1.0.1", 80)));
    assert!(!p.matches(&conn(web.clone(), "10.1.0.1", 81)));
    // A second rule OR-ed in: port 81 alone.
    p.rules.push(vec![vec![port(81)]]);
    assert!(p.matches(&conn(web.clone(), "10.1.0.1", 81)));
    // No rules: never matches, so an ALLOW policy without rules denies everything.
    p.rules.clear();
    assert_eq!(
        evaluate([&p], &conn(web, "10.1.0.1", 80)),
        Decision::Deny(None)
    );
}

#[test]
fn dry_run_policies_do_not_enforce() {
    let mut p = policy(Action::Deny, Match::default());
    p.dry_run = true;
    assert_eq!(evaluate([&p], &conn(None, "10.1.0.1", 80)), Decision::Allow);
    p.dry_run = false;
    assert_eq!(
        evaluate([&p], &conn(None, "10.1.0.1", 80)),
        Decision::Deny(Some("ns/p".into()))
    );
}

#[test]
fn conversion_is_strict() {
    let base = pb::Authorization {
        name: "p".into(),
        namespace: "ns".into(),
        rules: vec![pb::Rule {
            clauses: vec![pb::Clause {
                matches: vec![pb::Match {
                    source_ips: vec![pb::Address {
                        address: vec![10, 1, 0, 0],
                        length: 16,
                    }],
                    destination_ports: vec![8080],
                    not_principals: vec![pb::StringMatch {
                        match_type: Some(pb::string_match::MatchType::Presence(())),
                    }],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    let p = convert(base.clone()).unwrap();
    assert_eq!(p.rules[0][0][0].source_ips, vec![cidr("10.1.0.0/16")]);
    assert_eq!(p.rules[0][0][0].not_principals, vec![StringMatch::Presence]);
    let bad_scope = pb::Authorization {
        scope: 9,
        ..base.clone()
    };
    assert_eq!(convert(bad_scope).unwrap_err().field, "scope");
    let mut bad_prefix = base.clone();
    bad_prefix.rules[0].clauses[0].matches[0].source_ips[0].length = 33;
    assert_eq!(convert(bad_prefix).unwrap_err().field, "source_ips");
    let mut bad_port = base;
    bad_port.rules[0].clauses[0].matches[0].destination_ports = vec![70000];
    assert_eq!(convert(bad_port).unwrap_err().field, "destination_ports");
}

#[test]
fn policies_read_from_yaml() {
    let p: Policy = serde_yaml::from_str(
        "name: strict\nnamespace: istio-system\nscope: Global\naction: Deny\nrules: [[[{notPrincipals: [{presence: {}}], notSourceIps: [10.0.0.0/8, 'fd00::1']}]]]\n",
    )
    .unwrap();
    let m = &p.rules[0][0][0];
    assert_eq!(m.not_principals, vec![StringMatch::Presence]);
    assert_eq!(
        m.not_source_ips,
        vec![cidr("10.0.0.0/8"), cidr("fd00::1/128")]
    );
    for bad in [
        "name: x\nnamespace: y\nscope: Global\naction: Deny\nrules: [[[{principals: [{exact: a, prefix: b}]}]]]\n",
        "name: x\nnamespace: y\nscope: Global\naction: Deny\nrules: [[[{sourceIps: [10.0.0.0/33]}]]]\n",
        "name: x\nnamespace: y\nscope: Global\naction: Maybe\n",
        "name: x\nnamespace: y\nscope: Global\naction: Deny\nrules: [[[{destinationPort: [80]}]]]\n",
    ] {
        assert!(serde_yaml::from_str::<Policy>(bad).is_err(), "{bad}");
    }
}
