//! From a negotiated [`ChildSa`] (IKE transform identifiers, KEYMAT halves, traffic selectors) to
//! what a data plane takes: the ESP core's [`SaConfig`] (userspace forwarder) or the engine
//! channel's [`SaSpec`] (AF_XDP engine). One mapping, so the two data planes cannot disagree on
//! which key is which or how an algorithm is named.
//!
//! Conventions (the ESP core's): AES-GCM key material is the key followed by the 4-byte salt, as
//! RFC 4106 KEYMAT is laid out; algorithm names are [`Cipher::name`] / [`Integrity::name`].

use std::time::Duration;

use ipnet::IpNet;
use ipsec_channel::{Direction, Lifetime, SaSpec, Secret};
use ipsec_esp::{Cipher, Integrity, SaConfig};
use ipsec_ike::ike_sa::{ChildSa, UdpEncap};
use ipsec_ike::transforms::{EncrAlg, Esn, IntegAlg};

use crate::config::selector_prefixes;

/// Inbound anti-replay window given to the engine (packets).
pub const REPLAY_WINDOW: u32 = ipsec_esp::replay::DEFAULT_WINDOW;

/// How long after the IKE core's own hard lifetime the engine stops an SA by itself. The IKE core
/// rekeys or deletes first; the engine's limit only matters when the control process is gone.
pub const HARD_LIFETIME_MARGIN: Duration = Duration::from_secs(30);

/// The ESP core's cipher for an IKE encryption transform.
#[must_use]
pub fn cipher(e: EncrAlg) -> Option<Cipher> {
    Some(match e {
        EncrAlg::Des => Cipher::DesCbc,
        EncrAlg::TripleDes => Cipher::TripleDesCbc,
        EncrAlg::AesCbc { key_bits: 128 } => Cipher::AesCbc128,
        EncrAlg::AesCbc { key_bits: 192 } => Cipher::AesCbc192,
        EncrAlg::AesCbc { key_bits: 256 } => Cipher::AesCbc256,
        EncrAlg::AesGcm16 { key_bits: 128 } => Cipher::AesGcm128,
        EncrAlg::AesGcm16 { key_bits: 192 } => Cipher::AesGcm192,
        EncrAlg::AesGcm16 { key_bits: 256 } => Cipher::AesGcm256,
        _ => return None,
    })
}

/// The ESP core's integrity transform for an IKE integrity transform.
#[must_use]
pub fn integrity(i: Option<IntegAlg>) -> Integrity {
    match i {
        None => Integrity::None,
        Some(IntegAlg::HmacMd5_96) => Integrity::HmacMd5_96,
        Some(IntegAlg::HmacSha1_96) => Integrity::HmacSha1_96,
        Some(IntegAlg::HmacSha256_128) => Integrity::HmacSha256_128,
        Some(IntegAlg::HmacSha384_192) => Integrity::HmacSha384_192,
        Some(IntegAlg::HmacSha512_256) => Integrity::HmacSha512_256,
    }
}

/// Our selectors and the peer's, as address prefixes (protocol and ports are not used by the data
/// planes).
#[must_use]
pub fn subnets(sa: &ChildSa) -> (Vec<IpNet>, Vec<IpNet>) {
    (
        sa.local_ts().iter().flat_map(selector_prefixes).collect(),
        sa.remote_ts().iter().flat_map(selector_prefixes).collect(),
    )
}

/// The (outbound, inbound) SA configurations of a Child SA, UDP-encapsulated with `encap`.
///
/// # Errors
/// An algorithm the ESP core does not have.
pub fn sa_configs(sa: &ChildSa, encap: UdpEncap) -> Result<(SaConfig, SaConfig), String> {
    let c = cipher(sa.encr).ok_or_else(|| format!("cipher {:?} not supported by the ESP core", sa.encr))?;
    let i = integrity(sa.integ);
    let (local_nets, remote_nets) = subnets(sa);
    let e = ipsec_esp::UdpEncap { local_port: encap.local_port, remote_port: encap.remote_port };
    let build = |spi: u32, (ek, ik): (&ipsec_ike::crypto::SecretBytes, &ipsec_ike::crypto::SecretBytes)| {
        let mut cfg = SaConfig::new(spi, c, ek.expose(), i, ik.expose(), sa.local.ip(), sa.remote.ip());
        cfg.esn = sa.esn == Esn::Yes;
        cfg.encap = Some(e);
        cfg.local_ts.clone_from(&local_nets);
        cfg.remote_ts.clone_from(&remote_nets);
        cfg
    };
    Ok((build(sa.outbound_spi(), sa.outbound_keys()), build(sa.inbound_spi(), sa.inbound_keys())))
}

/// The (inbound, outbound) engine SAs of a Child SA, for tunnel `tunnel`. Key bytes are copied
/// straight into [`Secret`]s (wiped on drop).
///
/// # Errors
/// An algorithm the ESP core does not have, or key material of the wrong length for it.
pub fn sa_specs(tunnel: &str, sa: &ChildSa) -> Result<(SaSpec, SaSpec), String> {
    let c = cipher(sa.encr).ok_or_else(|| format!("cipher {:?} not supported by the engine", sa.encr))?;
    let i = integrity(sa.integ);
    let hard = sa.lifetime.saturating_add(HARD_LIFETIME_MARGIN).as_secs();
    let build = |direction, spi, (ek, ik): (&ipsec_ike::crypto::SecretBytes, &ipsec_ike::crypto::SecretBytes)| {
        if ek.expose().len() != c.keymat_len() || ik.expose().len() != i.key_len() {
            return Err(format!(
                "SA {spi:08x}: key material of {}+{} bytes does not fit {}/{}",
                ek.expose().len(),
                ik.expose().len(),
                c.name(),
                i.name()
            ));
        }
        Ok(SaSpec {
            tunnel: tunnel.to_string(),
            direction,
            spi,
            cipher: c.name().to_string(),
            enc_key: Secret::from(ek.expose()),
            integrity: i.name().to_string(),
            auth_key: Secret::from(ik.expose()),
            esn: sa.esn == Esn::Yes,
            replay_window: REPLAY_WINDOW,
            lifetime: Lifetime { hard_seconds: hard, ..Lifetime::default() },
        })
    };
    Ok((
        build(Direction::In, sa.inbound_spi(), sa.inbound_keys())?,
        build(Direction::Out, sa.outbound_spi(), sa.outbound_keys())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::selector;
    use ipsec_ike::crypto::keys::ChildKeys;
    use ipsec_ike::crypto::SecretBytes;

    fn child(encr: EncrAlg, integ: Option<IntegAlg>, elen: usize, ilen: usize, initiator: bool) -> ChildSa {
        let k = |b: u8, n: usize| SecretBytes::from(vec![b; n]);
        ChildSa {
            spi_i: 0x1000_0001,
            spi_r: 0x2000_0002,
            initiator,
            encr,
            integ,
            esn: Esn::No,
            keys: ChildKeys {
                encr_i: k(0x11, elen),
                integ_i: k(0x22, ilen),
                encr_r: k(0x33, elen),
                integ_r: k(0x44, ilen),
            },
            ts_i: vec![selector(&"192.0.2.0/24".parse().unwrap())],
            ts_r: vec![selector(&"198.51.100.0/24".parse().unwrap())],
            local: "198.18.0.1:4500".parse().unwrap(),
            remote: "198.18.0.2:4500".parse().unwrap(),
            encap: None,
            lifetime: Duration::from_secs(3600),
        }
    }

    #[test]
    fn engine_specs_take_the_right_halves() {
        // Exchange initiator: inbound is the responder's traffic (spi_i, *_r keys).
        let sa = child(EncrAlg::AesGcm16 { key_bits: 128 }, None, 20, 0, true);
        let (i, o) = sa_specs("t", &sa).unwrap();
        assert_eq!((i.direction, i.spi, i.enc_key.expose()), (Direction::In, 0x1000_0001, &[0x33; 20][..]));
        assert_eq!((o.direction, o.spi, o.enc_key.expose()), (Direction::Out, 0x2000_0002, &[0x11; 20][..]));
        assert_eq!((i.cipher.as_str(), i.integrity.as_str()), ("aes128gcm16", "none"));
        assert!(i.auth_key.expose().is_empty() && i.replay_window > 0);
        assert_eq!(i.lifetime.hard_seconds, 3600 + HARD_LIFETIME_MARGIN.as_secs());
        assert_eq!(subnets(&sa).1, vec!["198.51.100.0/24".parse::<IpNet>().unwrap()]);
        // Exchange responder: the other way round.
        let sa = child(EncrAlg::AesCbc { key_bits: 256 }, Some(IntegAlg::HmacSha256_128), 32, 32, false);
        let (i, o) = sa_specs("t", &sa).unwrap();
        assert_eq!((i.spi, i.enc_key.expose(), i.auth_key.expose()), (0x2000_0002, &[0x11; 32][..], &[0x22; 32][..]));
        assert_eq!((o.spi, o.enc_key.expose(), o.auth_key.expose()), (0x1000_0001, &[0x33; 32][..], &[0x44; 32][..]));
        assert_eq!((o.cipher.as_str(), o.integrity.as_str()), ("aes256", "sha256"));
        assert_eq!(subnets(&sa).0, vec!["198.51.100.0/24".parse::<IpNet>().unwrap()]);
        // The Debug form of what goes to the engine shows no key.
        assert!(!format!("{o:?}").contains("51, 51"));
    }

    #[test]
    fn wrong_key_lengths_and_unknown_ciphers_are_refused() {
        let sa = child(EncrAlg::AesGcm16 { key_bits: 128 }, None, 16, 0, true);
        assert!(sa_specs("t", &sa).unwrap_err().contains("does not fit aes128gcm16"));
        assert!(cipher(EncrAlg::AesGcm16 { key_bits: 64 }).is_none());
    }
}
