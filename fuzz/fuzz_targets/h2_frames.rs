//! The HTTP/2 frame budget reader (hbone::guard) on a peer's bytes, split at arbitrary
//! points: it must follow any framing without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncReadExt;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let budget = hbone::guard::Budget::new(&hbone::guard::FrameLimits::default());
        let mut g =
            hbone::guard::FrameGuard::server(std::io::Cursor::new(data.to_vec()), budget.clone());
        let mut buf = [0u8; 7];
        loop {
            if budget.flood().is_some() {
                break;
            }
            match g.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    });
});
