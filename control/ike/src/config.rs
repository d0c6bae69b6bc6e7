//! Configuration of one IKEv2 connection (one peer), mirroring the seed's `IkeConfig` and
//! `IpsecConfig`: IKE version 2 only, IKE and ESP proposals (encryption, integrity, PRF, DH
//! groups; a DH group in an ESP proposal means PFS), lifetimes, the pre-shared key, local and
//! remote identities, local and remote subnets, DPD and NAT traversal.
//!
//! Whether a connection is initiated at once ("EffectImmediately") or on traffic is the daemon's
//! concern: it calls [`crate::endpoint::Endpoint::connect`] when it wants the SA.

use std::time::Duration;

use crate::crypto::dh::DhGroup;
use crate::crypto::SecretBytes;
use crate::message::{Identification, ProtocolId, TrafficSelector};
use crate::transforms::{EncrAlg, Esn, IntegAlg, PrfAlg, ProposalSpec};

/// The default NAT-T port (RFC 3948).
pub const NATT_PORT: u16 = 4500;
/// The IKE port.
pub const IKE_PORT: u16 = 500;

/// Configuration of one IKE SA and its Child SAs. `Debug` never shows the PSK.
#[derive(Clone, Debug)]
pub struct Config {
    /// Acceptable IKE proposals (also our offer as initiator). The first DH group of the first
    /// proposal is the one our first KE payload uses.
    pub ike_proposals: Vec<ProposalSpec>,
    /// Acceptable ESP proposals. DH groups in them ask for PFS in CREATE_CHILD_SA (never in
    /// IKE_AUTH, where the first Child SA takes its keys from the IKE SA).
    pub esp_proposals: Vec<ProposalSpec>,
    /// IKE SA lifetime; the SA is rekeyed before it ends (see `rekey_margin_percent`).
    pub ike_lifetime: Duration,
    /// Child SA lifetime: rekeyed before, deleted at the end if not rekeyed by then.
    pub child_lifetime: Duration,
    /// Rekey this many percent before the end of a lifetime (strongSwan: `rekey_time` = 90%), but
    /// never later than the retransmission budget before the end (capped at a third of the
    /// lifetime): a rekey that has to wait behind another exchange and then be retransmitted
    /// still completes before the hard lifetime. 0: rekey exactly at the end (tests).
    pub rekey_margin_percent: u8,
    /// Plus a random extra 0..=this many percent earlier, so both ends rarely rekey at once.
    pub rekey_jitter_percent: u8,
    /// The pre-shared key.
    pub psk: SecretBytes,
    /// Our identity; `None`: our IP address (ID_IPV4_ADDR / ID_IPV6_ADDR), the seed's default.
    pub local_id: Option<Identification>,
    /// The identity the peer must present; `None`: any (the daemon sets the peer's address here
    /// for the seed's default).
    pub remote_id: Option<Identification>,
    /// Local subnets (our side of the Child SAs): TSi as initiator, the limit for TSr as responder.
    pub local_ts: Vec<TrafficSelector>,
    /// Remote subnets: TSr as initiator, the limit for TSi as responder.
    pub remote_ts: Vec<TrafficSelector>,
    /// Send an empty INFORMATIONAL after this much inbound silence (`None`: DPD off).
    pub dpd_interval: Option<Duration>,
    /// Declare the peer dead when a liveness check is not answered within this time.
    pub dpd_timeout: Duration,
    /// NAT traversal (RFC 7296 §2.23): NAT detection notifies, floating to `natt_port`,
    /// UDP-encapsulated ESP when needed, keepalives.
    pub nat_traversal: bool,
    /// Pretend to be behind a NAT so that ESP is always UDP-encapsulated (strongSwan's
    /// `encap = yes`). Needs `nat_traversal`.
    pub force_encap: bool,
    /// The NAT-T port we float to.
    pub natt_port: u16,
    /// NAT keepalive interval (RFC 3948: 20 s), sent while we are behind a NAT.
    pub keepalive_interval: Duration,
    /// First retransmission interval (then doubled each time).
    pub retransmit_initial: Duration,
    /// Retransmissions before giving up on a request.
    pub retransmit_max: u32,
    /// The retransmission interval doubles up to this.
    pub retransmit_max_interval: Duration,
    /// A responder drops an IKE SA that is not authenticated this long after IKE_SA_INIT.
    pub half_open_timeout: Duration,
}

impl Config {
    /// A configuration with the defaults of the seed (DPD on every 30 s and dead after 30 s,
    /// NAT-T on, IKE lifetime 24 h, Child SA lifetime 1 h, rekey at 90% minus up to 5% jitter)
    /// and a modern proposal set; set at least the subnets.
    #[must_use]
    pub fn new(psk: &[u8]) -> Self {
        Config {
            ike_proposals: vec![ProposalSpec {
                protocol: ProtocolId::IKE,
                encr: vec![EncrAlg::AES256_GCM16, EncrAlg::AES256_CBC, EncrAlg::AES128_CBC],
                prf: vec![PrfAlg::HmacSha256, PrfAlg::HmacSha384, PrfAlg::HmacSha1],
                integ: vec![IntegAlg::HmacSha256_128, IntegAlg::HmacSha1_96],
                dh: vec![DhGroup::Ecp256, DhGroup::Curve25519, DhGroup::Modp2048],
                esn: vec![],
            }],
            esp_proposals: vec![ProposalSpec {
                protocol: ProtocolId::ESP,
                encr: vec![EncrAlg::AES128_GCM16, EncrAlg::AES256_CBC],
                prf: vec![],
                integ: vec![IntegAlg::HmacSha256_128],
                dh: vec![],
                esn: vec![Esn::No, Esn::Yes],
            }],
            ike_lifetime: Duration::from_secs(24 * 3600),
            child_lifetime: Duration::from_secs(3600),
            rekey_margin_percent: 10,
            rekey_jitter_percent: 5,
            psk: SecretBytes::from_slice(psk),
            local_id: None,
            remote_id: None,
            local_ts: Vec::new(),
            remote_ts: Vec::new(),
            dpd_interval: Some(Duration::from_secs(30)),
            dpd_timeout: Duration::from_secs(30),
            nat_traversal: true,
            force_encap: false,
            natt_port: NATT_PORT,
            keepalive_interval: Duration::from_secs(20),
            retransmit_initial: Duration::from_millis(500),
            retransmit_max: 5,
            retransmit_max_interval: Duration::from_secs(30),
            half_open_timeout: Duration::from_secs(30),
        }
    }

    /// How long a request is retransmitted before we give up: the sum of all intervals.
    #[must_use]
    pub fn retransmit_budget(&self) -> Duration {
        let mut total = Duration::ZERO;
        let mut interval = self.retransmit_initial;
        for _ in 0..=self.retransmit_max.min(64) {
            total += interval;
            interval = interval.saturating_mul(2).min(self.retransmit_max_interval);
        }
        total
    }

    /// The time after which an SA with `lifetime` is rekeyed: `lifetime` minus the margin (the
    /// larger of `rekey_margin_percent` and the retransmission budget, the latter capped at a
    /// third of the lifetime) minus a random jitter drawn from `random` (any value; reduced
    /// modulo the jitter range).
    #[must_use]
    pub fn rekey_after(&self, lifetime: Duration, random: u32) -> Duration {
        let jitter = u32::from(self.rekey_jitter_percent);
        let extra = if jitter == 0 { 0 } else { random % (jitter * 100 + 1) };
        let percent = lifetime.mul_f64(f64::from(self.rekey_margin_percent.min(100)) / 100.0);
        let floor =
            if self.rekey_margin_percent == 0 { Duration::ZERO } else { self.retransmit_budget().min(lifetime / 3) };
        let margin = percent.max(floor);
        lifetime.saturating_sub(margin).saturating_sub(lifetime.mul_f64(f64::from(extra) / 10_000.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rekey_time_has_bounded_jitter() {
        let c = Config::new(b"k");
        let life = Duration::from_secs(1000);
        assert_eq!(c.rekey_after(life, 0), Duration::from_secs(900));
        assert_eq!(c.rekey_after(life, 500), Duration::from_secs(850));
        for r in [1, 77, 12345, u32::MAX] {
            let t = c.rekey_after(life, r);
            assert!(t >= Duration::from_secs(850) && t <= Duration::from_secs(900), "{t:?}");
        }
        assert!(!format!("{c:?}").contains("107"), "PSK bytes never printed");
        // 0.5 + 1 + 2 + 4 + 8 + 16 s.
        assert_eq!(c.retransmit_budget(), Duration::from_millis(31_500));
        // Short lifetimes keep room for a retransmitted rekey: 31.5 s rather than 10%.
        assert_eq!(c.rekey_after(Duration::from_secs(120), 0), Duration::from_millis(88_500));
        // ... but at most a third of the lifetime.
        assert_eq!(c.rekey_after(Duration::from_secs(60), 0), Duration::from_secs(40));
        assert!(format!("{c:?}").contains("REDACTED"));
    }
}
