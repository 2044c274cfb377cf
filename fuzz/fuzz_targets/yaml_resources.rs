//! The control plane's YAML resource loader, then the translation of what loaded.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut res = resources::Resources::default();
    if res.add_text("fuzz.yaml", text).is_ok() {
        let mesh = resources::MeshSettings::default();
        let _ = controlplane::snapshot::Snapshot::build(&res, &mesh);
    }
});
