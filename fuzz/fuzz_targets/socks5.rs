//! ztunnel's SOCKS5 handshake on a client's bytes (the client's side ends after them).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            ztunnel::proxy::socks5::handshake(&mut server),
        )
        .await;
    });
});
