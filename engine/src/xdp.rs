//! Userspace loader of the XDP steering program (`ebpf/xdp`, object `ebpf/ipsec-xdp.bpf.o`).
//!
//! Contract:
//! - The object is embedded at compile time (the checked-in copy, rebuilt by `ebpf/build.sh`), so
//!   the engine needs no eBPF toolchain. [`verify_object`] checks, without the kernel, that the
//!   embedded object has the program and maps this module expects, with the key/value sizes of
//!   the `ipsec-ebpf-common` types; [`XdpSteering::load`] runs that check first.
//! - [`XdpSteering::load`] loads the program and writes the role, flags, local addresses and
//!   protected prefixes into its maps; [`XdpSteering::attach`] attaches it to one interface, in
//!   native (driver) mode if the driver supports it, else in generic (SKB) mode (logged).
//! - Map updates ([`XdpSteering::insert_xsk`], [`XdpSteering::add_local_addr`],
//!   [`XdpSteering::add_protected`], [`XdpSteering::set_config`]) take effect for the next
//!   packet; no reload.
//! - An AF_XDP socket must be inserted at the index of the rx queue it is bound to: the program
//!   redirects to `XSKS[rx_queue_index]`, and a queue with no socket falls back to the kernel.
//! - Dropping an [`XdpSteering`] detaches the program and frees its maps (nothing is pinned); so
//!   does the process exiting, since the attachment is a BPF link owned by this process (or, on
//!   kernels without XDP links, a netlink attachment that `Drop` removes).
//! - Attaching needs `CAP_NET_ADMIN` + `CAP_BPF` (root); [`verify_object`] needs nothing.

use std::fmt;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, XskMap};
use aya::programs::xdp::XdpLinkId;
use aya::programs::{Xdp, XdpMode};
use aya::{include_bytes_aligned, Ebpf};
use ipsec_ebpf_common::{
    AddrV4, AddrV6, Config, LocalAddr, Protected, Verdict, CONFIG_MAP, COUNTERS_MAP, LOCAL_ADDRS_V4_MAP,
    LOCAL_ADDRS_V6_MAP, PROGRAM_NAME, PROTECTED_V4_MAP, PROTECTED_V6_MAP, ROLE_INSIDE, ROLE_OUTSIDE, VERDICT_COUNT,
    XSKS_MAP,
};

pub use ipsec_ebpf_common::{FLAG_FRAGS_TO_KERNEL, FLAG_PASS_KEEPALIVES};

/// The checked-in object, built by `ebpf/build.sh` (freshness checked by `ebpf/check-fresh.sh`).
static OBJECT: &[u8] = include_bytes_aligned!("../../ebpf/ipsec-xdp.bpf.o");

/// The embedded object's bytes (for tools and tests).
pub fn object_bytes() -> &'static [u8] {
    OBJECT
}

/// The role of the interface the program is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Underlay: ESP, ESP-in-UDP and IKE to a local address are steered.
    Outside,
    /// Protected side: packets to a protected remote subnet are steered.
    Inside,
}

impl Role {
    fn code(self) -> u32 {
        match self {
            Role::Outside => ROLE_OUTSIDE,
            Role::Inside => ROLE_INSIDE,
        }
    }
}

/// How to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic (SKB) mode with a log line.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (SKB) mode only.
    Generic,
}

/// The mode the program ended up attached in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Generic,
}

/// An IP prefix (address + length) for the protected-subnet tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub fn new(addr: IpAddr, len: u8) -> Self {
        Prefix { addr, len }
    }
}

/// What the program is told at load time.
#[derive(Clone, Debug)]
pub struct SteeringConfig {
    pub role: Role,
    /// A set of `FLAG_*` (re-exported from `ipsec-ebpf-common`).
    pub flags: u32,
    /// The gateway's own addresses on an outside interface (ESP/IKE destinations).
    pub local_addrs: Vec<IpAddr>,
    /// Protected remote subnets (inside role).
    pub protected: Vec<Prefix>,
}

impl SteeringConfig {
    pub fn new(role: Role) -> Self {
        SteeringConfig { role, flags: 0, local_addrs: Vec::new(), protected: Vec::new() }
    }
}

/// Per-verdict packet counts, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    values: [u64; VERDICT_COUNT as usize],
}

impl Counters {
    /// The count of one verdict.
    pub fn get(&self, verdict: Verdict) -> u64 {
        self.values[verdict.index() as usize]
    }

    /// `(verdict, count)` in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Verdict, u64)> + '_ {
        Verdict::ALL.iter().map(move |v| (*v, self.get(*v)))
    }

    /// `self - earlier`, per verdict (saturating).
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut out = Counters::default();
        for (i, v) in out.values.iter_mut().enumerate() {
            *v = self.values[i].saturating_sub(earlier.values[i]);
        }
        out
    }

    /// All verdicts that are non-zero, as `name=count` pairs.
    pub fn nonzero(&self) -> Vec<(Verdict, u64)> {
        self.iter().filter(|(_, n)| *n != 0).collect()
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (v, n) in self.iter() {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{}={}", v.name(), n)?;
        }
        Ok(())
    }
}

/// Errors of this module.
#[derive(Debug)]
pub enum XdpError {
    /// The embedded object does not parse, or lacks / mis-sizes a program or map.
    Object(String),
    /// The kernel refused to load the object or program (verifier log included by aya).
    Load(Box<dyn std::error::Error + Send + Sync>),
    /// A map operation failed.
    Map { map: &'static str, error: aya::maps::MapError },
    /// Attaching failed (both modes, for [`AttachMode::Auto`]).
    Attach { interface: String, error: aya::programs::ProgramError },
    /// The operation needs an attached / not yet attached program.
    State(&'static str),
    /// A prefix length larger than the address.
    BadPrefix(Prefix),
}

impl fmt::Display for XdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XdpError::Object(msg) => write!(f, "XDP object: {msg}"),
            XdpError::Load(e) => write!(f, "loading the XDP program: {e}"),
            XdpError::Map { map, error } => write!(f, "XDP map {map}: {error}"),
            XdpError::Attach { interface, error } => write!(f, "attaching XDP to {interface}: {error}"),
            XdpError::State(msg) => f.write_str(msg),
            XdpError::BadPrefix(p) => write!(f, "bad prefix {}/{}", p.addr, p.len),
        }
    }
}

impl std::error::Error for XdpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            XdpError::Load(e) => Some(e.as_ref()),
            XdpError::Map { error, .. } => Some(error),
            XdpError::Attach { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// `(name, map type, key size, value size)` the loader relies on.
fn expected_maps() -> [(&'static str, u32, usize, usize); 7] {
    use std::mem::size_of;
    // BPF_MAP_TYPE_*: HASH 1, ARRAY 2, PERCPU_ARRAY 6, LPM_TRIE 11, XSKMAP 17.
    [
        (XSKS_MAP, 17, 4, 4),
        (CONFIG_MAP, 2, 4, size_of::<Config>()),
        (LOCAL_ADDRS_V4_MAP, 1, size_of::<AddrV4>(), size_of::<LocalAddr>()),
        (LOCAL_ADDRS_V6_MAP, 1, size_of::<AddrV6>(), size_of::<LocalAddr>()),
        (PROTECTED_V4_MAP, 11, 4 + size_of::<AddrV4>(), size_of::<Protected>()),
        (PROTECTED_V6_MAP, 11, 4 + size_of::<AddrV6>(), size_of::<Protected>()),
        (COUNTERS_MAP, 6, 4, size_of::<u64>()),
    ]
}

/// Checks the embedded object without the kernel: it parses, has an XDP program named
/// [`PROGRAM_NAME`], and every map this module uses exists with the expected type and key/value
/// sizes (`COUNTERS` with one slot per verdict).
pub fn verify_object() -> Result<(), XdpError> {
    let obj = aya_obj::Object::parse(OBJECT).map_err(|e| XdpError::Object(format!("parse: {e}")))?;
    match obj.programs.get(PROGRAM_NAME) {
        Some(p) if matches!(p.section, aya_obj::ProgramSection::Xdp { .. }) => {}
        Some(p) => return Err(XdpError::Object(format!("{PROGRAM_NAME} is not XDP: {:?}", p.section))),
        None => {
            let names: Vec<_> = obj.programs.keys().collect();
            return Err(XdpError::Object(format!("no program {PROGRAM_NAME} (has {names:?})")));
        }
    }
    for (name, ty, key, value) in expected_maps() {
        let map = obj.maps.get(name).ok_or_else(|| XdpError::Object(format!("no map {name}")))?;
        let got = (map.map_type(), map.key_size() as usize, map.value_size() as usize);
        if got != (ty, key, value) {
            return Err(XdpError::Object(format!(
                "map {name}: (type, key, value) = {got:?}, expected {:?}",
                (ty, key, value)
            )));
        }
    }
    let counters = &obj.maps[COUNTERS_MAP];
    if counters.max_entries() != VERDICT_COUNT {
        return Err(XdpError::Object(format!(
            "map {COUNTERS_MAP} has {} entries, expected {VERDICT_COUNT}",
            counters.max_entries()
        )));
    }
    Ok(())
}

/// The loaded program and its maps; attached to at most one interface.
pub struct XdpSteering {
    ebpf: Ebpf,
    link: Option<(XdpLinkId, String, AttachedMode)>,
}

impl fmt::Debug for XdpSteering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdpSteering").field("link", &self.link.as_ref().map(|(_, i, m)| (i, m))).finish()
    }
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> XdpError {
    move |error| XdpError::Map { map, error }
}

impl XdpSteering {
    /// Verifies and loads the embedded object, loads the program into the kernel and writes
    /// `config` into the maps. Not attached yet.
    pub fn load(config: &SteeringConfig) -> Result<Self, XdpError> {
        verify_object()?;
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| XdpError::Load(Box::new(e)))?;
        let program: &mut Xdp = program_mut(&mut ebpf)?;
        program.load().map_err(|e| XdpError::Load(Box::new(e)))?;
        let mut steering = XdpSteering { ebpf, link: None };
        steering.set_config(config.role, config.flags)?;
        for addr in &config.local_addrs {
            steering.add_local_addr(*addr)?;
        }
        for prefix in &config.protected {
            steering.add_protected(*prefix, 0)?;
        }
        Ok(steering)
    }

    /// Attaches to `interface` (by name, in the calling thread's network namespace).
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<AttachedMode, XdpError> {
        if self.link.is_some() {
            return Err(XdpError::State("XDP program already attached"));
        }
        let program = program_mut(&mut self.ebpf)?;
        let attach_err = |error| XdpError::Attach { interface: interface.to_string(), error };
        let (id, attached) = match mode {
            AttachMode::Native => {
                (program.attach(interface, XdpMode::Driver).map_err(attach_err)?, AttachedMode::Native)
            }
            AttachMode::Generic => {
                (program.attach(interface, XdpMode::Skb).map_err(attach_err)?, AttachedMode::Generic)
            }
            AttachMode::Auto => match program.attach(interface, XdpMode::Driver) {
                Ok(id) => (id, AttachedMode::Native),
                Err(native_err) => {
                    tracing::warn!(
                        interface,
                        error = %native_err,
                        "native XDP attach refused; falling back to generic (SKB) mode"
                    );
                    (program.attach(interface, XdpMode::Skb).map_err(attach_err)?, AttachedMode::Generic)
                }
            },
        };
        tracing::info!(interface, mode = ?attached, "XDP steering attached");
        self.link = Some((id, interface.to_string(), attached));
        Ok(attached)
    }

    /// Where and how the program is attached, if it is.
    pub fn attached(&self) -> Option<(&str, AttachedMode)> {
        self.link.as_ref().map(|(_, i, m)| (i.as_str(), *m))
    }

    /// Detaches from the interface (also done on drop). A no-op when not attached.
    pub fn detach(&mut self) -> Result<(), XdpError> {
        if let Some((id, interface, _)) = self.link.take() {
            let program = program_mut(&mut self.ebpf)?;
            program.detach(id).map_err(|error| XdpError::Attach { interface: interface.clone(), error })?;
            tracing::info!(interface, "XDP steering detached");
        }
        Ok(())
    }

    /// Rewrites the role and flags.
    pub fn set_config(&mut self, role: Role, flags: u32) -> Result<(), XdpError> {
        let mut map: Array<&mut MapData, Config> = self.map_mut(CONFIG_MAP)?;
        map.set(0, Config { role: role.code(), flags }, 0).map_err(map_err(CONFIG_MAP))
    }

    /// Adds a local gateway address (outside role).
    pub fn add_local_addr(&mut self, addr: IpAddr) -> Result<(), XdpError> {
        match addr {
            IpAddr::V4(a) => {
                let mut map: HashMap<&mut MapData, AddrV4, LocalAddr> = self.map_mut(LOCAL_ADDRS_V4_MAP)?;
                map.insert(AddrV4 { octets: a.octets() }, LocalAddr::default(), 0).map_err(map_err(LOCAL_ADDRS_V4_MAP))
            }
            IpAddr::V6(a) => {
                let mut map: HashMap<&mut MapData, AddrV6, LocalAddr> = self.map_mut(LOCAL_ADDRS_V6_MAP)?;
                map.insert(AddrV6 { octets: a.octets() }, LocalAddr::default(), 0).map_err(map_err(LOCAL_ADDRS_V6_MAP))
            }
        }
    }

    /// Removes a local gateway address.
    pub fn remove_local_addr(&mut self, addr: IpAddr) -> Result<(), XdpError> {
        match addr {
            IpAddr::V4(a) => {
                let mut map: HashMap<&mut MapData, AddrV4, LocalAddr> = self.map_mut(LOCAL_ADDRS_V4_MAP)?;
                map.remove(&AddrV4 { octets: a.octets() }).map_err(map_err(LOCAL_ADDRS_V4_MAP))
            }
            IpAddr::V6(a) => {
                let mut map: HashMap<&mut MapData, AddrV6, LocalAddr> = self.map_mut(LOCAL_ADDRS_V6_MAP)?;
                map.remove(&AddrV6 { octets: a.octets() }).map_err(map_err(LOCAL_ADDRS_V6_MAP))
            }
        }
    }

    /// Adds a protected remote subnet (inside role) with an opaque policy tag.
    pub fn add_protected(&mut self, prefix: Prefix, policy: u32) -> Result<(), XdpError> {
        let value = Protected { policy };
        match prefix.addr {
            IpAddr::V4(a) if prefix.len <= 32 => {
                let mut map: LpmTrie<&mut MapData, AddrV4, Protected> = self.map_mut(PROTECTED_V4_MAP)?;
                let key = Key::new(u32::from(prefix.len), AddrV4 { octets: a.octets() });
                map.insert(&key, value, 0).map_err(map_err(PROTECTED_V4_MAP))
            }
            IpAddr::V6(a) if prefix.len <= 128 => {
                let mut map: LpmTrie<&mut MapData, AddrV6, Protected> = self.map_mut(PROTECTED_V6_MAP)?;
                let key = Key::new(u32::from(prefix.len), AddrV6 { octets: a.octets() });
                map.insert(&key, value, 0).map_err(map_err(PROTECTED_V6_MAP))
            }
            _ => Err(XdpError::BadPrefix(prefix)),
        }
    }

    /// Removes a protected remote subnet (inside role); removing an absent prefix is an error from
    /// the kernel (`ENOENT`), which callers that keep their own reference counts may ignore.
    pub fn remove_protected(&mut self, prefix: Prefix) -> Result<(), XdpError> {
        match prefix.addr {
            IpAddr::V4(a) if prefix.len <= 32 => {
                let mut map: LpmTrie<&mut MapData, AddrV4, Protected> = self.map_mut(PROTECTED_V4_MAP)?;
                let key = Key::new(u32::from(prefix.len), AddrV4 { octets: a.octets() });
                map.remove(&key).map_err(map_err(PROTECTED_V4_MAP))
            }
            IpAddr::V6(a) if prefix.len <= 128 => {
                let mut map: LpmTrie<&mut MapData, AddrV6, Protected> = self.map_mut(PROTECTED_V6_MAP)?;
                let key = Key::new(u32::from(prefix.len), AddrV6 { octets: a.octets() });
                map.remove(&key).map_err(map_err(PROTECTED_V6_MAP))
            }
            _ => Err(XdpError::BadPrefix(prefix)),
        }
    }

    /// Puts the AF_XDP socket `fd` at `queue` (the rx queue it is bound to).
    pub fn insert_xsk(&mut self, queue: u32, fd: impl AsRawFd) -> Result<(), XdpError> {
        let mut map: XskMap<&mut MapData> = self.map_mut(XSKS_MAP)?;
        map.set(queue, fd, 0).map_err(map_err(XSKS_MAP))
    }

    /// Removes the socket at `queue`: its packets fall back to the kernel.
    pub fn remove_xsk(&mut self, queue: u32) -> Result<(), XdpError> {
        let mut map: XskMap<&mut MapData> = self.map_mut(XSKS_MAP)?;
        map.unset(queue).map_err(map_err(XSKS_MAP))
    }

    /// Per-verdict counts summed over CPUs.
    pub fn counters(&self) -> Result<Counters, XdpError> {
        let map = self.ebpf.map(COUNTERS_MAP).ok_or(XdpError::State("no COUNTERS map"))?;
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(map_err(COUNTERS_MAP))?;
        let mut out = Counters::default();
        for verdict in Verdict::ALL {
            let per_cpu = map.get(&verdict.index(), 0).map_err(map_err(COUNTERS_MAP))?;
            out.values[verdict.index() as usize] = per_cpu.iter().copied().fold(0u64, u64::wrapping_add);
        }
        Ok(out)
    }

    fn map_mut<'a, M>(&'a mut self, name: &'static str) -> Result<M, XdpError>
    where
        M: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf.map_mut(name).ok_or(XdpError::State("map missing from the loaded object"))?;
        M::try_from(map).map_err(map_err(name))
    }
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    let program = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or_else(|| XdpError::Object(format!("no program {PROGRAM_NAME} in the loaded object")))?;
    program.try_into().map_err(|e| XdpError::Object(format!("{PROGRAM_NAME}: {e}")))
}

impl Drop for XdpSteering {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            tracing::warn!(error = %e, "detaching XDP steering on drop");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_object_matches_common_types() {
        verify_object().unwrap();
    }

    #[test]
    fn counters_display_and_since() {
        let mut a = Counters::default();
        a.values[Verdict::Esp.index() as usize] = 5;
        let mut b = a;
        b.values[Verdict::Esp.index() as usize] = 7;
        b.values[Verdict::PassNoXsk.index() as usize] = 2;
        let d = b.since(&a);
        assert_eq!(d.nonzero(), vec![(Verdict::Esp, 2), (Verdict::PassNoXsk, 2)]);
        assert!(d.to_string().starts_with("esp=2 esp_udp=0"));
    }
}
