//! Which address a send leaves from: one the key's account owns, or one its pool picks.

use super::AppState;
use super::error::ApiError;
use super::send::{POOL, SendRequest};
use crate::accounts::{Account, normalize_address, pools};

/// The pool a send without `from` uses, when the account has one.
pub const DEFAULT_POOL: &str = "default";

/// The sender chosen for a send, and the pool assignment its commit must record.
pub struct Chosen {
    /// The address, or `None` for the carrier's `default_source` (accounts that may send
    /// from any unowned address).
    pub from: Option<String>,
    /// A new pool assignment (sticky sender), if one was made.
    pub pick: Option<pools::Pick>,
}

fn not_allowed(message: String) -> ApiError {
    crate::metrics::compliance_rejection("sender_not_allowed");
    ApiError::unprocessable("sender_not_allowed", message).field("from")
}

/// Resolves `request.from` for `account`: its own sender; `pool:NAME`, picked per recipient;
/// nothing, which takes the `default` pool, else its first sender, else (for an account that
/// may send from any unowned address) the carrier's default source.
pub fn choose(state: &AppState, account: &Account, request: &SendRequest) -> Result<Chosen, ApiError> {
    let pool = match request.from.as_deref() {
        Some(f) if f.starts_with(POOL) => f.trim_start_matches(POOL),
        Some(f) => {
            let address = normalize_address(f).ok_or_else(|| not_allowed(format!("'{f}' is not a sender address.")))?;
            if !state.accounts.may_send_from(account, &address) {
                return Err(not_allowed(format!("'{f}' is not one of this account's senders.")));
            }
            return Ok(Chosen { from: Some(address), pick: None });
        }
        None if account.pools.contains_key(DEFAULT_POOL) => DEFAULT_POOL,
        None => {
            if let Some(first) = account.senders.first() {
                return Ok(Chosen { from: Some(first.clone()), pick: None });
            }
            if account.any_sender {
                return Ok(Chosen { from: None, pick: None });
            }
            return Err(not_allowed("This account has no senders; an operator must add one.".into()));
        }
    };
    if !account.pools.contains_key(pool) {
        return Err(not_allowed(format!("This account has no sender pool named '{pool}'.")));
    }
    let config = state.live.config();
    let to = request.to.as_str();
    // A sender is usable when the first carrier of its route has a bind that transmits.
    let usable = |sender: &str| {
        let route = config.route(to, Some(sender), request.category.as_deref()).unwrap_or_default();
        route.first().is_some_and(|c| state.links.iter().any(|l| &**l.name() == c && l.transmitting_binds() > 0))
    };
    let idx = state.store.crypto().blind_index(to);
    let pick = pools::pick(&state.store, account, pool, &idx, usable)
        .map_err(super::store_error)?
        .ok_or_else(|| not_allowed(format!("The sender pool '{pool}' is empty.")))?;
    Ok(Chosen { from: Some(pick.sender.clone()), pick: Some(pick) })
}
