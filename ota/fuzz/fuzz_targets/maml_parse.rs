//! The text scan and the parser on arbitrary bytes: no panic, bounded work.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = aegis_ota::maml::split_signed(data);
    let _ = aegis_ota::maml::parse(data);
    let _ = aegis_ota::trust::split(data);
});
