//! Raw UDP payload → dhcproto decode → classify → decide → encode reply.
//! `ramboot::dhcp::fuzz_decide` must never panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ramboot::dhcp::fuzz_decide(data);
});
