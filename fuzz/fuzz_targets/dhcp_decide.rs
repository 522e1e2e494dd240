//! Raw UDP payload → dhcproto decode → classify → decide → encode reply.
//! `ramboot_core::dhcp::fuzz::decide_bytes` must never panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ramboot_core::dhcp::fuzz::decide_bytes(data);
});
