#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_routes::harness::net_conf(data));
