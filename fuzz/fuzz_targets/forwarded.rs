//! Address lists and `X-Forwarded-For` as a proxy or a client could write them: reading them
//! must never panic, and a peer that is not a trusted proxy is always the client.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use notirouter::config::parse_net;
use notirouter::http::client_address;

fuzz_target!(|input: (u128, bool, &str, &str)| {
    let (bits, v4, nets, forwarded) = input;
    let peer = if v4 {
        IpAddr::from((bits as u32).to_be_bytes())
    } else {
        IpAddr::from(bits.to_be_bytes())
    };
    let trusted: Vec<_> = nets.split(',').filter_map(|net| parse_net(net).ok()).collect();
    let client = client_address(peer, &[forwarded], &trusted);
    if !trusted.iter().any(|net| net.contains(&peer.to_canonical())) {
        assert_eq!(client, Some(peer.to_canonical()));
    }
});
