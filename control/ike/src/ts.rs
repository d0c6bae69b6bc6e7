//! Traffic selector arithmetic: containment (initiator checking the responder's answer) and
//! narrowing (responder: the intersection of what the peer proposes with what we allow,
//! RFC 7296 §2.9).

use crate::message::{AddressRange, TrafficSelector};

/// Whether every selector of `offered` lies inside one of `allowed` (and there is one).
#[must_use]
pub fn within(offered: &[TrafficSelector], allowed: &[TrafficSelector]) -> bool {
    !offered.is_empty() && offered.iter().all(|o| allowed.iter().any(|a| contains(a, o)))
}

/// Whether `outer` contains `inner`.
#[must_use]
pub fn contains(outer: &TrafficSelector, inner: &TrafficSelector) -> bool {
    intersect(outer, inner).as_ref() == Some(inner)
}

/// The intersection of two selectors, if not empty. Protocol 0 means any; an empty port range
/// (start > end, e.g. OPAQUE) only intersects itself.
#[must_use]
pub fn intersect(a: &TrafficSelector, b: &TrafficSelector) -> Option<TrafficSelector> {
    let ip_protocol = match (a.ip_protocol, b.ip_protocol) {
        (0, p) | (p, 0) => p,
        (p, q) if p == q => p,
        _ => return None,
    };
    let start_port = a.start_port.max(b.start_port);
    let end_port = a.end_port.min(b.end_port);
    if start_port > end_port || a.start_port > a.end_port || b.start_port > b.end_port {
        return None;
    }
    let range = match (a.range, b.range) {
        (AddressRange::V4 { start: s1, end: e1 }, AddressRange::V4 { start: s2, end: e2 }) => {
            let (s, e) = (s1.max(s2), e1.min(e2));
            (s <= e).then_some(AddressRange::V4 { start: s, end: e })?
        }
        (AddressRange::V6 { start: s1, end: e1 }, AddressRange::V6 { start: s2, end: e2 }) => {
            let (s, e) = (s1.max(s2), e1.min(e2));
            (s <= e).then_some(AddressRange::V6 { start: s, end: e })?
        }
        _ => return None,
    };
    Some(TrafficSelector { ip_protocol, start_port, end_port, range })
}

/// Narrows the peer's `offered` selectors to `allowed`: every non-empty pairwise intersection,
/// in the peer's order, without duplicates. Empty means TS_UNACCEPTABLE.
#[must_use]
pub fn narrow(offered: &[TrafficSelector], allowed: &[TrafficSelector]) -> Vec<TrafficSelector> {
    let mut out: Vec<TrafficSelector> = Vec::new();
    for o in offered {
        for a in allowed {
            if let Some(x) = intersect(o, a) {
                if !out.contains(&x) {
                    out.push(x);
                }
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    pub(crate) fn v4(a: [u8; 4], b: [u8; 4]) -> TrafficSelector {
        TrafficSelector {
            ip_protocol: 0,
            start_port: 0,
            end_port: 0xffff,
            range: AddressRange::V4 { start: Ipv4Addr::from(a), end: Ipv4Addr::from(b) },
        }
    }

    #[test]
    fn narrowing() {
        let any = TrafficSelector::any_v4();
        let n1 = v4([10, 1, 0, 0], [10, 1, 255, 255]);
        let n2 = v4([10, 2, 0, 0], [10, 2, 255, 255]);
        let n12 = v4([10, 1, 0, 0], [10, 2, 255, 255]);
        assert_eq!(narrow(&[any], &[n1, n2]), vec![n1, n2]);
        assert_eq!(narrow(&[n1], &[any]), vec![n1]);
        assert_eq!(narrow(&[n12], &[n1]), vec![n1]);
        assert_eq!(narrow(&[v4([10, 1, 5, 0], [10, 3, 0, 0])], &[n1, n2]).len(), 2);
        assert!(narrow(&[v4([10, 3, 0, 0], [10, 3, 0, 255])], &[n1, n2]).is_empty());
        let tcp80 = TrafficSelector { ip_protocol: 6, start_port: 80, end_port: 80, ..n1 };
        assert_eq!(narrow(&[tcp80], &[n1]), vec![tcp80]);
        let udp = TrafficSelector { ip_protocol: 17, ..n1 };
        assert!(intersect(&tcp80, &udp).is_none());
        let v6 = TrafficSelector {
            range: AddressRange::V6 { start: Ipv6Addr::UNSPECIFIED, end: Ipv6Addr::from(u128::MAX) },
            ..any
        };
        assert!(narrow(&[v6], &[n1]).is_empty());
        assert!(within(&[n1], &[n12]) && !within(&[n12], &[n1]) && !within(&[], &[n1]));
        let opaque = TrafficSelector { start_port: 0xffff, end_port: 0, ..n1 };
        assert!(intersect(&opaque, &n1).is_none());
    }
}
