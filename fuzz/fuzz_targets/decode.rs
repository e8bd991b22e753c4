//! Any bytes into the mParticle JSON decoder: no panic, and a lossless round trip of whatever
//! it accepts (see `mpconnect_schema::testing::check_round_trip`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mpconnect_schema::testing::check_round_trip(data);
});
