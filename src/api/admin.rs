//! `/v1/admin/…`: accounts, their keys and senders, and the unrouted inbound texts, for an
//! operator key with the `admin` scope. Changes go through the same code as `smsgate
//! accounts …` and `smsgate keys …` ([`AccountAdmin`], [`KeyAdmin`]), and each is audited.

use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::{ApiRequest, AppState, Handled, authorize, json_response, store_error};
use crate::accounts::admin::{AccountAdmin, AccountChanges, NewAccount};
use crate::accounts::{AccountError, AccountView};
use crate::audit::Event;
use crate::auth::{ApiKey, KeyAdmin, KeyAdminError, Principal, Scope};

fn account_error(e: AccountError) -> ApiError {
    match e {
        AccountError::Invalid(m) => ApiError::invalid("", m).field("body"),
        AccountError::NotFound(_) => ApiError::not_found("account with this name"),
        AccountError::Exists(n) => {
            ApiError::conflict("account_exists", format!("An account named '{n}' exists already."))
        }
        AccountError::Taken { address, owner } => {
            ApiError::conflict("sender_taken", format!("{address} belongs to the account '{owner}'."))
        }
        AccountError::Store(e) => store_error(e),
    }
}

fn key_error(e: KeyAdminError) -> ApiError {
    match e {
        KeyAdminError::Store(e) => store_error(e),
        other => ApiError::invalid("", other.to_string()).field("body"),
    }
}

/// The body as `T`, refusing unknown fields with the serde message (which names the field).
/// Objects must be written as objects: serde would also read a struct from an array.
fn body<T: for<'de> Deserialize<'de>>(req: &ApiRequest) -> Result<T, ApiError> {
    let value = super::json_body(req)?;
    if let Some(field) = ["replies"].iter().find(|f| value.get(**f).is_some_and(|v| !(v.is_object() || v.is_null()))) {
        return Err(ApiError::invalid(field, format!("'{field}' must be an object.")));
    }
    serde_json::from_value(value).map_err(|e| ApiError::invalid("", format!("{e}.")).field("body"))
}

fn key_view(k: &ApiKey) -> Value {
    json!({
        "id": k.id, "account": k.account, "name": k.name, "scopes": k.scopes,
        "created_at": crate::message::rfc3339(k.created_ms),
        "revoked_at": k.revoked_ms.map(crate::message::rfc3339),
        "rate_per_sec": k.rate_per_sec, "daily_segments": k.daily_segments,
    })
}

fn account_view(a: &crate::accounts::Account, secret: Option<String>) -> Value {
    let mut v = serde_json::to_value(AccountView::from(a)).unwrap_or(Value::Null);
    if let Some(s) = secret {
        v["webhook_secret"] = json!(s);
    }
    v
}

fn audit(state: &AppState, p: &Principal, action: &str, target: &str) {
    state.audit.record(Event::new(format!("key:{}", p.key_id), format!("admin.{action}"), target.to_string(), "ok"));
}

/// A new key for an account.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    scopes: Vec<Scope>,
    #[serde(default)]
    rate_per_sec: Option<u32>,
    #[serde(default)]
    daily_segments: Option<u64>,
}

/// Senders to add.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Senders {
    senders: Vec<String>,
}

/// Routes `/v1/admin/{rest}`.
pub async fn route(state: &AppState, req: ApiRequest, rest: &[&str]) -> Handled {
    let p = authorize(state, &req, Scope::Admin)?;
    let accounts = AccountAdmin { store: &state.store, accounts: &state.accounts };
    let keys = KeyAdmin { store: &state.store, ring: &state.keys };
    let policy = state.live.config().webhooks.policy().unwrap_or_default();
    let exists = |name: &str| -> Result<std::sync::Arc<crate::accounts::Account>, ApiError> {
        state.accounts.get(name).ok_or_else(|| ApiError::not_found("account with this name"))
    };
    match (rest, req.method()) {
        (["accounts"], &Method::GET) => {
            let list: Vec<Value> = state.accounts.list().iter().map(|a| account_view(a, None)).collect();
            Ok(json_response(StatusCode::OK, &json!({"accounts": list})))
        }
        (["accounts"], &Method::POST) => {
            let new: NewAccount = body(&req)?;
            let (a, secret) = accounts.create(new, &policy).await.map_err(account_error)?;
            audit(state, &p, "accounts.create", &format!("account:{}", a.name));
            Ok(json_response(StatusCode::CREATED, &account_view(&a, Some(secret))))
        }
        (["accounts", name], &Method::GET) => {
            let account = exists(name)?;
            Ok(json_response(StatusCode::OK, &account_view(&account, None)))
        }
        (["accounts", name], &Method::PATCH) => {
            let changes: AccountChanges = body(&req)?;
            let (a, secret) = accounts.update(name, changes, &policy).await.map_err(account_error)?;
            audit(state, &p, "accounts.update", &format!("account:{name}"));
            Ok(json_response(StatusCode::OK, &account_view(&a, secret)))
        }
        (["accounts", name, "keys"], &Method::GET) => {
            exists(name)?;
            let list: Vec<Value> = state.keys.list().iter().filter(|k| k.account == *name).map(key_view).collect();
            Ok(json_response(StatusCode::OK, &json!({"keys": list})))
        }
        (["accounts", name, "keys"], &Method::POST) => {
            exists(name)?;
            let new: NewKey = body(&req)?;
            if new.scopes.is_empty() {
                return Err(ApiError::invalid("scopes", "'scopes' names at least one of send, read, optouts, admin."));
            }
            let (mut key, token) = keys.create(name, &new.name, new.scopes).await.map_err(key_error)?;
            if new.rate_per_sec.is_some() || new.daily_segments.is_some() {
                key = keys.set_limits(&key.id, new.rate_per_sec, new.daily_segments).await.map_err(key_error)?;
            }
            audit(state, &p, "keys.create", &key.id);
            let mut v = key_view(&key);
            v["token"] = json!(token);
            Ok(json_response(StatusCode::CREATED, &v))
        }
        (["accounts", name, "keys", id], &Method::DELETE) => {
            exists(name)?;
            if !state.keys.list().iter().any(|k| k.id == *id && k.account == *name) {
                return Err(ApiError::not_found("key with this id in this account"));
            }
            let key = keys.revoke(id).await.map_err(key_error)?;
            audit(state, &p, "keys.revoke", id);
            Ok(json_response(StatusCode::OK, &key_view(&key)))
        }
        (["accounts", name, "senders"], &Method::POST) => {
            let Senders { senders } = body(&req)?;
            let changes = AccountChanges { add_senders: senders, ..AccountChanges::default() };
            let (a, _) = accounts.update(name, changes, &policy).await.map_err(account_error)?;
            audit(state, &p, "accounts.senders.add", &format!("account:{name}"));
            Ok(json_response(StatusCode::OK, &account_view(&a, None)))
        }
        (["accounts", name, "senders", address], &Method::DELETE) => {
            let address = super::registry::percent_decode(address);
            if !exists(name)?.senders.contains(&address) {
                return Err(ApiError::not_found("sender of this account"));
            }
            let changes = AccountChanges { remove_senders: vec![address], ..AccountChanges::default() };
            let (a, _) = accounts.update(name, changes, &policy).await.map_err(account_error)?;
            audit(state, &p, "accounts.senders.remove", &format!("account:{name}"));
            Ok(json_response(StatusCode::OK, &account_view(&a, None)))
        }
        (["unrouted"], &Method::GET) => super::registry::inbound_page(state, &req, None),
        (["accounts"], _) => Err(ApiError::method_not_allowed(&["GET", "POST"])),
        (["accounts", _], _) => Err(ApiError::method_not_allowed(&["GET", "PATCH"])),
        (["accounts", _, "keys"], _) => Err(ApiError::method_not_allowed(&["GET", "POST"])),
        (["accounts", _, "senders"], _) => Err(ApiError::method_not_allowed(&["POST"])),
        (["accounts", _, "keys" | "senders", _], _) => Err(ApiError::method_not_allowed(&["DELETE"])),
        (["unrouted"], _) => Err(ApiError::method_not_allowed(&["GET"])),
        _ => Err(ApiError::not_found("such endpoint")),
    }
}
