//! Per-peer responder selection (unprivileged, loopback UDP): one responder daemon with two
//! `%any` connections that differ only in remote ID, PSK and subnets, and three initiator daemons.
//! Alice and carol each land on their own connection (the sink records the Child SA under that
//! connection's name, with that connection's subnets, narrowed from what carol proposed); mallory
//! (unknown ID, carol's PSK) gets AUTHENTICATION_FAILED and nothing is installed for it.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use ipsec_control::config::{selector_prefixes, DaemonConfig};
use ipsec_control::log::Logger;
use ipsec_control::sink::SinkRecord;
use ipsec_control::{Daemon, RecordingSink};

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn list(v: &[&str]) -> String {
    v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
}

const IKE: &str = "[connection.ike]\nproposals = [\"aes128gcm16-prfsha256-ecp256\"]\n";
const ESP: &str = "[connection.ipsec]\nproposals = [\"aes128gcm16\"]\n";

fn responder(port: u16) -> DaemonConfig {
    let conn = |name: &str, id: &str, psk: &str, local: &[&str], remote: &[&str]| {
        format!(
            "[[connection]]\nname = \"{name}\"\nlocal_addr = \"127.0.0.3\"\nremote_addr = \"%any\"\n\
             local_subnets = [{}]\nremote_subnets = [{}]\npsk = \"{psk}\"\neffect_immediately = false\n\
             force_encap = true\n{IKE}local_id = \"gw.example\"\nremote_id = \"{id}\"\n{ESP}",
            list(local),
            list(remote)
        )
    };
    let doc = format!(
        "[daemon]\nike_port = {port}\nnatt_port = {natt}\n{}{}",
        conn("to-alice", "alice.example", "psk-alice-1d2c", &["198.51.100.0/25"], &["192.0.2.0/26"]),
        conn(
            "to-carol",
            "carol.example",
            "psk-carol-93ab",
            &["198.51.100.128/25", "203.0.113.0/24"],
            &["192.0.2.64/26", "192.0.2.128/26"]
        ),
        natt = port + 1
    );
    DaemonConfig::parse(&doc, None).unwrap()
}

fn initiator(me: &str, id: &str, psk: &str, port: u16, local: &[&str], remote: &[&str]) -> DaemonConfig {
    let doc = format!(
        "[daemon]\nike_port = {port}\nnatt_port = {natt}\n[[connection]]\nname = \"gw\"\nlocal_addr = \"{me}\"\n\
         remote_addr = \"127.0.0.3\"\nremote_port = {port}\nlocal_subnets = [{}]\nremote_subnets = [{}]\n\
         psk = \"{psk}\"\neffect_immediately = true\nforce_encap = true\n{IKE}local_id = \"{id}\"\n\
         remote_id = \"gw.example\"\n{ESP}",
        list(local),
        list(remote),
        natt = port + 1
    );
    DaemonConfig::parse(&doc, None).unwrap()
}

fn nets(ts: &[ipsec_ike::message::TrafficSelector]) -> Vec<IpNet> {
    ts.iter().flat_map(selector_prefixes).collect()
}

fn n(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn each_initiator_lands_on_the_connection_of_its_id_and_psk() {
    let port = 21000 + (std::process::id() % 15000) as u16 * 2;
    let (log_r, log_m) = (Buf::default(), Buf::default());
    let sinks: Vec<RecordingSink> = (0..4).map(|_| RecordingSink::default()).collect();
    let mut r = Daemon::new(responder(port), Box::new(sinks[0].clone()), Logger::new(Box::new(log_r.clone()))).unwrap();
    let alice =
        initiator("127.0.0.1", "alice.example", "psk-alice-1d2c", port, &["192.0.2.0/26"], &["198.51.100.0/24"]);
    // Carol asks for more than her connection allows on the responder: narrowed to its subnets.
    let carol = initiator(
        "127.0.0.2",
        "carol.example",
        "psk-carol-93ab",
        port,
        &["192.0.2.64/26", "192.0.2.128/26"],
        &["198.51.100.0/24", "203.0.113.0/24"],
    );
    let mallory =
        initiator("127.0.0.4", "mallory.example", "psk-carol-93ab", port, &["192.0.2.0/24"], &["198.51.100.0/24"]);
    let mut a = Daemon::new(alice, Box::new(sinks[1].clone()), Logger::new(Box::new(Buf::default()))).unwrap();
    let mut c = Daemon::new(carol, Box::new(sinks[2].clone()), Logger::new(Box::new(Buf::default()))).unwrap();
    let mut m = Daemon::new(mallory, Box::new(sinks[3].clone()), Logger::new(Box::new(log_m.clone()))).unwrap();
    r.start();
    for d in [&mut a, &mut c, &mut m] {
        d.start();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let done = || {
        sinks[0].installed().len() == 2
            && !sinks[1].installed().is_empty()
            && !sinks[2].installed().is_empty()
            && log_m.text().contains("AUTHENTICATION_FAILED")
    };
    while !done() {
        assert!(Instant::now() < deadline, "responder log:\n{}\nmallory log:\n{}", log_r.text(), log_m.text());
        for d in [&mut r, &mut a, &mut c, &mut m] {
            d.step(Duration::from_millis(2)).unwrap();
        }
    }
    let installs: Vec<(String, Vec<IpNet>, Vec<IpNet>, u32)> = sinks[0]
        .snapshot()
        .into_iter()
        .filter_map(|rec| match rec {
            SinkRecord::Install { conn, sa } => {
                Some((conn, nets(sa.local_ts()), nets(sa.remote_ts()), sa.outbound_spi()))
            }
            _ => None,
        })
        .collect();
    let of = |name: &str| installs.iter().find(|i| i.0 == name).unwrap_or_else(|| panic!("{name}: {installs:?}"));
    let (_, local, remote, out) = of("to-alice");
    assert_eq!((local.clone(), remote.clone()), (vec![n("198.51.100.0/25")], vec![n("192.0.2.0/26")]));
    assert_eq!(*out, sinks[1].installed()[0].0, "alice's SA is on to-alice");
    let (_, local, remote, out) = of("to-carol");
    assert_eq!(local, &vec![n("198.51.100.128/25"), n("203.0.113.0/24")]);
    assert_eq!(remote, &vec![n("192.0.2.64/26"), n("192.0.2.128/26")]);
    assert_eq!(*out, sinks[2].installed()[0].0, "carol's SA is on to-carol");
    assert!(sinks[3].installed().is_empty());
    let rlog = log_r.text();
    assert!(rlog.contains("IKE_SA moved"), "{rlog}");
    assert!(!rlog.contains("psk-carol") && !rlog.contains("psk-alice"), "PSK in the log");
}
