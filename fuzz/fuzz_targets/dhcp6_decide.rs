//! Raw UDP payload → dhcproto v6 decode → classify → decide → encode reply.
//! `ramboot_core::dhcp6::decide6_bytes` must never panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ramboot_core::dhcp6::decide6_bytes(data);
});
