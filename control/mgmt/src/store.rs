//! The durable store: one SQLite database (rusqlite, `bundled`) in WAL mode with
//! `synchronous=FULL`, so that every committed transaction — and the API acknowledges a write only
//! after its commit — survives a `kill -9` (and, with FULL, a power cut).
//!
//! Resources are rows keyed by id with the indexed columns the queries need and the resource itself
//! as JSON (`body`, the model's serde form). The schema is versioned: `schema_version` holds one
//! row, and [`MIGRATIONS`] is the ordered list of SQL steps from an empty database; opening a
//! database applies the missing ones, each in its own transaction.
//!
//! The file is created 0600; SQLite gives its `-wal` and `-shm` files the database file's mode.

use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ApiError;
use crate::model::{CustomerGateway, VpnConnection, VpnGateway};

/// The ordered schema migrations; migration `i` (0-based) brings the schema to version `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: resources and ClientToken records.
    "CREATE TABLE vpn_gateways (
        id TEXT PRIMARY KEY, create_time INTEGER NOT NULL, body TEXT NOT NULL);
     CREATE TABLE customer_gateways (
        id TEXT PRIMARY KEY, create_time INTEGER NOT NULL, body TEXT NOT NULL);
     CREATE TABLE vpn_connections (
        id TEXT PRIMARY KEY, vpn_gateway_id TEXT NOT NULL, customer_gateway_id TEXT NOT NULL,
        create_time INTEGER NOT NULL, body TEXT NOT NULL);
     CREATE INDEX vpn_connections_by_gateway ON vpn_connections (vpn_gateway_id);
     CREATE INDEX vpn_connections_by_customer_gateway ON vpn_connections (customer_gateway_id);
     CREATE TABLE client_tokens (
        action TEXT NOT NULL, token TEXT NOT NULL, request TEXT NOT NULL, response TEXT NOT NULL,
        create_time INTEGER NOT NULL, PRIMARY KEY (action, token));",
    // 2: connection logs (DescribeVpnConnectionLogs), pruned after 30 days.
    "CREATE TABLE connection_logs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, vpn_connection_id TEXT NOT NULL,
        time_ms INTEGER NOT NULL, message TEXT NOT NULL);
     CREATE INDEX connection_logs_by_connection ON connection_logs (vpn_connection_id, time_ms);
     CREATE INDEX connection_logs_by_time ON connection_logs (time_ms);",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

fn db_err(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("storage: {e}"))
}

/// One page of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// 1-based.
    pub number: u64,
    pub size: u64,
}

impl Page {
    fn offset(&self) -> i64 {
        (self.number.saturating_sub(1)).saturating_mul(self.size).min(i64::MAX as u64) as i64
    }
}

/// One connection log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub time_ms: u64,
    pub message: String,
}

/// The database handle. Not `Sync`: the API layer serializes access behind a mutex.
pub struct Store {
    conn: Connection,
}

/// Queries and writes, on the connection or inside a transaction ([`Store::write`]).
pub struct Db<'a>(&'a Connection);

impl Store {
    /// Opens (creating it 0600 if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Store, ApiError> {
        Self::open_at_version(path, SCHEMA_VERSION)
    }

    /// Opens and migrates up to `version` only (tests of the migrations from old versions).
    #[doc(hidden)]
    pub fn open_at_version(path: &Path, version: u32) -> Result<Store, ApiError> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| db_err(format!("{}: {e}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(db_err)?;
        let conn = Connection::open(path).map_err(db_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(db_err)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(db_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(db_err(format!("journal_mode is {mode}, not wal")));
        }
        conn.execute_batch("PRAGMA synchronous=FULL;").map_err(db_err)?;
        let mut store = Store { conn };
        store.migrate(version)?;
        Ok(store)
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32, ApiError> {
        self.conn.query_row("SELECT version FROM schema_version", [], |r| r.get(0)).map_err(db_err)
    }

    fn migrate(&mut self, target: u32) -> Result<(), ApiError> {
        self.conn
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM schema_version);",
            )
            .map_err(db_err)?;
        let current = self.schema_version()?;
        if current > SCHEMA_VERSION {
            return Err(db_err(format!(
                "database schema version {current} is newer than this build's {SCHEMA_VERSION}"
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().take(target as usize).skip(current as usize) {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err)?;
            tx.execute_batch(sql).map_err(|e| db_err(format!("migration {}: {e}", i + 1)))?;
            tx.execute("UPDATE schema_version SET version = ?1", [i as u32 + 1]).map_err(db_err)?;
            tx.commit().map_err(db_err)?;
        }
        Ok(())
    }

    /// Read-only access outside a transaction.
    pub fn read(&self) -> Db<'_> {
        Db(&self.conn)
    }

    /// Runs `f` in one IMMEDIATE transaction: committed (durably) when `f` returns `Ok`, rolled back
    /// — nothing stored — on `Err`.
    pub fn write<T>(&mut self, f: impl FnOnce(&Db<'_>) -> Result<T, ApiError>) -> Result<T, ApiError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err)?;
        let out = f(&Db(&tx))?;
        tx.commit().map_err(db_err)?;
        Ok(out)
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<String, ApiError> {
    serde_json::to_string(v).map_err(db_err)
}

fn from_json<T: DeserializeOwned>(s: &str) -> Result<T, ApiError> {
    serde_json::from_str(s).map_err(|e| db_err(format!("corrupt row: {e}")))
}

impl Db<'_> {
    fn get<T: DeserializeOwned>(&self, table: &str, id: &str) -> Result<Option<T>, ApiError> {
        let body: Option<String> = self
            .0
            .query_row(&format!("SELECT body FROM {table} WHERE id = ?1"), [id], |r| r.get(0))
            .optional()
            .map_err(db_err)?;
        body.map(|b| from_json(&b)).transpose()
    }

    /// Rows of `table` matching `filter` (a fixed SQL condition on `?1`/`?2`), ordered by creation.
    fn list<T: DeserializeOwned>(
        &self,
        table: &str,
        filter: &str,
        args: &[&dyn rusqlite::ToSql],
        page: Page,
    ) -> Result<(Vec<T>, u64), ApiError> {
        let total: i64 = self
            .0
            .query_row(&format!("SELECT COUNT(*) FROM {table} WHERE {filter}"), args, |r| r.get(0))
            .map_err(db_err)?;
        let sql = format!(
            "SELECT body FROM {table} WHERE {filter} ORDER BY create_time, id LIMIT {} OFFSET {}",
            page.size.min(i64::MAX as u64),
            page.offset()
        );
        let mut stmt = self.0.prepare(&sql).map_err(db_err)?;
        let rows = stmt.query_map(args, |r| r.get::<_, String>(0)).map_err(db_err)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(from_json(&row.map_err(db_err)?)?);
        }
        Ok((out, total as u64))
    }

    pub fn vpn_gateway(&self, id: &str) -> Result<Option<VpnGateway>, ApiError> {
        self.get("vpn_gateways", id)
    }

    pub fn customer_gateway(&self, id: &str) -> Result<Option<CustomerGateway>, ApiError> {
        self.get("customer_gateways", id)
    }

    pub fn vpn_connection(&self, id: &str) -> Result<Option<VpnConnection>, ApiError> {
        self.get("vpn_connections", id)
    }

    /// Inserts or replaces.
    pub fn put_vpn_gateway(&self, g: &VpnGateway) -> Result<(), ApiError> {
        self.0
            .execute(
                "INSERT OR REPLACE INTO vpn_gateways (id, create_time, body) VALUES (?1, ?2, ?3)",
                params![g.vpn_gateway_id, g.create_time as i64, to_json(g)?],
            )
            .map_err(db_err)?;
        Ok(())
    }

    pub fn put_customer_gateway(&self, g: &CustomerGateway) -> Result<(), ApiError> {
        self.0
            .execute(
                "INSERT OR REPLACE INTO customer_gateways (id, create_time, body) VALUES (?1, ?2, ?3)",
                params![g.customer_gateway_id, g.create_time as i64, to_json(g)?],
            )
            .map_err(db_err)?;
        Ok(())
    }

    pub fn put_vpn_connection(&self, c: &VpnConnection) -> Result<(), ApiError> {
        self.0
            .execute(
                "INSERT OR REPLACE INTO vpn_connections (id, vpn_gateway_id, customer_gateway_id, create_time, body)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    c.vpn_connection_id,
                    c.vpn_gateway_id,
                    c.customer_gateway_id,
                    c.create_time as i64,
                    to_json(c)?
                ],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// Returns whether a row was deleted.
    pub fn delete_customer_gateway(&self, id: &str) -> Result<bool, ApiError> {
        Ok(self.0.execute("DELETE FROM customer_gateways WHERE id = ?1", [id]).map_err(db_err)? > 0)
    }

    /// Deletes the connection and its logs; returns whether it existed.
    pub fn delete_vpn_connection(&self, id: &str) -> Result<bool, ApiError> {
        self.0.execute("DELETE FROM connection_logs WHERE vpn_connection_id = ?1", [id]).map_err(db_err)?;
        Ok(self.0.execute("DELETE FROM vpn_connections WHERE id = ?1", [id]).map_err(db_err)? > 0)
    }

    /// VPN gateways, optionally only the one with `id`.
    pub fn vpn_gateways(&self, id: Option<&str>, page: Page) -> Result<(Vec<VpnGateway>, u64), ApiError> {
        self.list("vpn_gateways", "(?1 IS NULL OR id = ?1)", &[&id], page)
    }

    pub fn customer_gateways(&self, id: Option<&str>, page: Page) -> Result<(Vec<CustomerGateway>, u64), ApiError> {
        self.list("customer_gateways", "(?1 IS NULL OR id = ?1)", &[&id], page)
    }

    /// VPN connections filtered by any of: connection id, VPN gateway id, customer gateway id.
    pub fn vpn_connections(
        &self,
        id: Option<&str>,
        vpn_gateway_id: Option<&str>,
        customer_gateway_id: Option<&str>,
        page: Page,
    ) -> Result<(Vec<VpnConnection>, u64), ApiError> {
        self.list(
            "vpn_connections",
            "(?1 IS NULL OR id = ?1) AND (?2 IS NULL OR vpn_gateway_id = ?2) AND (?3 IS NULL OR customer_gateway_id = ?3)",
            &[&id, &vpn_gateway_id, &customer_gateway_id],
            page,
        )
    }

    /// Number of connections of a VPN gateway (quota).
    pub fn count_connections_of_gateway(&self, vpn_gateway_id: &str) -> Result<u64, ApiError> {
        let n: i64 = self
            .0
            .query_row("SELECT COUNT(*) FROM vpn_connections WHERE vpn_gateway_id = ?1", [vpn_gateway_id], |r| r.get(0))
            .map_err(db_err)?;
        Ok(n as u64)
    }

    /// Id of a connection between this pair of gateways, if any.
    pub fn connection_between(
        &self,
        vpn_gateway_id: &str,
        customer_gateway_id: &str,
    ) -> Result<Option<String>, ApiError> {
        self.0
            .query_row(
                "SELECT id FROM vpn_connections WHERE vpn_gateway_id = ?1 AND customer_gateway_id = ?2",
                [vpn_gateway_id, customer_gateway_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)
    }

    /// Whether any connection uses the customer gateway.
    pub fn customer_gateway_in_use(&self, customer_gateway_id: &str) -> Result<Option<String>, ApiError> {
        self.0
            .query_row(
                "SELECT id FROM vpn_connections WHERE customer_gateway_id = ?1 LIMIT 1",
                [customer_gateway_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)
    }

    /// The (request, response) recorded for a ClientToken of an action.
    pub fn client_token(&self, action: &str, token: &str) -> Result<Option<(String, String)>, ApiError> {
        self.0
            .query_row(
                "SELECT request, response FROM client_tokens WHERE action = ?1 AND token = ?2",
                [action, token],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err)
    }

    pub fn put_client_token(
        &self,
        action: &str,
        token: &str,
        request: &str,
        response: &str,
        now_ms: u64,
    ) -> Result<(), ApiError> {
        self.0
            .execute(
                "INSERT INTO client_tokens (action, token, request, response, create_time) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![action, token, request, response, now_ms as i64],
            )
            .map_err(db_err)?;
        Ok(())
    }

    pub fn append_log(&self, vpn_connection_id: &str, time_ms: u64, message: &str) -> Result<(), ApiError> {
        self.0
            .execute(
                "INSERT INTO connection_logs (vpn_connection_id, time_ms, message) VALUES (?1, ?2, ?3)",
                params![vpn_connection_id, time_ms as i64, message],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// Log lines of a connection with `from_ms <= time < to_ms`, oldest first, and their total count.
    pub fn logs(
        &self,
        vpn_connection_id: &str,
        from_ms: u64,
        to_ms: u64,
        page: Page,
    ) -> Result<(Vec<LogLine>, u64), ApiError> {
        let (from, to) = (from_ms.min(i64::MAX as u64) as i64, to_ms.min(i64::MAX as u64) as i64);
        let total: i64 = self
            .0
            .query_row(
                "SELECT COUNT(*) FROM connection_logs WHERE vpn_connection_id = ?1 AND time_ms >= ?2 AND time_ms < ?3",
                params![vpn_connection_id, from, to],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        let mut stmt = self
            .0
            .prepare(
                "SELECT time_ms, message FROM connection_logs WHERE vpn_connection_id = ?1 AND time_ms >= ?2
                 AND time_ms < ?3 ORDER BY time_ms, seq LIMIT ?4 OFFSET ?5",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(
                params![vpn_connection_id, from, to, page.size.min(i64::MAX as u64) as i64, page.offset()],
                |r| Ok(LogLine { time_ms: r.get::<_, i64>(0)? as u64, message: r.get(1)? }),
            )
            .map_err(db_err)?;
        let lines = rows.collect::<Result<Vec<_>, _>>().map_err(db_err)?;
        Ok((lines, total as u64))
    }

    /// Deletes log lines older than `before_ms`; returns how many.
    pub fn prune_logs(&self, before_ms: u64) -> Result<u64, ApiError> {
        let n = self
            .0
            .execute("DELETE FROM connection_logs WHERE time_ms < ?1", [before_ms.min(i64::MAX as u64) as i64])
            .map_err(db_err)?;
        Ok(n as u64)
    }
}
