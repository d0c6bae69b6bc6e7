//! ESP tunnel-mode decapsulation (RFC 4303 §3.4), including ESP in UDP (RFC 3948).
//!
//! [`EspWorker::decap_burst`] turns a burst of outer IPv4/IPv6 packets carrying ESP into the inner
//! IP packets in place, in three passes:
//!
//! 1. **prepare**: parse the outer header (fragments are refused: reassembly happens before the
//!    ESP core), recognise ESP or ESP-in-UDP (IKE's non-ESP marker and NAT keepalives are not
//!    ESP), look the SA up by (SPI, outer destination) only when that pair changes, check that the
//!    encapsulation matches the SA, run the anti-replay **pre-check** (no state change) and length
//!    checks;
//! 2. **crypto**: one batch per run of packets of one SA (AEAD `open_burst`; HMAC verify then CBC
//!    decrypt);
//! 3. **finish**: advance the replay window (only now that the ICV verified), check the padding
//!    bytes and next header, parse the inner packet, check it against the SA's traffic selectors
//!    (source in the remote selectors, destination in the local ones), apply RFC 6040 ECN
//!    decapsulation, count.
//!
//! Every refusal is a [`DropReason`] counted per worker and, once the SA is known, per SA. No input
//! can make this code panic: all offsets come from checked views or are checked here.

use crate::counters::DropReason;
use crate::crypto::{AeadJob, AEAD_TAG_LEN};
use crate::encap::esp_aad;
use crate::events::Direction;
use crate::packet::{PacketBuf, Verdict, MAX_BURST};
use crate::replay::ReplayError;
use crate::sa::{selector_contains, InboundSa, Transform};
use crate::worker::EspWorker;
use arrayvec::ArrayVec;
use ipsec_wire::{checksum, esp, udp, IpPacket, IpProtocol, IpVersion};
use std::net::IpAddr;
use std::time::Instant;

#[derive(Clone, Copy, Default)]
struct Meta {
    /// Absolute offset of the ESP header in the frame.
    esp: u32,
    /// Bytes of ciphertext (payload + padding + 2), between IV and ICV.
    ct_len: u32,
    seq: u64,
    outer_ecn: u8,
}

type Run<'s> = crate::packet::Run<'s, InboundSa>;

impl EspWorker {
    /// Decapsulates a burst of at most [`MAX_BURST`] outer IP packets in place.
    ///
    /// `lookup(spi, outer_dst)` finds the inbound SA; it is called once per change of that pair
    /// along the burst. On return `verdicts[i]` says whether `pkts[i]` now holds the inner IP
    /// packet (`start`/`len` updated) or was dropped (counters updated).
    // Several per-packet arrays are indexed in step: an index loop is clearer than zips.
    #[allow(clippy::needless_range_loop)]
    pub fn decap_burst<'s>(
        &mut self,
        now: Instant,
        pkts: &mut [PacketBuf<'_>],
        verdicts: &mut [Verdict],
        mut lookup: impl FnMut(u32, IpAddr) -> Option<&'s InboundSa>,
    ) {
        let n = pkts.len();
        assert!(n <= MAX_BURST, "burst of {n} exceeds MAX_BURST");
        assert!(verdicts.len() >= n, "verdicts shorter than the burst");
        let mut meta = [Meta::default(); MAX_BURST];
        let mut sas: [Option<&'s InboundSa>; MAX_BURST] = [None; MAX_BURST];

        let mut cache: Option<((u32, IpAddr), Option<&'s InboundSa>)> = None;
        for i in 0..n {
            verdicts[i] = self.prepare_decap(&pkts[i], &mut meta[i], &mut cache, &mut lookup).map(|sa| {
                sas[i] = Some(sa);
            });
        }

        let runs = crate::packet::group_runs(&sas[..n]);

        for run in &runs {
            self.open_run(run, pkts, &meta, &mut sas, verdicts);
        }

        for run in &runs {
            let sa = run.sa;
            let (mut packets, mut bytes) = (0u64, 0u64);
            for i in run.start..run.end {
                if sas[i].is_none() {
                    continue;
                }
                match finish_one(sa, &mut pkts[i], &meta[i]) {
                    Ok(len) => {
                        packets += 1;
                        bytes += len as u64;
                    }
                    Err(r) => self.fail(&mut verdicts[i], &mut sas[i], &sa.core.counters, r),
                }
            }
            self.account_run(&sa.core, Direction::Inbound, now, packets, bytes);
        }
    }

    fn prepare_decap<'s>(
        &mut self,
        pkt: &PacketBuf<'_>,
        m: &mut Meta,
        cache: &mut Option<((u32, IpAddr), Option<&'s InboundSa>)>,
        lookup: &mut impl FnMut(u32, IpAddr) -> Option<&'s InboundSa>,
    ) -> Result<&'s InboundSa, DropReason> {
        let (sa, reason) = match self.parse_outer(pkt, m, cache, lookup) {
            Ok(sa) => return Ok(sa),
            Err(e) => e,
        };
        self.counters.count_drop(reason);
        if let Some(sa) = sa {
            sa.core.counters.count_drop(reason);
        }
        Err(reason)
    }

    /// Pass-1 work for one packet. On error, returns the SA if it was already known.
    fn parse_outer<'s>(
        &mut self,
        pkt: &PacketBuf<'_>,
        m: &mut Meta,
        cache: &mut Option<((u32, IpAddr), Option<&'s InboundSa>)>,
        lookup: &mut impl FnMut(u32, IpAddr) -> Option<&'s InboundSa>,
    ) -> Result<&'s InboundSa, (Option<&'s InboundSa>, DropReason)> {
        let data = pkt.data();
        let err = |r| (None, r);
        let ip = IpPacket::new_checked(data).map_err(|_| err(DropReason::Malformed))?;
        let s = ip.summary().map_err(|_| err(DropReason::Malformed))?;
        if s.fragment.is_some() {
            return Err(err(DropReason::OuterFragment));
        }
        m.outer_ecn = match ip {
            IpPacket::V4(p) => p.ecn(),
            IpPacket::V6(p) => p.ecn(),
        };
        let end = s.packet_end;
        let (esp_off, udp_dst) = match s.protocol {
            IpProtocol::ESP => (s.payload_offset, None),
            IpProtocol::UDP => {
                let u =
                    udp::Packet::new_checked(&data[s.payload_offset..end]).map_err(|_| err(DropReason::Malformed))?;
                let payload = u.payload();
                // Non-ESP marker (IKE) or NAT keepalive: not for the ESP core (RFC 3948 §2.2/2.3).
                if esp::classify_udp_encap(payload) != esp::UdpEncap::Esp {
                    return Err(err(DropReason::NotEsp));
                }
                (s.payload_offset + udp::HEADER_LEN, Some(u.dst_port()))
            }
            _ => return Err(err(DropReason::NotEsp)),
        };
        let esp = data.get(esp_off..end).filter(|e| e.len() >= 8).ok_or(err(DropReason::Malformed))?;
        let spi = u32::from_be_bytes([esp[0], esp[1], esp[2], esp[3]]);
        let seq_low = u32::from_be_bytes([esp[4], esp[5], esp[6], esp[7]]);

        let key = (spi, s.dst);
        let sa = match cache {
            Some((k, sa)) if *k == key => *sa,
            _ => {
                let sa = lookup(spi, s.dst);
                *cache = Some((key, sa));
                sa
            }
        };
        let sa = sa.ok_or(err(DropReason::UnknownSpi))?;
        let fail = |r| (Some(sa), r);
        if sa.core.state.is_expired() {
            return Err(fail(DropReason::SaExpired));
        }
        match (sa.core.encap, udp_dst) {
            (None, None) => {}
            (Some(e), Some(port)) if e.local_port == port => {}
            _ => return Err(fail(DropReason::EncapMismatch)),
        }
        m.seq = match &sa.replay {
            Some(w) => w.check(seq_low).map_err(|e| fail(replay_reason(e)))?,
            None => u64::from(seq_low),
        };
        let l = sa.core.layout;
        let overhead = 8 + l.iv_len as usize + l.icv_len as usize;
        let ct_len = esp.len().checked_sub(overhead).filter(|&c| c >= 2).ok_or(fail(DropReason::Malformed))?;
        if matches!(sa.core.transform, Transform::Cbc { .. }) && ct_len % l.block_len as usize != 0 {
            return Err(fail(DropReason::BadCipherLength));
        }
        m.esp = (pkt.start + esp_off) as u32;
        m.ct_len = ct_len as u32;
        Ok(sa)
    }

    fn open_run<'s>(
        &mut self,
        run: &Run<'s>,
        pkts: &mut [PacketBuf<'_>],
        meta: &[Meta; MAX_BURST],
        sas: &mut [Option<&'s InboundSa>; MAX_BURST],
        verdicts: &mut [Verdict],
    ) {
        let sa = run.sa;
        let core = &sa.core;
        let l = core.layout;
        let iv_len = l.iv_len as usize;
        match &core.transform {
            Transform::Aead { key, salt } => {
                let mut batch: ArrayVec<AeadJob<'_>, MAX_BURST> = ArrayVec::new();
                let mut idx: ArrayVec<usize, MAX_BURST> = ArrayVec::new();
                for (i, p) in pkts.iter_mut().enumerate().take(run.end).skip(run.start) {
                    if sas[i].is_none() {
                        continue;
                    }
                    let m = &meta[i];
                    let esp = m.esp as usize;
                    let mut nonce = [0u8; 12];
                    nonce[..4].copy_from_slice(salt);
                    nonce[4..].copy_from_slice(&p.buf[esp + 8..esp + 8 + iv_len]);
                    let (aad, aad_len) = esp_aad(core.spi, m.seq, core.esn);
                    let ct = esp + 8 + iv_len;
                    let in_out = &mut p.buf[ct..ct + m.ct_len as usize + AEAD_TAG_LEN];
                    idx.push(i);
                    batch.push(AeadJob { nonce, aad, aad_len, in_out, result: Ok(()) });
                }
                key.open_burst(&mut batch);
                for (i, j) in idx.iter().zip(batch.iter()) {
                    if j.result.is_err() {
                        self.fail(&mut verdicts[*i], &mut sas[*i], &core.counters, DropReason::AuthFailed);
                    }
                }
            }
            Transform::Cbc { key, mac } => {
                for i in run.start..run.end {
                    if sas[i].is_none() {
                        continue;
                    }
                    let m = &meta[i];
                    let esp = m.esp as usize;
                    let iv_end = esp + 8 + iv_len;
                    let ct_end = iv_end + m.ct_len as usize;
                    let buf = &mut *pkts[i].buf;
                    if !verify(&**mac, buf, esp, ct_end, l.icv_len as usize, m.seq, core.esn) {
                        self.fail(&mut verdicts[i], &mut sas[i], &core.counters, DropReason::AuthFailed);
                        continue;
                    }
                    let (head, rest) = buf.split_at_mut(iv_end);
                    if key.cbc_decrypt(&head[esp + 8..], &mut rest[..m.ct_len as usize]).is_err() {
                        self.fail(&mut verdicts[i], &mut sas[i], &core.counters, DropReason::CryptoError);
                    }
                }
            }
            Transform::NullAuth { mac } => {
                for i in run.start..run.end {
                    if sas[i].is_none() {
                        continue;
                    }
                    let m = &meta[i];
                    let esp = m.esp as usize;
                    let ct_end = esp + 8 + m.ct_len as usize;
                    if !verify(&**mac, pkts[i].buf, esp, ct_end, l.icv_len as usize, m.seq, core.esn) {
                        self.fail(&mut verdicts[i], &mut sas[i], &core.counters, DropReason::AuthFailed);
                    }
                }
            }
            Transform::Null => {}
        }
    }
}

/// Pass-3 work for one authenticated packet: replay update, trailer, inner checks, ECN.
/// Returns the inner packet's length.
fn finish_one(sa: &InboundSa, pkt: &mut PacketBuf<'_>, m: &Meta) -> Result<usize, DropReason> {
    if let Some(w) = &sa.replay {
        w.accept(m.seq).map_err(replay_reason)?;
    }
    let ct = m.esp as usize + 8 + sa.core.layout.iv_len as usize;
    let ct_len = m.ct_len as usize;
    let pt = &mut pkt.buf[ct..ct + ct_len];
    // RFC 4303 §2.4: the padding bytes are 1, 2, 3, ...; a receiver must check them.
    let (inner, next_header) = esp::strip_trailer(pt).map_err(|_| DropReason::BadPadding)?;
    let inner_len = inner.len();
    let want = match next_header {
        IpProtocol::IPV4 => IpVersion::V4,
        IpProtocol::IPV6 => IpVersion::V6,
        IpProtocol::IPV6_NO_NXT => return Err(DropReason::DummyPacket),
        _ => return Err(DropReason::BadNextHeader),
    };
    let inner = &mut pt[..inner_len];
    let (src, dst, len, inner_ecn) = {
        let ip = IpPacket::new_checked(&*inner).map_err(|_| DropReason::BadInnerPacket)?;
        if ip.version() != want {
            return Err(DropReason::BadInnerPacket);
        }
        let ecn = match ip {
            IpPacket::V4(p) => p.ecn(),
            IpPacket::V6(p) => p.ecn(),
        };
        // TFC padding (RFC 4303 §2.7) may follow the inner packet: its own length is authoritative.
        (ip.src_addr(), ip.dst_addr(), ip.packet_bytes().len(), ecn)
    };
    if !selector_contains(&sa.core.remote_ts, src) || !selector_contains(&sa.core.local_ts, dst) {
        return Err(DropReason::SelectorMismatch);
    }
    let ecn = ecn_decap(m.outer_ecn, inner_ecn).ok_or(DropReason::EcnDrop)?;
    if ecn != inner_ecn {
        set_ecn(inner, want, ecn);
    }
    pkt.start = ct;
    pkt.len = len;
    Ok(len)
}

fn replay_reason(e: ReplayError) -> DropReason {
    match e {
        ReplayError::Replayed => DropReason::Replayed,
        ReplayError::ZeroSeq => DropReason::ZeroSeq,
        _ => DropReason::ReplayTooOld,
    }
}

/// Verifies the HMAC ICV at `buf[ct_end..ct_end+icv]` over `buf[esp..ct_end]` (+ ESN high bits).
fn verify(
    mac: &dyn crate::crypto::MacKey,
    buf: &[u8],
    esp: usize,
    ct_end: usize,
    icv: usize,
    seq: u64,
    esn: bool,
) -> bool {
    let hi = ((seq >> 32) as u32).to_be_bytes();
    let data = &buf[esp..ct_end];
    let expected = &buf[ct_end..ct_end + icv];
    if esn {
        mac.verify(&[data, &hi], expected)
    } else {
        mac.verify(&[data], expected)
    }
}

/// ECN field values (RFC 3168).
const NOT_ECT: u8 = 0b00;
const ECT1: u8 = 0b01;
const ECT0: u8 = 0b10;
const CE: u8 = 0b11;

/// RFC 6040 §4.2 (normal mode) decapsulation: the inner ECN to forward with, or `None` to drop.
pub fn ecn_decap(outer: u8, inner: u8) -> Option<u8> {
    match (inner, outer) {
        (NOT_ECT, CE) => None,
        (NOT_ECT, _) => Some(NOT_ECT),
        (_, CE) => Some(CE),
        (ECT0, ECT1) => Some(ECT1),
        (inner, _) => Some(inner),
    }
}

/// Rewrites the ECN bits of an inner header, updating the IPv4 checksum incrementally.
fn set_ecn(inner: &mut [u8], version: IpVersion, ecn: u8) {
    match version {
        IpVersion::V4 => {
            let old_word = u16::from_be_bytes([inner[0], inner[1]]);
            inner[1] = (inner[1] & !0b11) | ecn;
            let new_word = u16::from_be_bytes([inner[0], inner[1]]);
            let old_ck = u16::from_be_bytes([inner[10], inner[11]]);
            let ck = checksum::update_u16(old_ck, old_word, new_word);
            inner[10..12].copy_from_slice(&ck.to_be_bytes());
        }
        IpVersion::V6 => {
            // Traffic class spans bytes 0-1: ECN is bits 4-5 of byte 1.
            inner[1] = (inner[1] & !0b0011_0000) | (ecn << 4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6040_decap_table() {
        // Rows: inner; columns: outer Not-ECT, ECT(0), ECT(1), CE (RFC 6040 Figure 4).
        let table = [
            (NOT_ECT, [Some(NOT_ECT), Some(NOT_ECT), Some(NOT_ECT), None]),
            (ECT0, [Some(ECT0), Some(ECT0), Some(ECT1), Some(CE)]),
            (ECT1, [Some(ECT1), Some(ECT1), Some(ECT1), Some(CE)]),
            (CE, [Some(CE), Some(CE), Some(CE), Some(CE)]),
        ];
        for (inner, row) in table {
            for (outer, want) in [NOT_ECT, ECT0, ECT1, CE].into_iter().zip(row) {
                assert_eq!(ecn_decap(outer, inner), want, "inner {inner:02b} outer {outer:02b}");
            }
        }
    }
}
