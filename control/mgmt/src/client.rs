//! A minimal blocking HTTP/1.1 client for `vpnctl` and the tests: plain `http://` only (the API
//! listens on loopback), one request per connection (`Connection: close`).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

use crate::http::encode;

/// A raw answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("answer is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// `http://host:port[/...]` → `host:port`.
fn authority(endpoint: &str) -> Result<&str, String> {
    let rest =
        endpoint.strip_prefix("http://").ok_or_else(|| format!("{endpoint}: only http:// endpoints are supported"))?;
    Ok(rest.split('/').next().unwrap_or(rest))
}

/// Sends one request. `headers` are added as given.
pub fn request(
    endpoint: &str,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, String> {
    let host = authority(endpoint)?;
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("{endpoint}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    let mut req = format!("{method} {path_and_query} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).and_then(|_| s.write_all(body)).map_err(|e| format!("{endpoint}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("{endpoint}: {e}"))?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("truncated HTTP answer")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked =
        headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(Response { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")?;
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Calls an action by POST with a form body; answers (HTTP status, JSON body).
pub fn call(endpoint: &str, token: &str, action: &str, params: &[(&str, &str)]) -> Result<(u16, Value), String> {
    let mut body = format!("Action={}", encode(action));
    for (k, v) in params {
        body.push_str(&format!("&{}={}", encode(k), encode(v)));
    }
    let auth = format!("Bearer {token}");
    let r = request(
        endpoint,
        "POST",
        "/",
        &[("Authorization", &auth), ("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    )?;
    Ok((r.status, r.json()?))
}
