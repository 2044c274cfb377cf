use std::os::fd::AsFd;

use crate::socket::Listener;

use super::*;

#[derive(Default)]
struct Recorder {
    seen: Vec<String>,
}

impl Handler for Recorder {
    async fn handle(&mut self, event: Event) -> Result<(), String> {
        self.seen.push(match event {
            Event::Add { uid, info, .. } => format!("add {uid} {}/{}", info.namespace, info.name),
            Event::Keep { uid } => format!("keep {uid}"),
            Event::Del { uid } => format!("del {uid}"),
            Event::SnapshotSent => "snapshot".into(),
        });
        Ok(())
    }
}

fn request(p: pb::workload_request::Payload) -> Vec<u8> {
    pb::WorkloadRequest { payload: Some(p) }.encode_to_vec()
}

fn add(uid: &str) -> pb::workload_request::Payload {
    pb::workload_request::Payload::Add(pb::AddWorkload {
        uid: uid.into(),
        workload_info: Some(pb::WorkloadInfo {
            name: "web-0".into(),
            namespace: "default".into(),
            service_account: "web".into(),
        }),
    })
}

/// The node agent's side of a scripted session: each request with its optional descriptor,
/// and the Ack error expected back.
#[tokio::test]
async fn a_session_checks_every_request_and_acks_it() {
    let dir = std::env::temp_dir().join(format!("keelson-zds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ztunnel.sock");
    let listener = Listener::bind(&path).unwrap();
    let agent = tokio::spawn(async move {
        use pb::workload_request::Payload as P;
        let conn = listener.accept().await.unwrap();
        let (hello, fd) = conn.recv().await.unwrap().unwrap();
        assert!(fd.is_none());
        assert_eq!(
            pb::ZdsHello::decode(hello.as_slice()).unwrap().version,
            pb::Version::V1 as i32
        );
        let netns = std::fs::File::open("/proc/self/ns/net").unwrap();
        let plain_file = std::fs::File::open("/proc/self/status").unwrap();
        let script: Vec<(Vec<u8>, Option<&std::fs::File>, &str)> = vec![
            (request(add("uid-1")), Some(&netns), ""),
            (
                request(add("uid-2")),
                None,
                "Add without a network namespace descriptor",
            ),
            (
                request(add("uid-3")),
                Some(&plain_file),
                "not a network namespace",
            ),
            (
                request(P::Add(pb::AddWorkload {
                    uid: "uid-4".into(),
                    workload_info: None,
                })),
                Some(&netns),
                "Add without workload_info",
            ),
            (
                request(P::Keep(pb::KeepWorkload {
                    uid: "uid-5".into(),
                })),
                None,
                "",
            ),
            (
                request(P::Del(pb::DelWorkload {
                    uid: "uid-6".into(),
                })),
                Some(&netns),
                "a descriptor came with a request other than Add",
            ),
            (request(P::SnapshotSent(pb::SnapshotSent {})), None, ""),
            (
                request(P::Keep(pb::KeepWorkload {
                    uid: "uid-7".into(),
                })),
                None,
                "after the snapshot ended",
            ),
            (
                request(P::SnapshotSent(pb::SnapshotSent {})),
                None,
                "a second SnapshotSent",
            ),
            (
                request(P::Del(pb::DelWorkload {
                    uid: "uid-1".into(),
                })),
                None,
                "",
            ),
        ];
        for (msg, fd, want) in script {
            conn.send(&msg, fd.map(|f| f.as_fd())).await.unwrap();
            let (resp, _) = conn.recv().await.unwrap().unwrap();
            let ack = match pb::WorkloadResponse::decode(resp.as_slice())
                .unwrap()
                .payload
            {
                Some(pb::workload_response::Payload::Ack(a)) => a,
                None => panic!("no ack"),
            };
            if want.is_empty() {
                assert_eq!(ack.error, "");
            } else {
                assert!(ack.error.contains(want), "{} vs {want}", ack.error);
            }
        }
        // Garbage ends the session with an error on ztunnel's side.
        conn.send(&[0xff, 0xff, 0xff], None).await.unwrap();
        let _ = conn.recv().await;
    });
    let mut rec = Recorder::default();
    let r = session(&path, &mut rec).await;
    assert!(matches!(r, Err(ZdsError::Decode(_))), "{r:?}");
    agent.await.unwrap();
    assert_eq!(
        rec.seen,
        vec![
            "add uid-1 default/web-0",
            "keep uid-5",
            "snapshot",
            "del uid-1"
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
