#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ctxgate_fuzz::mcp_listing(data));
