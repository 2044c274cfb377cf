//! HTTP/2 PING keepalive: a PING every `interval`; returns when one goes unanswered for
//! `timeout`, so the caller can drop the connection. Never returns if PINGs are unavailable.

use std::time::Duration;

pub(crate) async fn run(ping: Option<h2::PingPong>, interval: Duration, timeout: Duration) {
    let Some(mut ping) = ping else {
        return futures::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => continue,
            // The connection is closing on its own; let its driver finish.
            Ok(Err(_)) => return futures::future::pending().await,
            Err(_) => return,
        }
    }
}
