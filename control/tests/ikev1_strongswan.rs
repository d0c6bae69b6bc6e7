//! The IKEv1 core (`ipsec_ike::v1`) against strongSwan's charon, over real UDP sockets (500 and
//! 4500) between two network namespaces: main mode and aggressive mode with a PSK, we as
//! initiator and as responder. Each run checks that
//!
//! * `swanctl --list-sas` shows the IKEv1 SA ESTABLISHED and the Child SA INSTALLED with the two
//!   SPIs our side computed, and
//! * our SKEYID, SKEYID_d/a/e, the phase-1 cipher key and both ESP KEYMATs equal charon's dumps
//!   (`ike = 4`, `chd = 4`) byte for byte.
//!
//! charon (kernel-libipsec) always UDP-encapsulates ESP, i.e. it fakes a NAT: NAT-T (RFC 3947)
//! is exercised in every run.
//!
//! Needs root (namespaces); prints SKIPPED otherwise, fails if IPSEC_REQUIRE_ROOT_TESTS=1.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{text, Charon, PairLab};

use ipsec_ike::crypto::dh::DhGroup;
use ipsec_ike::ike_sa::Event;
use ipsec_ike::message::Identification;
use ipsec_ike::nat::{classify, Received};
use ipsec_ike::transforms::{EncrAlg, IntegAlg};
use ipsec_ike::v1::keys::HashAlg;
use ipsec_ike::v1::message::{IdPayload, Subnet};
use ipsec_ike::v1::sa::{Config, EspProposal, Mode, Phase1Proposal, Sa};
use rand_core::SeedableRng;

const PSK: &str = "ikev1-psk-5f0a1c2e";
const US: &str = "198.18.0.1";
const CHARON_IP: &str = "198.18.0.2";

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Case {
    name: &'static str,
    mode: Mode,
    swan_ike: &'static str,
    swan_esp: &'static str,
    ike: Phase1Proposal,
    esp: EspProposal,
    pfs: Option<DhGroup>,
    /// Our identity as an FQDN instead of our address.
    our_fqdn: Option<&'static str>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "main aes128-sha256-modp2048 / esp aes128-sha256",
            mode: Mode::Main,
            swan_ike: "aes128-sha256-modp2048",
            swan_esp: "aes128-sha256",
            ike: Phase1Proposal { encr: EncrAlg::AES128_CBC, hash: HashAlg::Sha256, group: DhGroup::Modp2048 },
            esp: EspProposal { encr: EncrAlg::AES128_CBC, integ: Some(IntegAlg::HmacSha256_128) },
            pfs: None,
            our_fqdn: None,
        },
        Case {
            name: "aggressive 3des-sha1-modp1024 / esp aes256-sha1-modp1024 (PFS)",
            mode: Mode::Aggressive,
            swan_ike: "3des-sha1-modp1024",
            swan_esp: "aes256-sha1-modp1024",
            ike: Phase1Proposal { encr: EncrAlg::TripleDes, hash: HashAlg::Sha1, group: DhGroup::Modp1024 },
            esp: EspProposal { encr: EncrAlg::AES256_CBC, integ: Some(IntegAlg::HmacSha1_96) },
            pfs: Some(DhGroup::Modp1024),
            our_fqdn: None,
        },
        Case {
            name: "main aes256-sha384-ecp384 / esp aes128gcm16",
            mode: Mode::Main,
            swan_ike: "aes256-sha384-ecp384",
            swan_esp: "aes128gcm16",
            ike: Phase1Proposal { encr: EncrAlg::AES256_CBC, hash: HashAlg::Sha384, group: DhGroup::Ecp384 },
            esp: EspProposal { encr: EncrAlg::AES128_GCM16, integ: None },
            pfs: None,
            our_fqdn: None,
        },
        Case {
            name: "aggressive aes192-sha512-ecp256 / esp 3des-md5-modp2048 (PFS), 24 h ISAKMP lifetime (TLV), FQDN ID",
            mode: Mode::Aggressive,
            swan_ike: "aes192-sha512-ecp256",
            swan_esp: "3des-md5-modp2048",
            ike: Phase1Proposal {
                encr: EncrAlg::AesCbc { key_bits: 192 },
                hash: HashAlg::Sha512,
                group: DhGroup::Ecp256,
            },
            esp: EspProposal { encr: EncrAlg::TripleDes, integ: Some(IntegAlg::HmacMd5_96) },
            pfs: Some(DhGroup::Modp2048),
            our_fqdn: Some("gw1.example"),
        },
    ]
}

fn swanctl_conf(c: &Case) -> String {
    let aggressive = if c.mode == Mode::Aggressive { "yes" } else { "no" };
    let us = c.our_fqdn.unwrap_or(US);
    format!(
        "connections {{
  t {{
    version = 1
    aggressive = {aggressive}
    local_addrs = {CHARON_IP}
    remote_addrs = {US}
    proposals = {ike}
    rekey_time = 0
    reauth_time = 0
    local {{
      auth = psk
      id = {CHARON_IP}
    }}
    remote {{
      auth = psk
      id = {us}
    }}
    children {{
      t {{
        local_ts = 198.51.100.0/24
        remote_ts = 192.0.2.0/24
        esp_proposals = {esp}
        rekey_time = 0
        start_action = none
      }}
    }}
  }}
}}
secrets {{
  ike-t {{
    id-a = {us}
    id-b = {CHARON_IP}
    secret = \"{PSK}\"
  }}
}}
",
        ike = c.swan_ike,
        esp = c.swan_esp,
    )
}

fn our_config(c: &Case) -> Config {
    let mut cfg = Config::new(PSK.as_bytes());
    cfg.mode = c.mode;
    cfg.ike_proposals = vec![c.ike];
    cfg.esp_proposals = vec![c.esp];
    cfg.pfs = c.pfs;
    cfg.local_id = c.our_fqdn.map(|f| IdPayload::from_identification(&Identification::Fqdn(f.as_bytes().to_vec())));
    cfg.local_subnets = vec![Subnet::new("192.0.2.0".parse().unwrap(), 24)];
    cfg.remote_subnets = vec![Subnet::new("198.51.100.0".parse().unwrap(), 24)];
    cfg.retransmit_initial = Duration::from_secs(1);
    // Longer than 65535 s: the life duration goes out as a variable-length attribute.
    cfg.ike_lifetime = Duration::from_secs(24 * 3600);
    cfg
}

/// Our sockets and SA inside namespace a.
struct Ours {
    case: usize,
    s500: UdpSocket,
    s4500: UdpSocket,
    sa: Option<Sa>,
    rng: rand_chacha::ChaCha20Rng,
    log: String,
    child: Option<ipsec_ike::ike_sa::ChildSa>,
    installed: Vec<ipsec_ike::ike_sa::ChildSa>,
    deleted: Vec<(u32, u32)>,
    closed: bool,
    esp_seen: usize,
}

impl Ours {
    /// One round: send what is queued, take events, run due timers, read both sockets.
    fn step(&mut self) {
        let now = Instant::now();
        let c = &cases()[self.case];
        if let Some(sa) = self.sa.as_mut() {
            while let Some(t) = sa.poll_transmit(now) {
                let s = if t.local.port() == 4500 { &self.s4500 } else { &self.s500 };
                self.log.push_str(&format!("send {} -> {} ({} octets)\n", t.local, t.remote, t.payload.len()));
                s.send_to(&t.to_datagram(), t.remote).expect("send");
            }
            while let Some(e) = sa.poll_event() {
                self.log.push_str(&format!("event {e:?}\n"));
                match e {
                    Event::ChildSaInstalled(cs) => {
                        self.installed.push(cs.clone());
                        self.child.get_or_insert(cs);
                    }
                    Event::ChildSaDeleted { spi_in, spi_out } => self.deleted.push((spi_in, spi_out)),
                    Event::Failed(f) => panic!("our SA failed: {f:?}\n{}", self.log),
                    Event::Closed => self.closed = true,
                    _ => {}
                }
            }
            if sa.poll_timeout().is_some_and(|t| t <= now) {
                sa.handle_timeout(now, &mut self.rng);
                return;
            }
        }
        let mut buf = [0u8; 65536];
        let mut got = false;
        for (s, natt) in [(&self.s500, false), (&self.s4500, true)] {
            let local = s.local_addr().unwrap();
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                got = true;
                match classify(natt, &buf[..n]) {
                    Received::Ike(m) => {
                        self.log.push_str(&format!("recv {from} -> {local} ({} octets)\n", m.len()));
                        let sa = self.sa.get_or_insert_with(|| Sa::respond(our_config(c), local, from, now));
                        sa.handle(now, local, from, m, &mut self.rng);
                    }
                    Received::Esp(_) => self.esp_seen += 1,
                    _ => {}
                }
            }
        }
        if !got {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Steps until `done` or `limit` (panics then, naming `what`).
    fn until(&mut self, what: &str, limit: Duration, mut done: impl FnMut(&Ours) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            assert!(Instant::now() < deadline, "{what}: not within {limit:?}; log:\n{}", self.log);
            self.step();
        }
    }

    fn pump(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.step();
        }
    }
}

/// Our side, run inside namespace a by [`inner_v1`]: drives one [`Sa`] over UDP 500/4500 until a
/// Child SA is installed, checks DPD, writes the keys, and deletes everything when `close`
/// appears.
fn our_side(case: usize, we_initiate: bool, out: &Path, ready: &Path) {
    let c = &cases()[case];
    let local500: SocketAddr = format!("{US}:500").parse().unwrap();
    let peer: SocketAddr = format!("{CHARON_IP}:500").parse().unwrap();
    let s500 = UdpSocket::bind(local500).expect("bind 500");
    let s4500 = UdpSocket::bind(format!("{US}:4500")).expect("bind 4500");
    for s in [&s500, &s4500] {
        s.set_nonblocking(true).unwrap();
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::from_seed(seed);
    let sa = we_initiate.then(|| Sa::initiate(our_config(c), local500, peer, Instant::now(), &mut rng));
    let mut o = Ours {
        case,
        s500,
        s4500,
        sa,
        rng,
        log: String::new(),
        child: None,
        installed: Vec::new(),
        deleted: Vec::new(),
        closed: false,
        esp_seen: 0,
    };
    std::fs::write(ready, b"").unwrap();
    let finish_log = |o: &Ours| std::fs::write(out.with_extension("log"), &o.log).unwrap();

    o.until("Child SA installed", Duration::from_secs(25), |o| o.child.is_some());
    // Let the last message reach charon (and any INITIAL-CONTACT arrive).
    o.pump(Duration::from_millis(500));
    // DPD: charon answers our R-U-THERE.
    let seq = o.sa.as_mut().unwrap().send_dpd(Instant::now(), &mut o.rng);
    o.until("R-U-THERE-ACK", Duration::from_secs(5), |o| o.sa.as_ref().unwrap().last_dpd_ack() == Some(seq));

    let sa = o.sa.as_ref().unwrap();
    let child = o.child.clone().unwrap();
    let k = sa.keys().unwrap();
    let mut lines = String::new();
    for (name, v) in [
        ("SKEYID", k.skeyid.expose()),
        ("SKEYID_d", k.skeyid_d.expose()),
        ("SKEYID_a", k.skeyid_a.expose()),
        ("SKEYID_e", k.skeyid_e.expose()),
        ("encryption key Ka", k.enc_key.expose()),
        ("initial IV", &k.iv),
        ("encr_i", child.keys.encr_i.expose()),
        ("integ_i", child.keys.integ_i.expose()),
        ("encr_r", child.keys.encr_r.expose()),
        ("integ_r", child.keys.integ_r.expose()),
        ("spi_i", &child.spi_i.to_be_bytes()),
        ("spi_r", &child.spi_r.to_be_bytes()),
    ] {
        lines.push_str(&format!("{name}={}\n", hex(v)));
    }
    lines.push_str(&format!("encap={:?}\ndpd=ack {seq}\n", child.encap));
    finish_log(&o);
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, lines).unwrap();
    std::fs::rename(&tmp, out).unwrap();

    // charon rekeys (`swanctl --rekey`): a quick mode from charon, we answer.
    o.until("charon's rekey", Duration::from_secs(20), |o| o.installed.len() >= 2);
    let second = o.installed[1].clone();
    finish_log(&o);
    std::fs::write(out.with_extension("rekey1"), format!("{:08x} {:08x}\n", second.spi_i, second.spi_r)).unwrap();
    // Our rekey of the newest SA: new quick mode from us, then our DELETE of the old one.
    let go = out.with_extension("rekey2-go");
    o.until("go for our rekey", Duration::from_secs(20), |_| go.exists());
    let old_in = second.inbound_spi();
    o.sa.as_mut().unwrap().rekey_child(Instant::now(), old_in, &mut o.rng);
    o.until("our rekey", Duration::from_secs(10), |o| {
        o.installed.len() >= 3 && o.deleted.iter().any(|(i, _)| *i == old_in)
    });
    let third = o.installed[2].clone();
    o.pump(Duration::from_millis(200));
    finish_log(&o);
    std::fs::write(out.with_extension("rekey2"), format!("{:08x} {:08x}\n", third.spi_i, third.spi_r)).unwrap();

    // Keep answering until the test has looked at charon, then delete everything.
    let close = out.with_extension("close");
    o.until("close request", Duration::from_secs(30), |_| close.exists());
    let now = Instant::now();
    o.sa.as_mut().unwrap().close(now, &mut o.rng);
    o.pump(Duration::from_millis(200));
    assert!(o.closed, "no Closed event");
    o.log.push_str(&format!("esp datagrams seen: {}\n", o.esp_seen));
    finish_log(&o);
}

/// Re-executed inside namespace a by [`ikev1_against_strongswan`]; does nothing in a normal run.
#[test]
#[ignore = "run by ikev1_against_strongswan inside its namespace"]
fn inner_v1() {
    let (Some(case), Some(init), Some(out), Some(ready)) = (
        std::env::var("V1_INNER_CASE").ok(),
        std::env::var("V1_INNER_INIT").ok(),
        std::env::var_os("V1_INNER_OUT"),
        std::env::var_os("V1_INNER_READY"),
    ) else {
        return;
    };
    our_side(case.parse().unwrap(), init == "1", Path::new(&out), Path::new(&ready));
}

fn one_run(case: usize, we_initiate: bool, tag: &str) {
    let c = &cases()[case];
    let role = if we_initiate { "we initiate" } else { "charon initiates" };
    let started = Instant::now();
    let mut lab = PairLab::new("ipv1", tag, "V1_KEEP");
    let charon = Charon::start_with(
        &lab.b,
        lab.dir.join("charon"),
        &swanctl_conf(c),
        "ike = 4\n      chd = 4\n      cfg = 2\n      net = 1\n      enc = 2",
        "charon {\n  i_dont_care_about_security_and_use_aggressive_mode_psk = yes\n}\n",
    );
    let out = lab.dir.join("ours.keys");
    let ready = lab.dir.join("ours.ready");
    let exe = std::env::current_exe().unwrap();
    let inner = Command::new("ip")
        .args(["netns", "exec", &lab.a])
        .arg(&exe)
        .args(["--exact", "inner_v1", "--ignored", "--nocapture", "--test-threads", "1"])
        .env("V1_INNER_CASE", case.to_string())
        .env("V1_INNER_INIT", if we_initiate { "1" } else { "0" })
        .env("V1_INNER_OUT", &out)
        .env("V1_INNER_READY", &ready)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("inner side");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "our side did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    if !we_initiate {
        let child = charon
            .swanctl_command(&["--initiate", "--child", "t", "--timeout", "20"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("swanctl --initiate");
        lab.children.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut inner = Some(inner);
    while !out.exists() {
        if Instant::now() > deadline || inner.as_mut().unwrap().try_wait().unwrap().is_some() {
            let o = inner.take().unwrap().wait_with_output().unwrap();
            let ours_log = std::fs::read_to_string(out.with_extension("log")).unwrap_or_default();
            panic!(
                "{} ({role}): our side failed: {}\nour log:\n{ours_log}\ncharon:\n{}",
                c.name,
                text(&o),
                charon.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let charon_log = charon.log();
    let ours: HashMap<String, String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();

    // swanctl --list-sas: established, installed, with our SPIs.
    let sas = charon.list_sas();
    assert!(sas.contains("IKEv1") && sas.contains("ESTABLISHED"), "{} ({role}): {sas}\n{charon_log}", c.name);
    assert!(sas.contains("INSTALLED"), "{} ({role}): {sas}\n{charon_log}", c.name);
    if let Some(f) = c.our_fqdn {
        assert!(sas.contains(&format!("remote '{f}'")), "{} ({role}): our ID {f} not in {sas}", c.name);
    }
    for spi in ["spi_i", "spi_r"] {
        assert!(sas.contains(&ours[spi]), "{} ({role}): SPI {} not in\n{sas}", c.name, ours[spi]);
    }
    assert!(sas.contains("TUNNEL-in-UDP") || sas.contains("UDP"), "{} ({role}): not UDP-encapsulated: {sas}", c.name);

    // Phase-1 keys against charon's dumps.
    let p1 = ["SKEYID", "SKEYID_d", "SKEYID_a", "SKEYID_e", "encryption key Ka", "initial IV"];
    let theirs = support::charon_dumps(&charon_log, &p1);
    let mut compared = 0;
    for label in p1 {
        let t = theirs.get(label).unwrap_or_else(|| panic!("charon logged no {label:?}\n{charon_log}"));
        assert_eq!(&hex(t), &ours[label], "{} ({role}): {label} differs from strongSwan's", c.name);
        compared += 1;
    }
    // ESP KEYMAT split into keys; "initiator" is the quick mode initiator's outbound direction
    // in charon's dumps as in ours.
    let child = [
        ("encr_i", "encryption initiator key"),
        ("encr_r", "encryption responder key"),
        ("integ_i", "integrity initiator key"),
        ("integ_r", "integrity responder key"),
    ];
    let labels: Vec<&str> = child.iter().map(|(_, l)| *l).collect();
    let theirs = support::charon_dumps(&charon_log, &labels);
    for (ours_name, label) in child {
        if ours[ours_name].is_empty() {
            // AES-GCM: no integrity key, and charon dumps none.
            assert!(!theirs.contains_key(label), "{} ({role}): charon has a {label}", c.name);
            continue;
        }
        let t = theirs.get(label).unwrap_or_else(|| panic!("charon logged no {label:?}\n{charon_log}"));
        assert_eq!(&hex(t), &ours[ours_name], "{} ({role}): {label} differs from strongSwan's", c.name);
        compared += 1;
    }
    // Rekeys: charon's, then ours; charon must end up with our third SA and without the second.
    let wait_file = |f: PathBuf, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(25);
        while !f.exists() {
            let ours_log = std::fs::read_to_string(out.with_extension("log")).unwrap_or_default();
            assert!(
                Instant::now() < deadline,
                "{} ({role}): {what} not seen\nour log:\n{ours_log}\n{}",
                c.name,
                charon.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::read_to_string(&f).unwrap()
    };
    let o = charon.swanctl(&["--rekey", "--child", "t"]);
    assert!(o.status.success(), "swanctl --rekey: {}", text(&o));
    let second = wait_file(out.with_extension("rekey1"), "charon's rekey");
    std::fs::write(out.with_extension("rekey2-go"), b"").unwrap();
    let third = wait_file(out.with_extension("rekey2"), "our rekey");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sas = charon.list_sas();
        let has = |spis: &str| spis.split_whitespace().all(|x| sas.contains(x));
        if has(&third) && !second.split_whitespace().any(|x| sas.contains(x)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} ({role}): after our rekey charon should have {third} and not {second}: {sas}",
            c.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Our DELETEs remove both SAs from charon.
    std::fs::write(out.with_extension("close"), b"").unwrap();
    let o = inner.take().unwrap().wait_with_output().unwrap();
    let ours_log = std::fs::read_to_string(out.with_extension("log")).unwrap_or_default();
    assert!(
        o.status.success(),
        "{} ({role}): our side failed: {}\nour log:\n{ours_log}\n{}",
        c.name,
        text(&o),
        charon.log()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sas = charon.list_sas();
        if !sas.contains("ESTABLISHED") && !sas.contains("INSTALLED") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} ({role}): charon kept the SAs after our DELETE: {sas}\n{}",
            c.name,
            charon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = charon.log();
    if std::env::var_os("V1_VERBOSE").is_some() {
        eprintln!("our log:\n{ours_log}\ncharon:\n{log}");
    }
    assert!(log.contains("received DELETE for IKE_SA") || log.contains("deleting IKE_SA"), "{}", log);
    eprintln!(
        "{} ({role}): ESTABLISHED + INSTALLED, {compared} keys equal strongSwan's, {}, {}, rekeyed by charon and by us, DELETE honoured ({:.1} s)",
        c.name,
        ours.get("encap").map_or("", String::as_str),
        ours.get("dpd").map_or("", String::as_str),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn ikev1_against_strongswan() {
    if std::env::var_os("V1_INNER_CASE").is_some() {
        return;
    }
    if !run("id", &["-u"]).stdout.starts_with(b"0\n") {
        assert!(
            std::env::var("IPSEC_REQUIRE_ROOT_TESTS").as_deref() != Ok("1"),
            "IPSEC_REQUIRE_ROOT_TESTS=1 but not root"
        );
        eprintln!("SKIPPED ikev1_against_strongswan: needs root (network namespaces, charon)");
        return;
    }
    support::ensure_strongswan();
    let only = std::env::var("V1_ONLY").ok();
    for i in 0..cases().len() {
        for (j, we_initiate) in [true, false].into_iter().enumerate() {
            let tag = format!("{}", i * 2 + j);
            if only.as_deref().is_some_and(|o| o != tag) {
                continue;
            }
            one_run(i, we_initiate, &tag);
        }
    }
}
