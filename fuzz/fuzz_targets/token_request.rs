#![no_main]

libfuzzer_sys::fuzz_target!(init: intellia_token_broker_testkit::fuzz::init(), |data: &[u8]| {
    let _ = intellia_token_broker_testkit::fuzz::token_request(data);
});
