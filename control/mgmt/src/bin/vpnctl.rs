//! `vpnctl`: the management API from the command line, the way the aliyun CLI mirrors its APIs.
//!
//! ```text
//! vpnctl [--endpoint http://127.0.0.1:8470] [--token-file /var/lib/ipsec-mgmt/api-token]
//!        [--output json|table] <Action> [--<Param> <value> | --<Param>=<value>]...
//! vpnctl CreateVpnConnection --VpnGatewayId vpn-… --CustomerGatewayId cgw-… \
//!        --LocalSubnet 10.0.0.0/24 --RemoteSubnet 10.9.0.0/24 --IkeConfig '{"IkeVersion":"ikev2"}'
//! ```
//! Defaults also come from `VPNCTL_ENDPOINT` and `VPNCTL_TOKEN_FILE`. Exit codes: 0 success, 1 the
//! API answered an error (its Code and Message are printed on stderr), 2 usage, 3 transport or
//! token file trouble.

use std::process::ExitCode;

use ipsec_mgmt::api::ACTIONS;
use ipsec_mgmt::client;
use serde_json::Value;

fn usage() -> String {
    let actions: Vec<&str> = ACTIONS.iter().map(|(a, _)| *a).collect();
    format!(
        "usage: vpnctl [--endpoint URL] [--token-file PATH] [--output json|table] <Action> [--Param value]...\n\
         \n  --endpoint    default $VPNCTL_ENDPOINT or http://127.0.0.1:8470\
         \n  --token-file  default $VPNCTL_TOKEN_FILE or /var/lib/ipsec-mgmt/api-token\
         \n  --output      json (default) or table\
         \n\nactions:\n  {}\n\nexit codes: 0 ok, 1 API error (Code/Message on stderr), 2 usage, 3 transport/token",
        actions.join("\n  ")
    )
}

struct Cli {
    endpoint: String,
    token_file: String,
    table: bool,
    action: String,
    params: Vec<(String, String)>,
}

fn parse(args: &[String]) -> Result<Cli, String> {
    let mut cli = Cli {
        endpoint: std::env::var("VPNCTL_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:8470".into()),
        token_file: std::env::var("VPNCTL_TOKEN_FILE").unwrap_or_else(|_| "/var/lib/ipsec-mgmt/api-token".into()),
        table: false,
        action: String::new(),
        params: Vec::new(),
    };
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        let Some(flag) = a.strip_prefix("--") else {
            if !cli.action.is_empty() {
                return Err(format!("unexpected argument {a:?} (parameters are --Name value)"));
            }
            cli.action = a.clone();
            continue;
        };
        if flag == "help" {
            return Err(String::new());
        }
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.to_string(), None),
        };
        if name.is_empty() {
            return Err(format!("bad argument {a:?}"));
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().cloned().ok_or_else(|| format!("--{name} needs a value"))?,
        };
        match name.as_str() {
            "endpoint" => cli.endpoint = value,
            "token-file" => cli.token_file = value,
            "output" => {
                cli.table = match value.as_str() {
                    "json" => false,
                    "table" => true,
                    _ => return Err(format!("--output {value:?}: json or table")),
                }
            }
            _ if name.starts_with(|c: char| c.is_ascii_uppercase()) => cli.params.push((name, value)),
            _ => return Err(format!("unknown option --{name} (API parameters start with a capital letter)")),
        }
    }
    if cli.action.is_empty() {
        return Err("no action given".into());
    }
    Ok(cli)
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Dotted key/value rows of the scalars of `v`.
fn flatten(prefix: &str, v: &Value, rows: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, x, rows);
            }
        }
        Value::Array(a) if a.iter().all(|x| !x.is_object()) => {
            for (i, x) in a.iter().enumerate() {
                rows.push((format!("{prefix}[{i}]"), scalar(x)));
            }
        }
        Value::Array(_) => {}
        _ => rows.push((prefix.to_string(), scalar(v))),
    }
}

fn render_table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let line: Vec<String> =
            r.iter().enumerate().map(|(c, s)| format!("{s}{}", " ".repeat(widths[c] - s.chars().count()))).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if i == 0 && rows.len() > 1 && cols > 2 {
            out.push_str(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
            out.push('\n');
        }
    }
    out
}

/// Lists (arrays of objects) as tables with one row per item, everything else as key/value rows.
fn table(v: &Value) -> String {
    let mut out = String::new();
    let mut kv = Vec::new();
    flatten("", v, &mut kv);
    let mut swanctl = None;
    kv.retain(|(k, val)| {
        if k == "SwanctlConf" {
            swanctl = Some(val.clone());
            false
        } else {
            true
        }
    });
    out.push_str(&render_table(&kv.into_iter().map(|(k, v)| vec![k, v]).collect::<Vec<_>>()));
    let mut lists = Vec::new();
    find_lists("", v, &mut lists);
    for (name, items) in lists {
        let mut rows_kv: Vec<Vec<(String, String)>> = Vec::new();
        for item in items {
            let mut r = Vec::new();
            flatten("", item, &mut r);
            rows_kv.push(r);
        }
        let mut header: Vec<String> = Vec::new();
        for r in &rows_kv {
            for (k, _) in r {
                if !header.contains(k) {
                    header.push(k.clone());
                }
            }
        }
        // Keep the table readable: ids, names, addresses, subnets, status first; nested configs out.
        header.retain(|k| !k.contains('.'));
        header.sort_by_key(|k| (!k.ends_with("Id"), k != "Name"));
        let mut rows = vec![header.clone()];
        for r in &rows_kv {
            rows.push(
                header
                    .iter()
                    .map(|h| r.iter().find(|(k, _)| k == h).map(|(_, v)| v.clone()).unwrap_or_default())
                    .collect(),
            );
        }
        out.push_str(&format!("\n{name}:\n"));
        out.push_str(&render_table(&rows));
    }
    if let Some(conf) = swanctl {
        out.push_str("\nSwanctlConf:\n");
        out.push_str(&conf);
    }
    out
}

fn find_lists<'a>(prefix: &str, v: &'a Value, out: &mut Vec<(String, &'a Vec<Value>)>) {
    if let Value::Object(m) = v {
        for (k, x) in m {
            let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            match x {
                Value::Array(a) if a.iter().any(Value::is_object) => out.push((key, a)),
                Value::Object(_) => find_lists(&key, x, out),
                _ => {}
            }
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cli = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("vpnctl: {e}\n");
            }
            eprintln!("{}", usage());
            return ExitCode::from(2);
        }
    };
    let token = match ipsec_mgmt::http::read_token(std::path::Path::new(&cli.token_file)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("vpnctl: token file {}: {e}", cli.token_file);
            return ExitCode::from(3);
        }
    };
    let params: Vec<(&str, &str)> = cli.params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (status, answer) = match client::call(&cli.endpoint, &token, &cli.action, &params) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("vpnctl: {e}");
            return ExitCode::from(3);
        }
    };
    if status != 200 {
        eprintln!(
            "ERROR: {} (HTTP {status})\nCode: {}\nMessage: {}\nRequestId: {}",
            cli.action,
            scalar(&answer["Code"]),
            scalar(&answer["Message"]),
            scalar(&answer["RequestId"])
        );
        return ExitCode::from(1);
    }
    if cli.table {
        print!("{}", table(&answer));
    } else {
        println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
    }
    ExitCode::SUCCESS
}
