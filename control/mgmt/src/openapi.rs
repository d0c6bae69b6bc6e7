//! The OpenAPI 3 document, generated from one table of actions and parameters. It is served at
//! `/openapi.json` and checked in as `control/mgmt/openapi.json` (a test keeps the two equal; run
//! `UPDATE_OPENAPI=1 cargo test -p ipsec-mgmt --test api openapi` to rewrite the file).
//!
//! OpenAPI paths cannot tell operations apart by a query parameter, so each action is described at
//! `/<Action>` (GET with query parameters, POST with a form body); `/?Action=<Action>` is the same.

use serde_json::{json, Map, Value};

use crate::model::{
    AuthAlg, DhGroup, EncAlg, HealthCheckPolicy, IkeMode, IkeVersion, IpsecPfs, RoutingMode, IKE_SA_STATES,
    IPSEC_SA_STATES,
};

enum Ty {
    Str,
    Int(u64, u64),
    Bool,
    Enum(&'static [&'static str]),
    /// A JSON object passed as a string; the str is its description.
    Json(&'static str),
}

struct P {
    name: &'static str,
    ty: Ty,
    required: bool,
    desc: &'static str,
}

const fn p(name: &'static str, ty: Ty, required: bool, desc: &'static str) -> P {
    P { name, ty, required, desc }
}

const IKE_CONFIG_DOC: &str = "JSON object: {Psk (1-100 chars of letters, digits, ~`!@#$%^&*()_-+={}[]\\|;:',.<>/?; random 16 chars when omitted), IkeVersion (ikev1|ikev2, default ikev1), IkeMode (main|aggressive, default main), IkeEncAlg (aes|aes192|aes256|des|3des, default aes), IkeAuthAlg (md5|sha1|sha256|sha384|sha512, default sha1), IkePfs (group1|group2|group5|group14|group24, default group2), IkeLifetime (0-86400 s, default 86400), LocalId, RemoteId (<= 100 chars, no spaces; default the gateways' addresses)}";
const IPSEC_CONFIG_DOC: &str = "JSON object: {IpsecEncAlg (aes|aes192|aes256|des|3des, default aes), IpsecAuthAlg (md5|sha1|sha256|sha384|sha512, default sha1), IpsecPfs (disabled|group1|group2|group5|group14|group24, default group2), IpsecLifetime (0-86400 s, default 86400)}";
const BGP_CONFIG_DOC: &str = "JSON object: {EnableBgp (bool, default false), TunnelCidr (a /30 inside 169.254.0.0/16, not 169.254.0.0/30 .. 169.254.5.0/30 nor 169.254.169.252/30), LocalBgpIp (inside TunnelCidr), LocalAsn (1-4294967295 or asdot x.y, default 45104)}";
const HEALTH_CHECK_DOC: &str = "JSON object: {Enable (bool, default false), Dip, Sip (IP addresses, required with Enable), Interval (1-16 s, default 3), Retry (1-16, default 3), Policy (revoke_route|reserve_route, default revoke_route)}";

const NAME: P = p(
    "Name",
    Ty::Str,
    false,
    "2-128 characters; starts with a letter or Chinese character; letters, digits, '.', '_', '-'; not http:// or https://",
);
const CLIENT_TOKEN: P = p(
    "ClientToken",
    Ty::Str,
    false,
    "1-64 printable ASCII characters; makes the call idempotent (same token and parameters: same answer)",
);
const PAGE_NUMBER: P = p("PageNumber", Ty::Int(1, u32::MAX as u64), false, "page, from 1 (default 1)");
const PAGE_SIZE: P = p("PageSize", Ty::Int(1, 50), false, "entries per page, 1-50 (default 10)");
const SHOW_PSK: P = p("ShowPsk", Ty::Bool, false, "include IkeConfig.Psk in the answer (default false)");

fn connection_params(create: bool) -> Vec<P> {
    let mut v = Vec::new();
    if create {
        v.push(p("VpnGatewayId", Ty::Str, true, "the VPN gateway (vpn-...)"));
        v.push(p("CustomerGatewayId", Ty::Str, true, "the customer gateway (cgw-...)"));
    } else {
        v.push(p("VpnConnectionId", Ty::Str, true, "the VPN connection (vco-...)"));
    }
    v.extend([
        NAME,
        p("LocalSubnet", Ty::Str, create, "comma-separated CIDR blocks on the gateway side; more than one needs ikev2"),
        p("RemoteSubnet", Ty::Str, create, "comma-separated CIDR blocks on the peer side; more than one needs ikev2"),
        p("EffectImmediately", Ty::Bool, false, "negotiate at once (true) or on traffic (false, default)"),
        p("RoutingMode", Ty::Enum(RoutingMode::ALL), false, "default dest_routing"),
        p("AutoConfigRoute", Ty::Bool, false, "default true"),
        p("IkeConfig", Ty::Json(IKE_CONFIG_DOC), false, ""),
        p("IpsecConfig", Ty::Json(IPSEC_CONFIG_DOC), false, ""),
        p("EnableDpd", Ty::Bool, false, "default true"),
        p("EnableNatTraversal", Ty::Bool, false, "default true"),
        p("BgpConfig", Ty::Json(BGP_CONFIG_DOC), false, ""),
        p("HealthCheckConfig", Ty::Json(HEALTH_CHECK_DOC), false, ""),
        CLIENT_TOKEN,
    ]);
    v
}

/// (action, summary, parameters, name of the answer schema in components).
fn actions() -> Vec<(&'static str, &'static str, Vec<P>, &'static str)> {
    vec![
        (
            "CreateVpnGateway",
            "Create a VPN gateway (the engine's outside address).",
            vec![
                NAME,
                p("PublicIp", Ty::Str, true, "the engine's outside IP address"),
                p("Description", Ty::Str, false, "1-100 characters, not http:// or https://"),
                CLIENT_TOKEN,
            ],
            "VpnGatewayAnswer",
        ),
        (
            "DescribeVpnGateways",
            "List VPN gateways.",
            vec![p("VpnGatewayId", Ty::Str, false, "only this gateway"), PAGE_NUMBER, PAGE_SIZE],
            "VpnGatewaysAnswer",
        ),
        (
            "CreateCustomerGateway",
            "Create a customer gateway (the peer).",
            vec![
                NAME,
                p("IpAddress", Ty::Str, true, "the peer's IP address"),
                p("Asn", Ty::Str, false, "1-4294967295, or asdot x.y"),
                p("Description", Ty::Str, false, "1-100 characters, not http:// or https://"),
                CLIENT_TOKEN,
            ],
            "CustomerGatewayAnswer",
        ),
        (
            "DescribeCustomerGateways",
            "List customer gateways.",
            vec![p("CustomerGatewayId", Ty::Str, false, "only this gateway"), PAGE_NUMBER, PAGE_SIZE],
            "CustomerGatewaysAnswer",
        ),
        (
            "DeleteCustomerGateway",
            "Delete a customer gateway no VPN connection uses.",
            vec![p("CustomerGatewayId", Ty::Str, true, "the customer gateway"), CLIENT_TOKEN],
            "EmptyAnswer",
        ),
        (
            "CreateVpnConnection",
            "Create a VPN connection between a VPN gateway and a customer gateway.",
            connection_params(true),
            "CreateVpnConnectionAnswer",
        ),
        (
            "DescribeVpnConnection",
            "Show one VPN connection (the PSK only with ShowPsk=true).",
            vec![p("VpnConnectionId", Ty::Str, true, "the VPN connection"), SHOW_PSK],
            "VpnConnectionAnswer",
        ),
        (
            "DescribeVpnConnections",
            "List VPN connections.",
            vec![
                p("VpnConnectionId", Ty::Str, false, "only this connection"),
                p("VpnGatewayId", Ty::Str, false, "only connections of this VPN gateway"),
                p("CustomerGatewayId", Ty::Str, false, "only connections to this customer gateway"),
                SHOW_PSK,
                PAGE_NUMBER,
                PAGE_SIZE,
            ],
            "VpnConnectionsAnswer",
        ),
        (
            "ModifyVpnConnectionAttribute",
            "Change a VPN connection; nested configs are merged key by key into the stored ones.",
            connection_params(false),
            "VpnConnectionAnswer",
        ),
        (
            "DeleteVpnConnection",
            "Delete a VPN connection (and its logs).",
            vec![p("VpnConnectionId", Ty::Str, true, "the VPN connection"), CLIENT_TOKEN],
            "EmptyAnswer",
        ),
        (
            "DownloadVpnConnectionConfig",
            "The peer's configuration: local and remote swapped; Format=swanctl adds a strongSwan swanctl.conf.",
            vec![
                p("VpnConnectionId", Ty::Str, true, "the VPN connection"),
                p("Format", Ty::Enum(&["json", "swanctl"]), false, "json (default) or swanctl"),
            ],
            "DownloadAnswer",
        ),
        (
            "DescribeVpnConnectionLogs",
            "Logs of a VPN connection in a window of at most 10 minutes (From..To, in seconds), kept 30 days.",
            vec![
                p("VpnConnectionId", Ty::Str, true, "the VPN connection"),
                p("From", Ty::Int(0, u32::MAX as u64 * 4), false, "start, seconds since the epoch (inclusive)"),
                p(
                    "To",
                    Ty::Int(0, u32::MAX as u64 * 4),
                    false,
                    "end, seconds since the epoch (inclusive); To - From <= 600",
                ),
                p(
                    "MinutePeriod",
                    Ty::Int(1, 10),
                    false,
                    "window length in minutes when From or To is absent (default 10)",
                ),
                PAGE_NUMBER,
                p("PageSize", Ty::Int(1, 50), false, "entries per page, 1-50 (default 50)"),
            ],
            "LogsAnswer",
        ),
    ]
}

fn schema(t: &Ty) -> Value {
    match t {
        Ty::Str => json!({ "type": "string" }),
        Ty::Int(min, max) => json!({ "type": "integer", "minimum": min, "maximum": max }),
        Ty::Bool => json!({ "type": "boolean" }),
        Ty::Enum(all) => json!({ "type": "string", "enum": all }),
        Ty::Json(_) => json!({ "type": "string" }),
    }
}

/// A valid example value per parameter name (used by the examples phase of API fuzzers).
fn example(name: &str) -> Option<&'static str> {
    Some(match name {
        "VpnGatewayId" => "vpn-0123456789abcdefghij",
        "CustomerGatewayId" => "cgw-0123456789abcdefghij",
        "VpnConnectionId" => "vco-0123456789abcdefghij",
        "Name" => "branch-office",
        "PublicIp" => "198.51.100.1",
        "IpAddress" => "203.0.113.1",
        "Asn" => "65001",
        "Description" => "head office",
        "LocalSubnet" => "10.0.0.0/24",
        "RemoteSubnet" => "192.168.0.0/24",
        "IkeConfig" => {
            r#"{"IkeVersion":"ikev2","IkeEncAlg":"aes256","IkeAuthAlg":"sha256","IkePfs":"group14","Psk":"Example-Psk-1"}"#
        }
        "IpsecConfig" => {
            r#"{"IpsecEncAlg":"aes256","IpsecAuthAlg":"sha256","IpsecPfs":"group14","IpsecLifetime":3600}"#
        }
        "BgpConfig" => {
            r#"{"EnableBgp":true,"TunnelCidr":"169.254.10.0/30","LocalBgpIp":"169.254.10.1","LocalAsn":"65001"}"#
        }
        "HealthCheckConfig" => r#"{"Enable":true,"Dip":"192.168.0.1","Sip":"10.0.0.1","Interval":3,"Retry":3}"#,
        "ClientToken" => "0c593ea1-3bea-11e9-b96b-88e9fe637760",
        _ => return None,
    })
}

fn describe(p: &P) -> String {
    match &p.ty {
        Ty::Json(d) => d.to_string(),
        _ => p.desc.to_string(),
    }
}

fn obj(props: Value, required: &[&str]) -> Value {
    let mut o = json!({ "type": "object", "properties": props });
    if !required.is_empty() {
        o["required"] = json!(required);
    }
    o
}

fn components() -> Value {
    let r = |n: &str| json!({ "$ref": format!("#/components/schemas/{n}") });
    let s = json!({ "type": "string" });
    let i = json!({ "type": "integer" });
    let b = json!({ "type": "boolean" });
    let e = |all: &[&str]| json!({ "type": "string", "enum": all });
    let vpn_gateway = obj(
        json!({ "VpnGatewayId": s, "Name": s, "PublicIp": s, "Status": s, "Description": s, "CreateTime": i }),
        &["VpnGatewayId", "Name", "PublicIp", "Status", "CreateTime"],
    );
    let customer_gateway = obj(
        json!({ "CustomerGatewayId": s, "Name": s, "IpAddress": s, "Asn": i, "Description": s, "CreateTime": i }),
        &["CustomerGatewayId", "Name", "IpAddress", "CreateTime"],
    );
    let ike = obj(
        json!({
            "Psk": s, "IkeVersion": e(IkeVersion::ALL), "IkeMode": e(IkeMode::ALL), "IkeEncAlg": e(EncAlg::ALL),
            "IkeAuthAlg": e(AuthAlg::ALL), "IkePfs": e(DhGroup::ALL), "IkeLifetime": i, "LocalId": s, "RemoteId": s,
        }),
        &["IkeVersion", "IkeMode", "IkeEncAlg", "IkeAuthAlg", "IkePfs", "IkeLifetime", "LocalId", "RemoteId"],
    );
    let ipsec = obj(
        json!({ "IpsecEncAlg": e(EncAlg::ALL), "IpsecAuthAlg": e(AuthAlg::ALL), "IpsecPfs": e(IpsecPfs::ALL), "IpsecLifetime": i }),
        &["IpsecEncAlg", "IpsecAuthAlg", "IpsecPfs", "IpsecLifetime"],
    );
    let bgp =
        obj(json!({ "EnableBgp": b, "TunnelCidr": s, "LocalBgpIp": s, "LocalAsn": i }), &["EnableBgp", "LocalAsn"]);
    let hc = obj(
        json!({ "Enable": b, "Dip": s, "Sip": s, "Interval": i, "Retry": i, "Policy": e(HealthCheckPolicy::ALL) }),
        &["Enable", "Interval", "Retry", "Policy"],
    );
    let conn = obj(
        json!({
            "VpnConnectionId": s, "Name": s, "VpnGatewayId": s, "CustomerGatewayId": s, "LocalSubnet": s,
            "RemoteSubnet": s, "EffectImmediately": b, "RoutingMode": e(RoutingMode::ALL), "AutoConfigRoute": b,
            "IkeConfig": r("IkeConfig"), "IpsecConfig": r("IpsecConfig"), "EnableDpd": b, "EnableNatTraversal": b,
            "BgpConfig": r("BgpConfig"), "HealthCheckConfig": r("HealthCheckConfig"), "CreateTime": i,
            "Status": e(&["ike_sa_not_established", "ike_sa_established", "ipsec_sa_not_established", "ipsec_sa_established"]),
            "IkeSaState": e(IKE_SA_STATES), "IpsecSaState": e(IPSEC_SA_STATES),
            "IkeSaEstablishedTime": i, "IpsecSaEstablishedTime": i,
            "BytesIn": i, "BytesOut": i, "PacketsIn": i, "PacketsOut": i,
        }),
        &[
            "VpnConnectionId",
            "Name",
            "VpnGatewayId",
            "CustomerGatewayId",
            "LocalSubnet",
            "RemoteSubnet",
            "IkeConfig",
            "IpsecConfig",
            "CreateTime",
            "Status",
            "IkeSaState",
            "IpsecSaState",
            "IkeSaEstablishedTime",
            "IpsecSaEstablishedTime",
        ],
    );
    let with_rid = |mut schema: Value| {
        schema["properties"]["RequestId"] = s.clone();
        match schema["required"].as_array_mut() {
            Some(req) => req.push("RequestId".into()),
            None => schema["required"] = json!(["RequestId"]),
        }
        schema
    };
    let listing = |outer: &str, inner: &str, item: &str| {
        with_rid(obj(
            json!({
                "TotalCount": i, "PageNumber": i, "PageSize": i,
                outer: obj(json!({ inner: { "type": "array", "items": r(item) } }), &[inner]),
            }),
            &["TotalCount", "PageNumber", "PageSize", outer],
        ))
    };
    let peer = obj(
        json!({
            "LocalSubnet": s, "RemoteSubnet": s, "RemoteIp": s, "LocalIp": s,
            "IkeConfig": r("IkeConfig"), "IpsecConfig": r("IpsecConfig"),
        }),
        &["LocalSubnet", "RemoteSubnet", "RemoteIp", "IkeConfig", "IpsecConfig"],
    );
    json!({
        "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
        "schemas": {
            "Error": obj(json!({ "RequestId": s, "Code": s, "Message": s, "HostId": s }), &["RequestId", "Code", "Message"]),
            "VpnGateway": vpn_gateway,
            "CustomerGateway": customer_gateway,
            "IkeConfig": ike,
            "IpsecConfig": ipsec,
            "BgpConfig": bgp,
            "HealthCheckConfig": hc,
            "VpnConnection": conn,
            "EmptyAnswer": with_rid(obj(json!({}), &[])),
            "VpnGatewayAnswer": { "allOf": [r("VpnGateway"), with_rid(obj(json!({}), &[]))] },
            "CustomerGatewayAnswer": { "allOf": [r("CustomerGateway"), with_rid(obj(json!({}), &[]))] },
            "VpnConnectionAnswer": { "allOf": [r("VpnConnection"), with_rid(obj(json!({}), &[]))] },
            "CreateVpnConnectionAnswer": with_rid(obj(json!({ "VpnConnectionId": s, "Name": s, "CreateTime": i }), &["VpnConnectionId", "Name", "CreateTime"])),
            "VpnGatewaysAnswer": listing("VpnGateways", "VpnGateway", "VpnGateway"),
            "CustomerGatewaysAnswer": listing("CustomerGateways", "CustomerGateway", "CustomerGateway"),
            "VpnConnectionsAnswer": listing("VpnConnections", "VpnConnection", "VpnConnection"),
            "DownloadAnswer": with_rid(obj(json!({ "VpnConnectionConfig": peer, "SwanctlConf": s }), &["VpnConnectionConfig"])),
            "LogsAnswer": with_rid(obj(
                json!({
                    "Count": i, "IsCompleted": b, "PageNumber": i, "PageSize": i,
                    "Data": obj(json!({ "Logs": { "type": "array", "items": s } }), &["Logs"]),
                }),
                &["Count", "IsCompleted", "PageNumber", "PageSize", "Data"],
            )),
        },
    })
}

/// The OpenAPI 3.0 document of every action.
pub fn document() -> Value {
    let error = json!({
        "description": "error (Code and Message; see the code list in info.description)",
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
    });
    let mut paths = Map::new();
    for (action, summary, params, answer) in actions() {
        let mutating = crate::api::ACTIONS.iter().any(|(a, m)| *a == action && *m);
        let mut responses = Map::new();
        responses.insert(
            "200".into(),
            json!({
                "description": "success",
                "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{answer}") } } },
            }),
        );
        for code in ["400", "401", "403", "404", "405", "413", "500"] {
            responses.insert(code.into(), error.clone());
        }
        let with_example = |p: &P| {
            let mut sch = schema(&p.ty);
            if let Some(e) = example(p.name) {
                sch["example"] = e.into();
            }
            sch
        };
        let query: Vec<Value> = params
            .iter()
            .map(|p| json!({ "name": p.name, "in": "query", "required": p.required, "description": describe(p), "schema": with_example(p) }))
            .collect();
        let mut props = Map::new();
        for p in &params {
            let mut sch = with_example(p);
            sch["description"] = describe(p).into();
            props.insert(p.name.into(), sch);
        }
        let required: Vec<&str> = params.iter().filter(|p| p.required).map(|p| p.name).collect();
        let tag = if mutating { "write" } else { "read" };
        paths.insert(
            format!("/{action}"),
            json!({
                "get": {
                    "operationId": format!("{action}Get"), "summary": summary, "tags": [tag],
                    "parameters": query, "responses": responses,
                },
                "post": {
                    "operationId": action, "summary": summary, "tags": [tag],
                    "requestBody": {
                        "required": !required.is_empty(),
                        "content": { "application/x-www-form-urlencoded": {
                            "schema": obj(Value::Object(props), &required),
                        } },
                    },
                    "responses": responses,
                },
            }),
        );
    }
    let codes: Vec<String> = crate::error::CODES.iter().map(|(c, s, m)| format!("- `{c}` ({s}): {m}")).collect();
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "ipsec-mgmt VPN gateway API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "RPC-style API after the Alibaba Cloud VPN Gateway API. Each action is served at /<Action> and at /?Action=<Action>, by GET (query string) or POST (form body). Nested configs are JSON strings. Every call needs `Authorization: Bearer <token>`.\n\nError codes:\n{}",
                codes.join("\n")
            ),
        },
        "servers": [{ "url": "http://127.0.0.1:8470" }],
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": components(),
    })
}
