//! The HTTP front: hyper (HTTP/1.1) on tokio, RPC style like the seed.
//!
//! - `GET|POST /?Action=<Action>&<Param>=<value>…` (query string and/or an
//!   `application/x-www-form-urlencoded` body; a body value overrides a query value), and the same
//!   at `/<Action>` (the form the OpenAPI document describes, one path per action).
//! - `GET /openapi.json`: the OpenAPI 3 document ([`crate::openapi::document`]).
//! - Every request needs `Authorization: Bearer <token>`, compared in constant time; otherwise 401
//!   `Unauthorized`. A second, read-only token may be configured: it answers `Forbidden` (403) to
//!   actions that modify state.
//! - Answers are JSON: the action's fields plus `RequestId` (a UUID), or
//!   `{RequestId, Code, Message, HostId}` with the error's HTTP status.

use std::convert::Infallible;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::api::{Role, Service};
use crate::error::ApiError;
use crate::model::new_uuid;
use crate::validate::Params;

/// Largest accepted request body.
pub const MAX_BODY: usize = 64 * 1024;

/// The bearer tokens the server accepts.
#[derive(Clone)]
pub struct Auth {
    pub admin: String,
    pub read_only: Option<String>,
}

impl Auth {
    /// The role of a request's `Authorization` header value, if it carries a known token.
    pub fn role(&self, header: Option<&HeaderValue>) -> Option<Role> {
        let presented = header?.as_bytes().strip_prefix(b"Bearer ")?;
        let eq = |t: &str| bool::from(presented.ct_eq(t.as_bytes()));
        if eq(&self.admin) {
            Some(Role::Admin)
        } else if self.read_only.as_deref().is_some_and(eq) {
            Some(Role::ReadOnly)
        } else {
            None
        }
    }
}

/// Reads the token at `path`, or creates it (64 hex characters from the OS CSPRNG) with mode 0600.
/// An existing file readable by group or others is refused.
pub fn load_or_create_token(path: &Path) -> std::io::Result<String> {
    match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(mut f) => {
            let mut b = [0u8; 32];
            getrandom::fill(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
            let token: String = b.iter().map(|x| format!("{x:02x}")).collect();
            f.write_all(format!("{token}\n").as_bytes())?;
            f.sync_all()?;
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_token(path),
        Err(e) => Err(e),
    }
}

/// Reads a token file (first line, trimmed); refuses files readable by group or others.
pub fn read_token(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mode = f.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(std::io::Error::other(format!(
            "{}: mode {:o} lets others read the token; chmod 600 it",
            path.display(),
            mode & 0o777
        )));
    }
    let mut s = String::new();
    f.read_to_string(&mut s)?;
    let token = s.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(std::io::Error::other(format!("{}: empty token file", path.display())));
    }
    Ok(token)
}

/// Decodes `application/x-www-form-urlencoded` (also query strings): `+` is a space, `%XX` a byte;
/// a malformed escape is kept literally; invalid UTF-8 becomes U+FFFD.
pub fn parse_form(s: &[u8], into: &mut Params) {
    for pair in s.split(|&b| b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        into.0.insert(decode(k), decode(v));
    }
}

fn decode(s: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a form value (the client side of [`parse_form`]).
pub fn encode(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

fn json_response(status: u16, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error_response(request_id: &str, e: &ApiError) -> Response<Full<Bytes>> {
    let mut body = Map::new();
    body.insert("RequestId".into(), request_id.into());
    body.insert("Code".into(), e.code.clone().into());
    body.insert("Message".into(), e.message.clone().into());
    body.insert("HostId".into(), "ipsec-mgmtd".into());
    let mut r = json_response(e.status, &Value::Object(body));
    if e.status == 401 {
        r.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
    }
    r
}

/// Handles one request.
pub async fn handle(req: Request<Incoming>, service: Arc<Service>, auth: Arc<Auth>) -> Response<Full<Bytes>> {
    let request_id = new_uuid();
    match handle_inner(req, service, auth).await {
        Ok(Answer::Action(Value::Object(mut body))) => {
            body.insert("RequestId".into(), request_id.into());
            json_response(200, &Value::Object(body))
        }
        Ok(Answer::Action(v) | Answer::Document(v)) => json_response(200, &v),
        Err(e) => error_response(&request_id, &e),
    }
}

enum Answer {
    /// An action's fields; `RequestId` is added.
    Action(Value),
    /// Served as it is (the OpenAPI document).
    Document(Value),
}

async fn handle_inner(req: Request<Incoming>, service: Arc<Service>, auth: Arc<Auth>) -> Result<Answer, ApiError> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return Err(ApiError::new(405, "UnsupportedHTTPMethod", format!("{}: use GET or POST", req.method())));
    }
    let role = auth.role(req.headers().get(AUTHORIZATION)).ok_or_else(|| {
        ApiError::new(401, "Unauthorized", "Authorization: a valid `Bearer <token>` header is required")
    })?;
    let path = req.uri().path().to_string();
    if path == "/openapi.json" {
        return Ok(Answer::Document(crate::openapi::document()));
    }
    let path_action = match path.strip_prefix('/') {
        Some("") => None,
        Some(a) if crate::api::ACTIONS.iter().any(|(n, _)| *n == a) => Some(a.to_string()),
        _ => return Err(ApiError::new(404, "InvalidPath.NotFound", format!("{}: no such path", clip(&path)))),
    };
    let mut params = Params::new();
    if let Some(q) = req.uri().query() {
        parse_form(q.as_bytes(), &mut params);
    }
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| ApiError::new(413, "RequestTooLarge", format!("the body exceeds {MAX_BODY} bytes")))?
        .to_bytes();
    parse_form(&body, &mut params);
    let action = match (path_action, params.get("Action")) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::invalid("Action", format!("{:?} contradicts the path /{a}", clip(b))))
        }
        (Some(a), _) => a,
        (None, Some(b)) if !b.is_empty() => b.to_string(),
        (None, _) => return Err(ApiError::missing("Action")),
    };
    tokio::task::spawn_blocking(move || service.call(&action, &params, role))
        .await
        .map_err(|e| ApiError::internal(format!("handler failed: {e}")))?
        .map(Answer::Action)
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Serves until `shutdown` resolves. Connections are HTTP/1.1 with keep-alive.
pub async fn serve(
    listener: TcpListener,
    service: Arc<Service>,
    auth: Auth,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let auth = Arc::new(auth);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let (service, auth) = (service.clone(), auth.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (service, auth) = (service.clone(), auth.clone());
                async move { Ok::<_, Infallible>(handle(req, service, auth).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
        });
    }
}
