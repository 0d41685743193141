#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weft::tunnel::harness::inbound6(data);
});
