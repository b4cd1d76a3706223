//! Arbitrary bytes as a listing's page token: parsing must never panic, and a token
//! made from any key parses back to that key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendlater::engine::{make_page_token, parse_page_token, Order};

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    for order in [Order::Asc, Order::Desc] {
        if let Err(e) = parse_page_token(&token, order) {
            assert!(e.to_string().starts_with("page_token: "), "{e}");
        }
    }
    // The first 8 bytes are the sort instant, the rest the key.
    if data.len() >= 8 && data.len() - 8 <= 512 {
        let (at, key) = data.split_at(8);
        let at = i64::from_le_bytes(at.try_into().expect("8 bytes"));
        let made = make_page_token(Order::Desc, at, key);
        let parsed = parse_page_token(&made, Order::Desc).expect("a made token parses");
        assert_eq!(parsed, (at, key.to_vec()));
    }
});
