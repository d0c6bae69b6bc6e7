//! `ipsec-mgmtd`: the management API daemon (until `ipsec-control` embeds [`ipsec_mgmt::daemon`]).
//!
//! ```text
//! ipsec-mgmtd [--listen 127.0.0.1:8470] [--state-dir /var/lib/ipsec-mgmt] [--quota 10]
//!             [--token-file <state-dir>/api-token] [--readonly-token-file PATH]
//! ```
//! Prints `listening on <addr>` once it accepts connections; stops on SIGINT/SIGTERM.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match ipsec_mgmt::daemon::Options::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ipsec-mgmtd: {e}\n\n{}", ipsec_mgmt::daemon::USAGE);
            std::process::exit(2);
        }
    };
    if let Err(e) = ipsec_mgmt::daemon::run(opts) {
        eprintln!("ipsec-mgmtd: {e}");
        std::process::exit(1);
    }
}
