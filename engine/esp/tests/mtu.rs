//! The tunnel MTU per transform, checked against what encapsulation actually produces: an inner
//! packet of exactly `max_inner_len(mtu)` bytes encapsulates to at most `mtu` bytes, one byte more
//! to more than `mtu`.

mod common;

use common::{config, frame_with, inner_packet, transforms, Pair};
use ipsec_esp::UdpEncap;

fn encapsulated_len(pair: &mut Pair, v6_inner: bool, inner_len: usize) -> usize {
    let hdr = if v6_inner { 48 } else { 28 }; // IP + UDP headers of `inner_packet`
    let pkt = inner_packet(v6_inner, inner_len - hdr, 7);
    assert_eq!(pkt.len(), inner_len);
    let mut frame = frame_with(&pkt);
    let (_, len) = pair.encap(&mut frame, pkt.len()).expect("encapsulates");
    len
}

#[test]
fn inner_packet_of_max_inner_len_fits_and_one_more_byte_does_not() {
    let mut checked = 0;
    for (cipher, integ) in transforms() {
        for outer_v6 in [false, true] {
            for encap in [None, Some(UdpEncap::STANDARD)] {
                let mut cfg = config(cipher, integ, outer_v6);
                cfg.encap = encap;
                let mut pair = Pair::new(&cfg);
                for link_mtu in [1280usize, 1400, 1437, 1499, 1500] {
                    let max = pair.out.max_inner_len(link_mtu);
                    assert!(max > 1000 && max < link_mtu, "{cipher:?}/{integ:?}: {max} for {link_mtu}");
                    for v6_inner in [false, true] {
                        let at = encapsulated_len(&mut pair, v6_inner, max);
                        assert!(
                            at <= link_mtu,
                            "{cipher:?}/{integ:?} v6={outer_v6} {encap:?}: {max} -> {at} > {link_mtu}"
                        );
                        let over = encapsulated_len(&mut pair, v6_inner, max + 1);
                        assert!(
                            over > link_mtu,
                            "{cipher:?}/{integ:?} v6={outer_v6} {encap:?}: {} -> {over} <= {link_mtu}",
                            max + 1
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked >= 100);
}

#[test]
fn configured_path_mtu_lowers_the_inner_mtu_and_never_raises_it() {
    let (cipher, integ) = (ipsec_esp::Cipher::AesGcm128, ipsec_esp::Integrity::None);
    let mut cfg = config(cipher, integ, false);
    let plain = Pair::new(&cfg);
    cfg.mtu = Some(1400);
    let limited = Pair::new(&cfg);
    assert_eq!(limited.out.inner_mtu(1500), plain.out.max_inner_len(1400));
    assert_eq!(limited.out.inner_mtu(1300), plain.out.max_inner_len(1300));
    assert_eq!(plain.out.inner_mtu(1500), plain.out.max_inner_len(1500));
    // AES-GCM over IPv4 without UDP: 1500 - 20 - 8 - 8 - 16 = 1448, minus 2 = 1446, on 4 bytes.
    assert_eq!(plain.out.max_inner_len(1500), 1446);
}
