//! API errors: a seed-style `Code`, a human message naming the offending field, and an HTTP status.
//!
//! The full list of codes is [`CODES`]; the OpenAPI document and the crate docs are built from it.

use std::fmt;

/// One API error. Nothing is stored when an action answers with one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status of the answer.
    pub status: u16,
    /// Seed-style error code, e.g. `InvalidName.Malformed`.
    pub code: String,
    /// Human-readable explanation; names the field at fault. Never contains a PSK.
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError { status, code: code.into(), message: message.into() }
    }

    /// 400 `InvalidParameter.<field>`: a value outside its range or set, or a cross-field rule.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(400, format!("InvalidParameter.{field}"), format!("{field}: {}", message.into()))
    }

    /// 400 `Invalid<Field>.Malformed` (Name, Description, Psk: the seed's spelling for format errors).
    pub fn malformed(field: &str, message: impl Into<String>) -> Self {
        let short = field.rsplit('.').next().unwrap_or(field);
        Self::new(400, format!("Invalid{short}.Malformed"), format!("{field}: {}", message.into()))
    }

    /// 400 `MissingParameter.<field>`.
    pub fn missing(field: &str) -> Self {
        Self::new(400, format!("MissingParameter.{field}"), format!("{field}: the parameter is required"))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

/// Every error code the API answers with: (code or code pattern, HTTP status, meaning).
pub const CODES: &[(&str, u16, &str)] = &[
    ("MissingParameter.<Field>", 400, "a required parameter (or nested config key) is absent"),
    ("InvalidParameter.<Field>", 400, "a value outside its documented range or set, an unknown key in a nested config, malformed JSON, a bad CIDR/IP/ASN, or a cross-field rule (the message names the field)"),
    ("InvalidName.Malformed", 400, "Name: 2-128 characters, first a letter or Chinese character, then letters, digits, '.', '_', '-'; not starting with http:// or https://"),
    ("InvalidDescription.Malformed", 400, "Description: 1-100 characters, not starting with http:// or https://"),
    ("InvalidPsk.Malformed", 400, "IkeConfig.Psk: 1-100 characters from letters, digits and ~`!@#$%^&*()_-+={}[]\\|;:',.<>/?"),
    ("InvalidLocalId.Malformed", 400, "IkeConfig.LocalId: at most 100 characters, no spaces"),
    ("InvalidRemoteId.Malformed", 400, "IkeConfig.RemoteId: at most 100 characters, no spaces"),
    ("InvalidAction.NotFound", 400, "the Action is not one of the documented actions"),
    ("InvalidVpnGatewayInstanceId.NotFound", 404, "no VPN gateway has this id"),
    ("InvalidCustomerGatewayInstanceId.NotFound", 404, "no customer gateway has this id"),
    ("InvalidVpnConnectionInstanceId.NotFound", 404, "no VPN connection has this id"),
    ("InvalidVpnConnection.AlreadyExists", 400, "a VPN connection between this VPN gateway and this customer gateway already exists"),
    ("VpnGateway.Configuring", 400, "the VPN gateway is not active (being configured); retry later"),
    ("Resource.QuotaFull", 400, "the VPN gateway already has its quota of VPN connections (daemon flag --quota)"),
    ("DependencyViolation.VpnConnection", 400, "the customer gateway is still used by a VPN connection"),
    ("IdempotentParameterMismatch", 400, "the ClientToken was already used for this action with other parameters"),
    ("Unauthorized", 401, "no or a wrong `Authorization: Bearer <token>` header"),
    ("Forbidden", 403, "the token is read-only and the action modifies state"),
    ("InvalidPath.NotFound", 404, "no such HTTP path"),
    ("UnsupportedHTTPMethod", 405, "only GET and POST are served"),
    ("RequestTooLarge", 413, "the request body exceeds 64 KiB"),
    ("InternalError", 500, "an unexpected failure (storage); the action was not acknowledged"),
];
