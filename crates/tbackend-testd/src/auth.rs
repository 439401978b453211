//! Tokens, roles and store ACLs (docs/protocol.md §5).
//!
//! Only SHA-256 hashes of tokens are kept, in memory and on disk; the plain token is
//! shown once by `auth_token_create` (and, for the bootstrap admin, written to
//! `<data_dir>/security/BOOTSTRAP_ADMIN_TOKEN`, mode 0600).

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The admin token of an auth-enabled daemon without a data directory.
pub const EPHEMERAL_ADMIN_TOKEN: &str = "ephemeral_dev_admin";
/// File name of the bootstrap admin token under `<data_dir>/security/`.
pub const BOOTSTRAP_FILE: &str = "BOOTSTRAP_ADMIN_TOKEN";
const TOKENS_FILE: &str = "tokens.json";

/// A registered token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub role: String,
    pub allowed_stores: Vec<String>,
    pub persist: bool,
    /// Hex SHA-256 of the token.
    pub sha256: String,
}

impl TokenRecord {
    fn public_json(&self) -> Value {
        json!({
            "allowed_stores": self.allowed_stores,
            "id": self.id,
            "persist": self.persist,
            "role": self.role,
        })
    }

    pub fn may_use_store(&self, store: &str) -> bool {
        self.allowed_stores.iter().any(|s| s == "*" || s == store)
    }
}

/// Whether `role` may run `op`.
///
/// Roles the daemon does not know (`auth_token_create` accepts any string, e.g.
/// "superuser") are treated like `peer`: they may ping and nothing else. The real
/// daemon's behaviour for them is unrecorded; denying is the safe reading.
pub fn role_allows(role: &str, op: &str) -> bool {
    match role {
        "admin" => true,
        "read_only" => {
            matches!(
                op,
                "ping"
                    | "latest_for"
                    | "facts_for"
                    | "query_scope"
                    | "size"
                    | "stores"
                    | "query_slice"
            ) || op.starts_with("diagnostics_")
                || op.starts_with("analytics_")
                || op.starts_with("cross_store_")
        }
        "write_only" => matches!(op, "ping" | "write_fact" | "write_fact_once"),
        "peer" => op == "ping" || op.starts_with("mesh_"),
        _ => op == "ping",
    }
}

/// The token registry.
#[derive(Debug)]
pub struct Registry {
    tokens: Mutex<Vec<TokenRecord>>,
    /// Where persisted tokens live; `None` without a data directory.
    dir: Option<PathBuf>,
}

impl Registry {
    /// Loads the persisted tokens; with `auth` on and nothing persisted yet, creates the
    /// bootstrap admin (a random token in the data dir, or the fixed ephemeral one).
    pub fn open(data_dir: Option<&Path>, auth: bool) -> io::Result<Registry> {
        let dir = data_dir.map(|d| d.join("security"));
        let mut tokens = Vec::new();
        if let Some(dir) = &dir {
            match fs::read(dir.join(TOKENS_FILE)) {
                Ok(bytes) => {
                    tokens = serde_json::from_slice(&bytes)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let registry = Registry {
            tokens: Mutex::new(tokens),
            dir,
        };
        if auth && registry.tokens.lock().unwrap().is_empty() {
            match &registry.dir {
                Some(dir) => {
                    let token = random_hex(32)?;
                    fs::create_dir_all(dir)?;
                    write_private(&dir.join(BOOTSTRAP_FILE), token.as_bytes())?;
                    registry.insert(&token, "admin", vec!["*".into()], true)?;
                }
                None => {
                    registry.insert(EPHEMERAL_ADMIN_TOKEN, "admin", vec!["*".into()], false)?;
                }
            }
        }
        Ok(registry)
    }

    fn insert(
        &self,
        token: &str,
        role: &str,
        allowed_stores: Vec<String>,
        persist: bool,
    ) -> io::Result<TokenRecord> {
        let rec = TokenRecord {
            id: random_hex(8)?,
            role: role.into(),
            allowed_stores,
            persist,
            sha256: sha256_hex(token),
        };
        let mut tokens = self.tokens.lock().unwrap();
        tokens.push(rec.clone());
        if persist {
            self.save(&tokens)?;
        }
        Ok(rec)
    }

    fn save(&self, tokens: &[TokenRecord]) -> io::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        fs::create_dir_all(dir)?;
        let kept: Vec<&TokenRecord> = tokens.iter().filter(|t| t.persist).collect();
        let bytes = serde_json::to_vec_pretty(&kept).map_err(io::Error::other)?;
        let tmp = dir.join(format!("{TOKENS_FILE}.tmp"));
        write_private(&tmp, &bytes)?;
        fs::rename(tmp, dir.join(TOKENS_FILE))
    }

    /// The record of a presented token.
    pub fn lookup(&self, token: &str) -> Option<TokenRecord> {
        let hash = sha256_hex(token);
        self.tokens
            .lock()
            .unwrap()
            .iter()
            .find(|t| t.sha256 == hash)
            .cloned()
    }

    /// `auth_token_create`.
    pub fn create(&self, req: &Value) -> Value {
        if req.get("target_token").is_some() {
            return err("'target_token' is no longer accepted: tokens are generated server-side and returned once (P9)");
        }
        let Some(role) = req.get("target_role").and_then(Value::as_str) else {
            return err("Missing 'target_role' parameter");
        };
        let Some(stores) = req.get("allowed_stores").and_then(Value::as_array) else {
            return err("Missing 'allowed_stores' parameter");
        };
        let stores: Vec<String> = stores
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect();
        let persist = req.get("persist").and_then(Value::as_bool).unwrap_or(false);
        let token = match random_hex(32) {
            Ok(t) => t,
            Err(e) => return err(&format!("token generation failed: {e}")),
        };
        match self.insert(&token, role, stores, persist) {
            Ok(rec) => json!({
                "allowed_stores": rec.allowed_stores,
                "id": rec.id,
                "ok": true,
                "persist": rec.persist,
                "role": rec.role,
                "token": token,
            }),
            Err(e) => err(&format!("token persistence failed: {e}")),
        }
    }

    /// `auth_token_list`, in creation order.
    pub fn list(&self) -> Value {
        let tokens = self.tokens.lock().unwrap();
        let list: Vec<Value> = tokens.iter().map(TokenRecord::public_json).collect();
        json!({"count": list.len(), "ok": true, "tokens": list})
    }

    /// `auth_token_delete`.
    pub fn delete(&self, req: &Value) -> Value {
        let Some(id) = req.get("target_id").and_then(Value::as_str) else {
            return err("Missing 'target_id' parameter");
        };
        let mut tokens = self.tokens.lock().unwrap();
        let Some(pos) = tokens.iter().position(|t| t.id == id) else {
            return err("Token not found");
        };
        let admins = tokens.iter().filter(|t| t.role == "admin").count();
        if tokens[pos].role == "admin" && admins == 1 {
            return err("Cannot delete the last remaining admin token (Lockout Prevention)");
        }
        let removed = tokens.remove(pos);
        if removed.persist {
            if let Err(e) = self.save(&tokens) {
                eprintln!("tbackend-testd: saving tokens: {e}");
            }
        }
        json!({"id": id, "ok": true})
    }
}

fn err(msg: &str) -> Value {
    json!({"error": msg, "ok": false})
}

/// Hex SHA-256 of `token`.
pub fn sha256_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `n` random bytes from the kernel, as lowercase hex.
pub fn random_hex(n: usize) -> io::Result<String> {
    let mut bytes = vec![0u8; n];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        assert!(role_allows("read_only", "diagnostics_summary"));
        assert!(!role_allows("read_only", "facts_by_seq"));
        assert!(!role_allows("read_only", "metrics"));
        assert!(role_allows("write_only", "write_fact"));
        assert!(!role_allows("write_only", "latest_for"));
        assert!(role_allows("superuser", "ping"));
        assert!(!role_allows("superuser", "size"));
    }

    #[test]
    fn ephemeral_admin_and_lockout() {
        let r = Registry::open(None, true).unwrap();
        let admin = r.lookup(EPHEMERAL_ADMIN_TOKEN).unwrap();
        assert_eq!(admin.role, "admin");
        assert_eq!(admin.id.len(), 16);
        let answer = r.delete(&json!({"target_id": admin.id}));
        assert_eq!(
            answer["error"],
            "Cannot delete the last remaining admin token (Lockout Prevention)"
        );
        let created = r.create(&json!({"target_role": "admin", "allowed_stores": ["*"]}));
        assert_eq!(created["token"].as_str().unwrap().len(), 64);
        assert_eq!(r.delete(&json!({"target_id": admin.id}))["ok"], true);
        assert!(r.lookup(EPHEMERAL_ADMIN_TOKEN).is_none());
    }
}
