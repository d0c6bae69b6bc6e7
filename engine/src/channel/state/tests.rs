use super::*;

use std::net::Ipv4Addr;

use ipsec_channel::{Lifetime as ChLifetime, Secret, UdpEncap as ChUdpEncap};
use ipsec_esp::{default_provider, EspWorker, PacketBuf, Verdict, HEADROOM, TAILROOM};
use ipsec_wire::{ipv4, udp, IpProtocol};

const STATIC: &str = r#"
[gateway]
local_addrs = ["198.18.0.1"]

[[tunnel]]
name = "static"
remote_addr = "198.18.0.9"
local_subnets = ["192.0.2.0/24"]
remote_subnets = ["203.0.113.0/24"]

[[sa]]
tunnel = "static"
direction = "in"
spi = 0x5000
cipher = "aes128gcm16"
enc_key = "000102030405060708090a0b0c0d0e0f10111213"

[[sa]]
tunnel = "static"
direction = "out"
spi = 0x5001
cipher = "aes128gcm16"
enc_key = "000102030405060708090a0b0c0d0e0f10111213"
"#;

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(bool, IpNet)>>>);

impl Steering for Recorder {
    fn add_protected(&mut self, net: IpNet) -> Result<(), String> {
        self.0.lock().unwrap().push((true, net));
        Ok(())
    }
    fn remove_protected(&mut self, net: IpNet) -> Result<(), String> {
        self.0.lock().unwrap().push((false, net));
        Ok(())
    }
}

fn setup() -> (ControlState, Arc<Tables>, Recorder) {
    let cfg = EngineConfig::parse(STATIC).unwrap();
    let tables = Arc::new(cfg.build(default_provider(), Instant::now()).unwrap());
    let rec = Recorder::default();
    let st = ControlState::new(tables.clone(), default_provider(), &cfg, Box::new(rec.clone()), Instant::now());
    (st, tables, rec)
}

fn tunnel(name: &str, remote: &str, subnet: &str) -> TunnelSpec {
    TunnelSpec {
        name: name.into(),
        local_addr: "198.18.0.1".parse().unwrap(),
        remote_addr: remote.parse().unwrap(),
        local_subnets: vec!["192.0.2.0/24".parse().unwrap()],
        remote_subnets: vec![subnet.parse().unwrap()],
        routing: Routing::Destination,
        udp_encap: None,
        mtu: None,
    }
}

fn sa(tunnel: &str, direction: Direction, spi: u32, key_seed: u8) -> SaSpec {
    SaSpec {
        tunnel: tunnel.into(),
        direction,
        spi,
        cipher: "aes128gcm16".into(),
        enc_key: Secret::new((0..20).map(|k| k ^ key_seed).collect()),
        integrity: "none".into(),
        auth_key: Secret::default(),
        esn: false,
        replay_window: if direction == Direction::In { 1024 } else { 0 },
        lifetime: ChLifetime::default(),
    }
}

fn ok(st: &mut ControlState, req: Request) -> Response {
    st.apply(req, Instant::now(), &[]).unwrap_or_else(|e| panic!("refused: {e}"))
}

fn refused(st: &mut ControlState, req: Request) -> String {
    st.apply(req, Instant::now(), &[]).expect_err("should be refused")
}

fn resolves(tables: &Tables, dst: &str) -> Option<(TunnelId, u32)> {
    let g = tables.outbound.pin();
    tables.outbound.resolve(Ipv4Addr::new(192, 0, 2, 7).into(), dst.parse().unwrap(), &g).map(|(t, s)| (t, s.spi()))
}

/// An inner IPv4/UDP packet 192.0.2.7 -> `dst` in a frame with room for encapsulation.
fn frame(dst: Ipv4Addr) -> (Vec<u8>, usize) {
    let udp_len = udp::HEADER_LEN + 16;
    let len = ipv4::HEADER_LEN + udp_len;
    let mut b = vec![0u8; HEADROOM + len + TAILROOM];
    {
        let mut ip = ipv4::Packet::new_unchecked(&mut b[HEADROOM..HEADROOM + len]);
        ip.set_version(4);
        ip.set_header_len(ipv4::HEADER_LEN);
        ip.set_total_len(len as u16);
        ip.set_ttl(63);
        ip.set_next_header(IpProtocol::UDP);
        ip.set_src_addr(Ipv4Addr::new(192, 0, 2, 7));
        ip.set_dst_addr(dst);
        ip.fill_checksum();
    }
    let mut u = udp::Packet::new_unchecked(&mut b[HEADROOM + ipv4::HEADER_LEN..HEADROOM + len]);
    u.set_src_port(4000);
    u.set_dst_port(5000);
    u.set_len(udp_len as u16);
    u.fill_checksum(Ipv4Addr::new(192, 0, 2, 7), dst);
    (b, len)
}

fn encap_one(w: &mut EspWorker, tables: &Tables, dst: Ipv4Addr) -> Verdict {
    let (mut b, len) = frame(dst);
    let g = tables.outbound.pin();
    let mut pkts = [PacketBuf::new(&mut b, HEADROOM, len)];
    let mut v: [Verdict; 1] = [Ok(())];
    w.encap_routed(Instant::now(), &tables.outbound, &g, &mut pkts, &mut v);
    v[0]
}

#[test]
fn add_replace_delete_and_outbound_switch() {
    let (mut st, tables, rec) = setup();
    ok(&mut st, Request::UpsertTunnel(tunnel("a", "198.18.0.2", "198.51.100.0/24")));
    assert_eq!(rec.0.lock().unwrap().as_slice(), &[(true, "198.51.100.0/24".parse().unwrap())]);
    let id = st.tunnel_id("a").unwrap();
    assert!(id.0 > 1, "control ids stay clear of static ones");
    assert_eq!(resolves(&tables, "198.51.100.5"), None, "no outbound SA yet");

    ok(&mut st, Request::AddSa(sa("a", Direction::Out, 0x1001, 1)));
    assert_eq!(resolves(&tables, "198.51.100.5"), Some((id, 0x1001)));
    ok(&mut st, Request::AddSa(sa("a", Direction::In, 0x2001, 2)));
    let local: IpAddr = "198.18.0.1".parse().unwrap();
    assert!(tables.inbound.contains(Spi(0x2001), local));
    assert_eq!(st.control_sas(), 2);

    // Outbound switch: a new SPI makes the tunnel send on it and drops the old one.
    ok(&mut st, Request::AddSa(sa("a", Direction::Out, 0x1002, 3)));
    assert_eq!(resolves(&tables, "198.51.100.5"), Some((id, 0x1002)));
    assert_eq!(st.control_sas(), 2);
    assert!(refused(&mut st, Request::DeleteSa { tunnel: "a".into(), direction: Direction::Out, spi: 0x1001 })
        .starts_with("spi: "));

    // Inbound SAs accumulate (rekey overlap).
    ok(&mut st, Request::AddSa(sa("a", Direction::In, 0x2002, 4)));
    assert!(tables.inbound.contains(Spi(0x2001), local) && tables.inbound.contains(Spi(0x2002), local));

    // Identical restatement: the same object; changed: a new one.
    let before = st.inbound_sa("a", 0x2002).unwrap();
    ok(&mut st, Request::AddSa(sa("a", Direction::In, 0x2002, 4)));
    assert!(Arc::ptr_eq(&before, &st.inbound_sa("a", 0x2002).unwrap()));
    let mut changed = sa("a", Direction::In, 0x2002, 4);
    changed.lifetime.hard_seconds = 3600;
    ok(&mut st, Request::AddSa(changed));
    let after = st.inbound_sa("a", 0x2002).unwrap();
    assert!(!Arc::ptr_eq(&before, &after));
    assert!(Arc::ptr_eq(&after, &tables.inbound.get_cloned(Spi(0x2002), local).unwrap()));

    ok(&mut st, Request::DeleteSa { tunnel: "a".into(), direction: Direction::In, spi: 0x2001 });
    assert!(!tables.inbound.contains(Spi(0x2001), local));
    ok(&mut st, Request::DeleteSa { tunnel: "a".into(), direction: Direction::Out, spi: 0x1002 });
    assert_eq!(resolves(&tables, "198.51.100.5"), None);

    ok(&mut st, Request::RemoveTunnel { name: "a".into() });
    assert!(!tables.inbound.contains(Spi(0x2002), local));
    assert_eq!(tables.outbound.routes.route("198.51.100.0/24".parse().unwrap()), None);
    assert_eq!(rec.0.lock().unwrap().last(), Some(&(false, "198.51.100.0/24".parse().unwrap())));
    assert_eq!(st.control_sas(), 0);
    assert!(refused(&mut st, Request::RemoveTunnel { name: "a".into() }).starts_with("name: "));
}

#[test]
fn outbound_replace_under_the_same_spi_continues_sequence_numbers() {
    let (mut st, tables, _) = setup();
    ok(&mut st, Request::UpsertTunnel(tunnel("a", "198.18.0.2", "198.51.100.0/24")));
    ok(&mut st, Request::AddSa(sa("a", Direction::Out, 0x1001, 1)));
    let mut w = EspWorker::new(default_provider(), Arc::new(EventQueue::new(16))).unwrap();
    for _ in 0..3 {
        encap_one(&mut w, &tables, Ipv4Addr::new(198, 51, 100, 5)).unwrap();
    }
    let first = st.outbound_sa("a").unwrap();
    assert_eq!(first.last_seq(), 3);
    // Restated identically: same object, same counters.
    ok(&mut st, Request::AddSa(sa("a", Direction::Out, 0x1001, 1)));
    assert!(Arc::ptr_eq(&first, &st.outbound_sa("a").unwrap()));
    // Changed (lifetime) under the same SPI: rebuilt, numbering continues.
    let mut changed = sa("a", Direction::Out, 0x1001, 1);
    changed.lifetime.hard_bytes = 1 << 30;
    ok(&mut st, Request::AddSa(changed));
    let second = st.outbound_sa("a").unwrap();
    assert!(!Arc::ptr_eq(&first, &second));
    assert_eq!(second.last_seq(), 3);
    encap_one(&mut w, &tables, Ipv4Addr::new(198, 51, 100, 5)).unwrap();
    assert_eq!(second.last_seq(), 4);
    // Moving the tunnel (NAT-T appears) rebuilds the SAs, numbering still continues.
    let mut moved = tunnel("a", "198.18.0.2", "198.51.100.0/24");
    moved.udp_encap = Some(ChUdpEncap { local_port: 4500, remote_port: 4501 });
    ok(&mut st, Request::UpsertTunnel(moved));
    let third = st.outbound_sa("a").unwrap();
    assert!(!Arc::ptr_eq(&second, &third));
    assert_eq!(third.last_seq(), 4);
}

#[test]
fn an_outbound_sa_switched_back_to_or_re_added_resumes_its_sequence_numbers() {
    let (mut st, tables, _) = setup();
    ok(&mut st, Request::UpsertTunnel(tunnel("a", "198.18.0.2", "198.51.100.0/24")));
    let mut w = EspWorker::new(default_provider(), Arc::new(EventQueue::new(16))).unwrap();
    let mut send = |n: usize| {
        for _ in 0..n {
            encap_one(&mut w, &tables, Ipv4Addr::new(198, 51, 100, 5)).unwrap();
        }
    };
    // A, then B (A retired at 5), then A again (the control side switched back): A resumes.
    ok(&mut st, Request::AddSa(sa("a", Direction::Out, 0x1000a, 1)));
    send(5);
    ok(&mut st, Request::AddSa(sa("a", Direction::Out, 0x1000b, 2)));
    send(2);
    assert_eq!(st.outbound_sa("a").unwrap().last_seq(), 2, "a new SPI starts at 1");
    ok(&mut st, Request::AddSa(sa("a", Direction::Out, 0x1000a, 1)));
    assert_eq!(st.outbound_sa("a").unwrap().last_seq(), 5, "A continues after 5, B is retired at 2");
    send(1);
    assert_eq!(st.outbound_sa("a").unwrap().last_seq(), 6);
    // Deleted and added again: still resumes.
    ok(&mut st, Request::DeleteSa { tunnel: "a".into(), direction: Direction::Out, spi: 0x1000a });
    ok(&mut st, Request::AddSa(sa("a", Direction::Out, 0x1000a, 1)));
    assert_eq!(st.outbound_sa("a").unwrap().last_seq(), 6);
    ok(&mut st, Request::AddSa(sa("a", Direction::Out, 0x1000b, 2)));
    assert_eq!(st.outbound_sa("a").unwrap().last_seq(), 2);
    // Only the last RETIRED_SEQS are remembered.
    for spi in 0x100..0x100 + RETIRED_SEQS as u32 {
        ok(&mut st, Request::AddSa(sa("a", Direction::Out, spi, 3)));
    }
    ok(&mut st, Request::AddSa(sa("a", Direction::Out, 0x1000a, 1)));
    assert_eq!(st.outbound_sa("a").unwrap().last_seq(), 0, "forgotten after {RETIRED_SEQS} others");
}

#[test]
fn sync_keeps_replaces_adds_and_removes() {
    let (mut st, tables, _) = setup();
    let local: IpAddr = "198.18.0.1".parse().unwrap();
    for (n, remote, net, o, i) in [
        ("a", "198.18.0.2", "198.51.100.0/25", 0x1001, 0x2001),
        ("b", "198.18.0.3", "198.51.100.128/25", 0x1002, 0x2002),
    ] {
        ok(&mut st, Request::UpsertTunnel(tunnel(n, remote, net)));
        ok(&mut st, Request::AddSa(sa(n, Direction::Out, o, 1)));
        ok(&mut st, Request::AddSa(sa(n, Direction::In, i, 2)));
    }
    ok(&mut st, Request::AddSa(sa("a", Direction::In, 0x2003, 3)));
    let mut w = EspWorker::new(default_provider(), Arc::new(EventQueue::new(16))).unwrap();
    encap_one(&mut w, &tables, Ipv4Addr::new(198, 51, 100, 5)).unwrap();
    let a_out = st.outbound_sa("a").unwrap();
    let a_in = st.inbound_sa("a", 0x2001).unwrap();

    // A sync restating a (one inbound SA changed, one omitted) and omitting b, plus a new c.
    ok(&mut st, Request::BeginSync { generation: 7 });
    ok(&mut st, Request::UpsertTunnel(tunnel("a", "198.18.0.2", "198.51.100.0/25")));
    ok(&mut st, Request::AddSa(sa("a", Direction::Out, 0x1001, 1)));
    let mut changed = sa("a", Direction::In, 0x2001, 2);
    changed.replay_window = 64;
    ok(&mut st, Request::AddSa(changed));
    ok(&mut st, Request::UpsertTunnel(tunnel("c", "198.18.0.4", "203.0.113.0/25")));
    // (203.0.113.0/24 is static; a /25 inside it is a different route and allowed.)
    ok(&mut st, Request::AddSa(sa("c", Direction::Out, 0x1004, 4)));
    assert!(refused(&mut st, Request::EndSync { generation: 8 }).starts_with("generation: "));
    let done = ok(&mut st, Request::EndSync { generation: 7 });
    assert_eq!(done, Response::SyncDone { generation: 7, added: 1, replaced: 1, kept: 1, removed: 3 });

    assert!(Arc::ptr_eq(&a_out, &st.outbound_sa("a").unwrap()), "unchanged SA kept as the same object");
    assert_eq!(st.outbound_sa("a").unwrap().last_seq(), 1);
    assert!(!Arc::ptr_eq(&a_in, &st.inbound_sa("a", 0x2001).unwrap()));
    assert!(!tables.inbound.contains(Spi(0x2003), local), "unrestated SA removed");
    assert!(!tables.inbound.contains(Spi(0x2002), local), "unrestated tunnel's SAs removed");
    assert_eq!(st.tunnel_names(), vec!["a".to_string(), "c".to_string()]);
    assert_eq!(resolves(&tables, "198.51.100.200"), None, "b's route is gone");
    assert!(resolves(&tables, "198.51.100.5").is_some());
    // The static configuration is untouched.
    assert!(tables.inbound.contains(Spi(0x5000), local));
    assert_eq!(resolves(&tables, "203.0.113.200").map(|(_, s)| s), Some(0x5001));
    assert!(refused(&mut st, Request::EndSync { generation: 7 }).starts_with("generation: "));

    // An empty sync removes everything control-owned, and only that.
    ok(&mut st, Request::BeginSync { generation: 8 });
    let done = ok(&mut st, Request::EndSync { generation: 8 });
    assert_eq!(done, Response::SyncDone { generation: 8, added: 0, replaced: 0, kept: 0, removed: 3 });
    assert_eq!(st.control_sas(), 0);
    assert!(tables.inbound.contains(Spi(0x5000), local));
}

#[test]
fn static_state_is_not_the_control_sides() {
    let (mut st, tables, _) = setup();
    let e = refused(&mut st, Request::UpsertTunnel(tunnel("static", "198.18.0.2", "198.51.100.0/24")));
    assert!(e.starts_with("tunnel.name: ") && e.contains("static configuration"), "{e}");
    let e = refused(&mut st, Request::AddSa(sa("static", Direction::Out, 0x1001, 1)));
    assert!(e.starts_with("sa.tunnel: "), "{e}");
    let e = refused(&mut st, Request::RemoveTunnel { name: "static".into() });
    assert!(e.contains("static configuration"), "{e}");
    let e = refused(&mut st, Request::UpsertTunnel(tunnel("x", "198.18.0.2", "203.0.113.0/24")));
    assert!(e.starts_with("tunnel.remote_subnets[0]: ") && e.contains("\"static\""), "{e}");
    // A control SA may not take a static inbound SPI.
    ok(&mut st, Request::UpsertTunnel(tunnel("x", "198.18.0.2", "198.51.100.0/24")));
    let e = refused(&mut st, Request::AddSa(sa("x", Direction::In, 0x5000, 1)));
    assert!(e.starts_with("sa.spi: "), "{e}");
    assert_eq!(resolves(&tables, "203.0.113.1").map(|(_, s)| s), Some(0x5001));
}

#[test]
fn validation_errors_name_the_field_and_never_the_key() {
    let (mut st, _, _) = setup();
    let mut t = tunnel("a", "198.18.0.2", "198.51.100.0/24");
    t.local_addr = "198.18.0.7".parse().unwrap();
    assert!(refused(&mut st, Request::UpsertTunnel(t)).starts_with("tunnel.local_addr: "));
    let mut t = tunnel("a", "198.18.0.2", "198.51.100.0/24");
    t.remote_subnets = vec!["198.51.100.1/24".parse().unwrap()];
    assert!(refused(&mut st, Request::UpsertTunnel(t)).starts_with("tunnel.remote_subnets[0]: "));
    assert!(refused(&mut st, Request::AddSa(sa("nope", Direction::Out, 0x1001, 1))).starts_with("sa.tunnel: "));

    ok(&mut st, Request::UpsertTunnel(tunnel("a", "198.18.0.2", "198.51.100.0/24")));
    let mut s = sa("a", Direction::Out, 0x1001, 1);
    s.cipher = "rot13".into();
    assert!(refused(&mut st, Request::AddSa(s)).starts_with("sa.cipher: "));
    let mut s = sa("a", Direction::Out, 0x1001, 1);
    s.enc_key = Secret::new(vec![0xab; 19]);
    let e = refused(&mut st, Request::AddSa(s));
    assert!(e.starts_with("sa.enc_key: ") && e.contains("20 bytes, got 19"), "{e}");
    assert!(!e.to_lowercase().contains("abab"), "{e}");
    let mut s = sa("a", Direction::Out, 0x1001, 1);
    s.integrity = "sha1".into();
    s.auth_key = Secret::new(vec![1; 20]);
    assert!(refused(&mut st, Request::AddSa(s)).starts_with("sa.integrity: "));
    let mut s = sa("a", Direction::In, 0x1001, 1);
    s.replay_window = 5;
    assert!(refused(&mut st, Request::AddSa(s)).starts_with("sa.replay_window: "));
    let mut s = sa("a", Direction::Out, 0x1001, 1);
    s.lifetime = ChLifetime { soft_seconds: 10, hard_seconds: 5, ..Default::default() };
    assert!(refused(&mut st, Request::AddSa(s)).starts_with("sa.lifetime.soft_seconds: "));
    assert!(refused(&mut st, Request::AddSa(sa("a", Direction::Out, 12, 1))).starts_with("sa.spi: "));
    assert_eq!(st.control_sas(), 0, "refused requests change nothing");
}

#[test]
fn events_carry_tunnel_names() {
    let (mut st, tables, _) = setup();
    ok(&mut st, Request::UpsertTunnel(tunnel("a", "198.18.0.2", "198.51.100.0/24")));
    ok(&mut st, Request::AddSa(sa("a", Direction::In, 0x2001, 2)));
    let q = Arc::new(EventQueue::new(16));
    let mut w = EspWorker::new(default_provider(), q.clone()).unwrap();
    // Traffic for a tunnel with no outbound SA raises an acquire with its id.
    assert!(encap_one(&mut w, &tables, Ipv4Addr::new(198, 51, 100, 5)).is_err());
    let e = q.pop().expect("acquire");
    assert_eq!(st.event(e), Some(Event::Acquire { tunnel: "a".into() }));
    let expired = SaEvent::Expired { spi: 0x2001, direction: ipsec_esp::Direction::Inbound, limit: LimitKind::Time };
    assert_eq!(
        st.event(expired),
        Some(Event::Expired { tunnel: "a".into(), direction: Direction::In, spi: 0x2001, limit: Limit::Time })
    );
    let rekey =
        SaEvent::RekeyRequested { spi: 0x5001, direction: ipsec_esp::Direction::Outbound, limit: LimitKind::Bytes };
    assert_eq!(
        st.event(rekey),
        Some(Event::RekeyRequested {
            tunnel: "static".into(),
            direction: Direction::Out,
            spi: 0x5001,
            limit: Limit::Bytes
        })
    );
    let stale = SaEvent::Expired { spi: 0x9999, direction: ipsec_esp::Direction::Inbound, limit: LimitKind::Time };
    assert_eq!(st.event(stale), None);

    // Idle SAs get their time limits checked by the channel thread's housekeeping.
    let mut s = sa("a", Direction::Out, 0x1001, 1);
    s.lifetime.hard_seconds = 1;
    ok(&mut st, Request::AddSa(s));
    st.poll_lifetimes(&q, Instant::now() + Duration::from_secs(2));
    let evs: Vec<_> = std::iter::from_fn(|| q.pop()).filter_map(|e| st.event(e)).collect();
    assert!(
        evs.contains(&Event::Expired {
            tunnel: "a".into(),
            direction: Direction::Out,
            spi: 0x1001,
            limit: Limit::Time
        }),
        "{evs:?}"
    );
    // After an outbound switch, events about the old SA are stale; the new one is found.
    ok(&mut st, Request::AddSa(sa("a", Direction::Out, 0x1002, 5)));
    let old =
        SaEvent::RekeyRequested { spi: 0x1001, direction: ipsec_esp::Direction::Outbound, limit: LimitKind::Time };
    assert_eq!(st.event(old), None);
    let new =
        SaEvent::RekeyRequested { spi: 0x1002, direction: ipsec_esp::Direction::Outbound, limit: LimitKind::Time };
    assert!(matches!(st.event(new), Some(Event::RekeyRequested { tunnel, .. }) if tunnel == "a"));
}

#[test]
fn counters_per_tunnel_and_all() {
    let (mut st, tables, _) = setup();
    ok(&mut st, Request::UpsertTunnel(tunnel("a", "198.18.0.2", "198.51.100.0/24")));
    ok(&mut st, Request::AddSa(sa("a", Direction::Out, 0x1001, 1)));
    let mut w = EspWorker::new(default_provider(), Arc::new(EventQueue::new(16))).unwrap();
    for _ in 0..5 {
        encap_one(&mut w, &tables, Ipv4Addr::new(198, 51, 100, 5)).unwrap();
    }
    let ws = Arc::new(WorkerStats::new(0, vec!["o/0".into(), "i/0".into()], w.counters().clone()));
    ws.rx[1].add(5);
    let Response::Counters(r) =
        st.apply(Request::Counters { tunnel: Some("a".into()) }, Instant::now(), std::slice::from_ref(&ws)).unwrap()
    else {
        panic!()
    };
    assert_eq!(r.sas.len(), 1);
    assert_eq!((r.sas[0].spi, r.sas[0].packets, r.sas[0].direction), (0x1001, 5, Some(Direction::Out)));
    assert!(r.sas[0].bytes >= 5 * 44);
    assert!(r.workers.is_empty());
    let Response::Counters(r) = st.apply(Request::Counters { tunnel: None }, Instant::now(), &[ws]).unwrap() else {
        panic!()
    };
    assert_eq!(r.sas.len(), 3, "static SAs too");
    assert_eq!(r.workers[0].rx, 5);
    assert!(st
        .apply(Request::Counters { tunnel: Some("zz".into()) }, Instant::now(), &[])
        .unwrap_err()
        .starts_with("tunnel: "));
}

#[test]
fn a_sync_abandoned_with_its_session_removes_nothing() {
    let (mut st, _, _) = setup();
    ok(&mut st, Request::UpsertTunnel(tunnel("a", "198.18.0.2", "198.51.100.0/24")));
    ok(&mut st, Request::AddSa(sa("a", Direction::Out, 0x1001, 1)));
    ok(&mut st, Request::BeginSync { generation: 3 });
    ok(&mut st, Request::UpsertTunnel(tunnel("b", "198.18.0.3", "203.0.113.128/25")));
    assert!(st.abandon_sync());
    assert!(!st.abandon_sync());
    assert!(refused(&mut st, Request::EndSync { generation: 3 }).starts_with("generation: "));
    assert_eq!(st.tunnel_names(), vec!["a".to_string(), "b".to_string()]);
    assert!(st.outbound_sa("a").is_some());
}

#[test]
fn tunnel_mtu_is_the_inner_mtu_and_changing_it_rebuilds_only_the_outbound_sa() {
    let (mut st, tables, _) = setup();
    let mut t = tunnel("a", "198.18.0.2", "198.51.100.0/24");
    t.mtu = Some(1300);
    ok(&mut st, Request::UpsertTunnel(t.clone()));
    ok(&mut st, Request::AddSa(sa("a", Direction::Out, 0x1001, 1)));
    ok(&mut st, Request::AddSa(sa("a", Direction::In, 0x2001, 2)));
    let out = st.outbound_sa("a").unwrap();
    let inner = out.inner_mtu(1500);
    assert!((1300..1300 + 16).contains(&inner), "inner MTU {inner}");
    assert_eq!(st.outbound_sa("a").unwrap().inner_mtu(9000), inner, "the override caps a larger link MTU");
    let mut w = EspWorker::new(default_provider(), Arc::new(EventQueue::new(16))).unwrap();
    encap_one(&mut w, &tables, Ipv4Addr::new(198, 51, 100, 5)).unwrap();
    let inb = st.inbound_sa("a", 0x2001).unwrap();
    t.mtu = Some(1200);
    ok(&mut st, Request::UpsertTunnel(t.clone()));
    let out2 = st.outbound_sa("a").unwrap();
    assert!(!Arc::ptr_eq(&out, &out2));
    assert!((1200..1216).contains(&out2.inner_mtu(1500)));
    assert_eq!(out2.last_seq(), 1, "sequence numbers continue");
    assert!(Arc::ptr_eq(&inb, &st.inbound_sa("a", 0x2001).unwrap()), "inbound SA untouched");
    t.mtu = None;
    ok(&mut st, Request::UpsertTunnel(t));
    assert_eq!(st.outbound_sa("a").unwrap().inner_mtu(1500), out.max_inner_len(1500));
}
