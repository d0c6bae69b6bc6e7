//! The actions, transport-independent: [`Service::call`] takes an action name and its parameters and
//! answers the seed's response fields (without `RequestId`, which the HTTP layer adds) or an
//! [`ApiError`]. Writes are serialized by one mutex around the store; each acknowledged write is one
//! committed transaction, and its [`ConnectionChange`] is handed to [`Effects`] after the commit.
//!
//! Idempotency: a Create* call with `ClientToken` records (action, token) → (its parameters, its
//! answer) in the same transaction as the resource. The same token with the same parameters answers
//! the recorded answer again (same resource id, nothing new created); with other parameters it
//! answers `IdempotentParameterMismatch`. Parameters are compared exactly, as sent (all of them but
//! `ClientToken` and `Action`).

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::effects::{ConnectionChange, Effects};
use crate::error::ApiError;
use crate::model::{ConnectionStatus, LiveStatus, VpnConnection};
use crate::render;
use crate::store::{Db, Page, Store};
use crate::validate::{self, Params};

/// Milliseconds since the Unix epoch; injectable for tests.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0))
}

/// Who is calling (which token was presented).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// May call every action.
    Admin,
    /// May call Describe* and Download* only; other actions answer `Forbidden` (403).
    ReadOnly,
}

/// Every action and whether it modifies state.
pub const ACTIONS: &[(&str, bool)] = &[
    ("CreateVpnGateway", true),
    ("DescribeVpnGateways", false),
    ("CreateCustomerGateway", true),
    ("DescribeCustomerGateways", false),
    ("DeleteCustomerGateway", true),
    ("CreateVpnConnection", true),
    ("DescribeVpnConnection", false),
    ("DescribeVpnConnections", false),
    ("ModifyVpnConnectionAttribute", true),
    ("DeleteVpnConnection", true),
    ("DownloadVpnConnectionConfig", false),
    ("DescribeVpnConnectionLogs", false),
];

/// Logs are kept this long (30 days).
pub const LOG_RETENTION_MS: u64 = 30 * 24 * 3600 * 1000;
/// Widest From..To window of one DescribeVpnConnectionLogs query (10 minutes).
pub const LOG_WINDOW_SECS: u64 = 600;

/// The API core.
pub struct Service {
    store: Mutex<Store>,
    effects: Arc<dyn Effects>,
    /// Maximum VPN connections per VPN gateway.
    quota: u64,
    clock: Clock,
}

fn page(p: &Params, default_size: u64, max_size: u64) -> Result<Page, ApiError> {
    Ok(Page {
        number: p.int_or("PageNumber", 1, 1, u32::MAX as u64)?,
        size: p.int_or("PageSize", default_size, 1, max_size)?,
    })
}

fn client_token(p: &Params) -> Result<Option<&str>, ApiError> {
    match p.get("ClientToken") {
        None => Ok(None),
        Some(t) if !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(t)),
        Some(_) => Err(ApiError::invalid("ClientToken", "must be 1 to 64 printable ASCII characters")),
    }
}

fn gateway_not_found(id: &str) -> ApiError {
    ApiError::new(404, "InvalidVpnGatewayInstanceId.NotFound", format!("VpnGatewayId: {id:?} does not exist"))
}

fn customer_gateway_not_found(id: &str) -> ApiError {
    ApiError::new(404, "InvalidCustomerGatewayInstanceId.NotFound", format!("CustomerGatewayId: {id:?} does not exist"))
}

fn connection_not_found(id: &str) -> ApiError {
    ApiError::new(404, "InvalidVpnConnectionInstanceId.NotFound", format!("VpnConnectionId: {id:?} does not exist"))
}

/// Removes every occurrence of `secret` from `text`.
pub fn scrub(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, "******")
    }
}

/// "YYYY-MM-DD HH:MM:SS" (UTC) for milliseconds since the epoch.
pub fn format_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Civil-from-days (H. Hinnant).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

impl Service {
    pub fn new(store: Store, effects: Arc<dyn Effects>, quota: u64) -> Self {
        Self::with_clock(store, effects, quota, system_clock())
    }

    pub fn with_clock(store: Store, effects: Arc<dyn Effects>, quota: u64, clock: Clock) -> Self {
        Service { store: Mutex::new(store), effects, quota, clock }
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one action. `Ok` answers are the seed's response fields without `RequestId`.
    pub fn call(&self, action: &str, p: &Params, role: Role) -> Result<Value, ApiError> {
        let Some(&(_, mutating)) = ACTIONS.iter().find(|(a, _)| *a == action) else {
            return Err(ApiError::new(
                400,
                "InvalidAction.NotFound",
                format!("Action: {:?} is not a supported action", action.chars().take(64).collect::<String>()),
            ));
        };
        if mutating && role == Role::ReadOnly {
            return Err(ApiError::new(403, "Forbidden", format!("{action}: the token is read-only")));
        }
        match action {
            "CreateVpnGateway" => self.create_vpn_gateway(p),
            "DescribeVpnGateways" => self.describe_vpn_gateways(p),
            "CreateCustomerGateway" => self.create_customer_gateway(p),
            "DescribeCustomerGateways" => self.describe_customer_gateways(p),
            "DeleteCustomerGateway" => self.delete_customer_gateway(p),
            "CreateVpnConnection" => self.create_vpn_connection(p),
            "DescribeVpnConnection" => self.describe_vpn_connection(p),
            "DescribeVpnConnections" => self.describe_vpn_connections(p),
            "ModifyVpnConnectionAttribute" => self.modify_vpn_connection(p),
            "DeleteVpnConnection" => self.delete_vpn_connection(p),
            "DownloadVpnConnectionConfig" => self.download_config(p),
            "DescribeVpnConnectionLogs" => self.describe_logs(p),
            _ => Err(ApiError::internal(format!("{action} is listed but not dispatched"))),
        }
    }

    /// A Create*: `f` validates and writes inside the transaction and returns the answer and the
    /// change to apply after the commit. ClientToken handling as in the module doc.
    fn create(
        &self,
        action: &str,
        p: &Params,
        f: impl FnOnce(&Db<'_>, u64) -> Result<(Value, Option<ConnectionChange>), ApiError>,
    ) -> Result<Value, ApiError> {
        let token = client_token(p)?;
        let mut request = p.0.clone();
        request.remove("ClientToken");
        request.remove("Action");
        let request = serde_json::to_string(&request).map_err(|e| ApiError::internal(e.to_string()))?;
        let now = self.now();
        let mut store = self.store();
        if let Some(token) = token {
            if let Some((old_request, old_answer)) = store.read().client_token(action, token)? {
                if old_request == request {
                    return serde_json::from_str(&old_answer).map_err(|e| ApiError::internal(e.to_string()));
                }
                return Err(ApiError::new(
                    400,
                    "IdempotentParameterMismatch",
                    format!("ClientToken: already used for {action} with other parameters"),
                ));
            }
        }
        let (answer, change) = store.write(|tx| {
            let (answer, change) = f(tx, now)?;
            if let Some(token) = token {
                tx.put_client_token(action, token, &request, &answer.to_string(), now)?;
            }
            Ok((answer, change))
        })?;
        drop(store);
        if let Some(change) = change {
            self.effects.apply(change);
        }
        Ok(answer)
    }

    fn create_vpn_gateway(&self, p: &Params) -> Result<Value, ApiError> {
        self.create("CreateVpnGateway", p, |tx, now| {
            let g = validate::new_vpn_gateway(p, now)?;
            tx.put_vpn_gateway(&g)?;
            Ok((to_value(&g), None))
        })
    }

    fn create_customer_gateway(&self, p: &Params) -> Result<Value, ApiError> {
        self.create("CreateCustomerGateway", p, |tx, now| {
            let g = validate::new_customer_gateway(p, now)?;
            tx.put_customer_gateway(&g)?;
            Ok((to_value(&g), None))
        })
    }

    fn create_vpn_connection(&self, p: &Params) -> Result<Value, ApiError> {
        self.create("CreateVpnConnection", p, |tx, now| {
            let mut c = validate::new_connection(p, now)?;
            let gw = tx.vpn_gateway(&c.vpn_gateway_id)?.ok_or_else(|| gateway_not_found(&c.vpn_gateway_id))?;
            let cgw = tx
                .customer_gateway(&c.customer_gateway_id)?
                .ok_or_else(|| customer_gateway_not_found(&c.customer_gateway_id))?;
            check_active(&gw)?;
            if let Some(other) = tx.connection_between(&gw.vpn_gateway_id, &cgw.customer_gateway_id)? {
                return Err(ApiError::new(
                    400,
                    "InvalidVpnConnection.AlreadyExists",
                    format!(
                        "CustomerGatewayId: VPN connection {other} already connects {} and {}",
                        gw.vpn_gateway_id, cgw.customer_gateway_id
                    ),
                ));
            }
            let n = tx.count_connections_of_gateway(&gw.vpn_gateway_id)?;
            if n >= self.quota {
                return Err(ApiError::new(
                    400,
                    "Resource.QuotaFull",
                    format!(
                        "VpnGatewayId: {} already has {n} VPN connections (quota {})",
                        gw.vpn_gateway_id, self.quota
                    ),
                ));
            }
            if c.ike_config.local_id.is_empty() {
                c.ike_config.local_id = gw.public_ip.to_string();
            }
            if c.ike_config.remote_id.is_empty() {
                c.ike_config.remote_id = cgw.ip_address.to_string();
            }
            tx.put_vpn_connection(&c)?;
            tx.append_log(&c.vpn_connection_id, now, &config_log_line("created", &c))?;
            let answer = json!({ "VpnConnectionId": c.vpn_connection_id, "Name": c.name, "CreateTime": c.create_time });
            Ok((answer, Some(ConnectionChange::Created(c))))
        })
    }

    fn connection_view(&self, c: &VpnConnection, show_psk: bool) -> Value {
        let mut v = to_value(c);
        if !show_psk {
            if let Some(ike) = v.get_mut("IkeConfig").and_then(Value::as_object_mut) {
                ike.remove("Psk");
            }
        }
        let live = self
            .effects
            .live(&c.vpn_connection_id)
            .unwrap_or_else(|| LiveStatus::from_status(ConnectionStatus::IkeSaNotEstablished));
        v["Status"] = Value::from(live.status.as_str());
        v["IkeSaState"] = Value::from(live.ike_sa_state);
        v["IpsecSaState"] = Value::from(live.ipsec_sa_state);
        v["IkeSaEstablishedTime"] = Value::from(live.ike_sa_established_time.unwrap_or(0));
        v["IpsecSaEstablishedTime"] = Value::from(live.ipsec_sa_established_time.unwrap_or(0));
        if let Some(k) = live.counters {
            v["BytesIn"] = Value::from(k.bytes_in);
            v["BytesOut"] = Value::from(k.bytes_out);
            v["PacketsIn"] = Value::from(k.packets_in);
            v["PacketsOut"] = Value::from(k.packets_out);
        }
        v
    }

    fn get_connection(&self, p: &Params) -> Result<VpnConnection, ApiError> {
        let id = p.required("VpnConnectionId")?;
        self.store().read().vpn_connection(id)?.ok_or_else(|| connection_not_found(id))
    }

    fn describe_vpn_connection(&self, p: &Params) -> Result<Value, ApiError> {
        let show = p.bool_or("ShowPsk", false)?;
        let c = self.get_connection(p)?;
        Ok(self.connection_view(&c, show))
    }

    fn describe_vpn_connections(&self, p: &Params) -> Result<Value, ApiError> {
        let show = p.bool_or("ShowPsk", false)?;
        let page = page(p, 10, 50)?;
        let (list, total) = self.store().read().vpn_connections(
            p.get("VpnConnectionId"),
            p.get("VpnGatewayId"),
            p.get("CustomerGatewayId"),
            page,
        )?;
        let items: Vec<Value> = list.iter().map(|c| self.connection_view(c, show)).collect();
        Ok(listing(total, page, "VpnConnections", "VpnConnection", items))
    }

    fn describe_vpn_gateways(&self, p: &Params) -> Result<Value, ApiError> {
        let page = page(p, 10, 50)?;
        let (list, total) = self.store().read().vpn_gateways(p.get("VpnGatewayId"), page)?;
        Ok(listing(total, page, "VpnGateways", "VpnGateway", list.iter().map(to_value).collect()))
    }

    fn describe_customer_gateways(&self, p: &Params) -> Result<Value, ApiError> {
        let page = page(p, 10, 50)?;
        let (list, total) = self.store().read().customer_gateways(p.get("CustomerGatewayId"), page)?;
        Ok(listing(total, page, "CustomerGateways", "CustomerGateway", list.iter().map(to_value).collect()))
    }

    fn delete_customer_gateway(&self, p: &Params) -> Result<Value, ApiError> {
        let id = p.required("CustomerGatewayId")?;
        self.store().write(|tx| {
            if tx.customer_gateway(id)?.is_none() {
                return Err(customer_gateway_not_found(id));
            }
            if let Some(conn) = tx.customer_gateway_in_use(id)? {
                return Err(ApiError::new(
                    400,
                    "DependencyViolation.VpnConnection",
                    format!("CustomerGatewayId: {id} is used by VPN connection {conn}"),
                ));
            }
            tx.delete_customer_gateway(id)?;
            Ok(json!({}))
        })
    }

    fn modify_vpn_connection(&self, p: &Params) -> Result<Value, ApiError> {
        let id = p.required("VpnConnectionId")?;
        // ClientToken is accepted for compatibility; a modification is idempotent by nature.
        client_token(p)?;
        let now = self.now();
        let mut store = self.store();
        let (c, changed) = store.write(|tx| {
            let old = tx.vpn_connection(id)?.ok_or_else(|| connection_not_found(id))?;
            let gw = tx.vpn_gateway(&old.vpn_gateway_id)?.ok_or_else(|| gateway_not_found(&old.vpn_gateway_id))?;
            let mut c = old.clone();
            validate::apply_connection_params(&mut c, p)?;
            check_active(&gw)?;
            let changed = c != old;
            if changed {
                tx.put_vpn_connection(&c)?;
                tx.append_log(&c.vpn_connection_id, now, &config_log_line("modified", &c))?;
            }
            Ok((c, changed))
        })?;
        drop(store);
        if changed {
            self.effects.apply(ConnectionChange::Modified(c.clone()));
        }
        Ok(self.connection_view(&c, false))
    }

    fn delete_vpn_connection(&self, p: &Params) -> Result<Value, ApiError> {
        let id = p.required("VpnConnectionId")?;
        client_token(p)?;
        let gw_id = self.store().write(|tx| {
            let c = tx.vpn_connection(id)?.ok_or_else(|| connection_not_found(id))?;
            if let Some(gw) = tx.vpn_gateway(&c.vpn_gateway_id)? {
                check_active(&gw)?;
            }
            tx.delete_vpn_connection(id)?;
            Ok(c.vpn_gateway_id)
        })?;
        self.effects.apply(ConnectionChange::Deleted { vpn_connection_id: id.to_string(), vpn_gateway_id: gw_id });
        Ok(json!({}))
    }

    fn download_config(&self, p: &Params) -> Result<Value, ApiError> {
        let format = p.get("Format").unwrap_or("json");
        if format != "json" && format != "swanctl" {
            return Err(ApiError::invalid("Format", "must be json or swanctl"));
        }
        let c = self.get_connection(p)?;
        let (gw, cgw) = {
            let store = self.store();
            let db = store.read();
            (
                db.vpn_gateway(&c.vpn_gateway_id)?.ok_or_else(|| gateway_not_found(&c.vpn_gateway_id))?,
                db.customer_gateway(&c.customer_gateway_id)?
                    .ok_or_else(|| customer_gateway_not_found(&c.customer_gateway_id))?,
            )
        };
        let mut answer = json!({ "VpnConnectionConfig": render::peer_view(&c, &gw, &cgw) });
        if format == "swanctl" {
            answer["SwanctlConf"] = Value::from(render::swanctl_conf(&c, &gw, &cgw));
        }
        Ok(answer)
    }

    fn describe_logs(&self, p: &Params) -> Result<Value, ApiError> {
        let id = p.required("VpnConnectionId")?;
        let period = p.int_or("MinutePeriod", 10, 1, 10)? * 60;
        let from = p.get("From").map(|v| validate::parse_int("From", v, 0, u32::MAX as u64 * 4)).transpose()?;
        let to = p.get("To").map(|v| validate::parse_int("To", v, 0, u32::MAX as u64 * 4)).transpose()?;
        let (from, to) = match (from, to) {
            (Some(f), Some(t)) => (f, t),
            (Some(f), None) => (f, f + period),
            (None, Some(t)) => (t.saturating_sub(period), t),
            (None, None) => {
                let now = self.now() / 1000;
                (now.saturating_sub(period), now)
            }
        };
        if to < from {
            return Err(ApiError::invalid("To", "must not be earlier than From"));
        }
        if to - from > LOG_WINDOW_SECS {
            return Err(ApiError::invalid(
                "To",
                format!(
                    "the From..To window is {} s; one query covers at most {LOG_WINDOW_SECS} s (10 minutes)",
                    to - from
                ),
            ));
        }
        let page = page(p, 50, 50)?;
        let store = self.store();
        let db = store.read();
        if db.vpn_connection(id)?.is_none() {
            return Err(connection_not_found(id));
        }
        let (lines, total) = db.logs(id, from * 1000, (to + 1) * 1000, page)?;
        let shown = (page.number - 1).saturating_mul(page.size).saturating_add(lines.len() as u64);
        let logs: Vec<Value> =
            lines.iter().map(|l| Value::from(format!("{} {}", format_utc(l.time_ms), l.message))).collect();
        Ok(json!({
            "Count": total,
            "IsCompleted": shown >= total,
            "PageNumber": page.number,
            "PageSize": page.size,
            "Data": { "Logs": logs },
        }))
    }

    // ---- for the daemon and the IKE side -------------------------------------------------------

    /// Every VPN connection (the IKE side's start-up replay).
    pub fn vpn_connections(&self) -> Result<Vec<VpnConnection>, ApiError> {
        Ok(self.store().read().vpn_connections(None, None, None, Page { number: 1, size: u32::MAX as u64 })?.0)
    }

    /// The VPN gateway and the customer gateway a connection joins (the IKE side's local and
    /// remote addresses).
    pub fn gateways_of(
        &self,
        c: &VpnConnection,
    ) -> Result<(crate::model::VpnGateway, crate::model::CustomerGateway), ApiError> {
        let store = self.store();
        let db = store.read();
        Ok((
            db.vpn_gateway(&c.vpn_gateway_id)?.ok_or_else(|| gateway_not_found(&c.vpn_gateway_id))?,
            db.customer_gateway(&c.customer_gateway_id)?
                .ok_or_else(|| customer_gateway_not_found(&c.customer_gateway_id))?,
        ))
    }

    /// Appends a log line for a connection (IKE negotiation events). Its PSK is scrubbed from the
    /// text. Unknown connections are ignored.
    pub fn record_log(&self, vpn_connection_id: &str, message: &str) -> Result<(), ApiError> {
        let now = self.now();
        self.store().write(|tx| {
            if let Some(c) = tx.vpn_connection(vpn_connection_id)? {
                tx.append_log(vpn_connection_id, now, &scrub(message, &c.ike_config.psk))?;
            }
            Ok(())
        })
    }

    /// Appends several log lines (connection id, text) in one transaction, in order: what the IKE
    /// side's log writer calls, so a burst of negotiation steps costs one commit. PSKs are scrubbed
    /// as in [`Service::record_log`]; lines of unknown connections are dropped.
    pub fn record_logs(&self, lines: &[(String, String)]) -> Result<(), ApiError> {
        let now = self.now();
        self.store().write(|tx| {
            let mut psks: std::collections::HashMap<&str, Option<String>> = std::collections::HashMap::new();
            for (id, message) in lines {
                let psk = match psks.get(id.as_str()) {
                    Some(p) => p.clone(),
                    None => {
                        let p = tx.vpn_connection(id)?.map(|c| c.ike_config.psk);
                        psks.insert(id, p.clone());
                        p
                    }
                };
                if let Some(psk) = psk {
                    tx.append_log(id, now, &scrub(message, &psk))?;
                }
            }
            Ok(())
        })
    }

    /// Deletes logs older than 30 days; returns how many lines.
    pub fn prune_logs(&self) -> Result<u64, ApiError> {
        let cutoff = self.now().saturating_sub(LOG_RETENTION_MS);
        self.store().write(|tx| tx.prune_logs(cutoff))
    }

    /// Sets a VPN gateway's status (`active`, or e.g. `updating` while the engine applies a change:
    /// writes then answer `VpnGateway.Configuring`).
    pub fn set_vpn_gateway_status(&self, vpn_gateway_id: &str, status: &str) -> Result<(), ApiError> {
        self.store().write(|tx| {
            let mut g = tx.vpn_gateway(vpn_gateway_id)?.ok_or_else(|| gateway_not_found(vpn_gateway_id))?;
            g.status = status.to_string();
            tx.put_vpn_gateway(&g)
        })
    }
}

fn check_active(gw: &crate::model::VpnGateway) -> Result<(), ApiError> {
    if gw.status == "active" {
        Ok(())
    } else {
        Err(ApiError::new(
            400,
            "VpnGateway.Configuring",
            format!("VpnGatewayId: {} is {} (being configured); retry later", gw.vpn_gateway_id, gw.status),
        ))
    }
}

/// A log line describing a connection's configuration; by construction without the PSK.
fn config_log_line(what: &str, c: &VpnConnection) -> String {
    let (i, s) = (&c.ike_config, &c.ipsec_config);
    format!(
        "{}: configuration {what}: {} {} {}/{}/{} lifetime {}s; ipsec {}/{}/{} lifetime {}s; local {} remote {}",
        c.vpn_connection_id,
        i.ike_version,
        i.ike_mode,
        i.ike_enc_alg,
        i.ike_auth_alg,
        i.ike_pfs,
        i.ike_lifetime,
        s.ipsec_enc_alg,
        s.ipsec_auth_alg,
        s.ipsec_pfs,
        s.ipsec_lifetime,
        c.local_subnet,
        c.remote_subnet
    )
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn listing(total: u64, page: Page, outer: &str, inner: &str, items: Vec<Value>) -> Value {
    let mut m = Map::new();
    m.insert("TotalCount".into(), total.into());
    m.insert("PageNumber".into(), page.number.into());
    m.insert("PageSize".into(), page.size.into());
    m.insert(outer.into(), json!({ inner: items }));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::format_utc;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(format_utc(1_700_000_000_999), "2023-11-14 22:13:20");
    }
}
