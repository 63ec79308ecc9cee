#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| forwarder::fuzz::config(data));
