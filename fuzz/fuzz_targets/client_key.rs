#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = intellia_token_broker_testkit::fuzz::client_key(data);
});
