//! What smsgate does with a `deliver_sm`: receipts update their message; anything else is an
//! inbound (mobile-originated) text: stored sealed, checked for keywords (STOP/START/HELP and
//! the reasonable-opt-out rule), answered with the configured auto-reply, audited, and pushed
//! to the inbound webhook. Everything a PDU causes is durable before its `deliver_sm_resp`
//! goes back, in one commit (opt-out entry, inbound record, auto-reply, webhook outbox entry),
//! so an acknowledged STOP is never lost and blocks every later submit. When the store fails
//! the answer is `ESME_RSYSERR` and the SMSC sends the PDU again later.

pub mod reassembly;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::accounts::{Account, Accounts};
use crate::audit::{Audit, Event};
use crate::compliance::keywords::Keyword;
use crate::compliance::registry;
use crate::correlate::Correlator;
use crate::crypto::Sealed;
use crate::live::Live;
use crate::message::{Content, Message, MessageKind, Status, now_ms};
use crate::metrics as m;
use crate::phone::{E164, mask};
use crate::queue::{Entry, Queues};
use crate::smpp::client::session::InboundHandler;
use crate::smpp::codec::pdu::{ShortMessage, status};
use crate::smpp::codec::receipt::{self, IdFormat, normalize_id};
use crate::store::{Op, OpResult, Store, layout};
use crate::text;

/// The sealed part of an inbound text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundContent {
    /// Sender (the handset), `+` and digits when international.
    pub from: String,
    /// Our number or short code it was sent to.
    pub to: String,
    /// Decoded text.
    pub body: String,
}

/// An inbound text as stored (`i/{seq}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundMessage {
    /// Accept order; the paging cursor.
    pub seq: u64,
    /// The account that owns the address it was sent to; `None`: no account does (operators
    /// list these as unrouted). Records from before accounts are the `default` account's.
    #[serde(default = "default_owner")]
    pub account: Option<String>,
    /// Carrier it came from.
    pub carrier: String,
    /// Received at (ms).
    pub received_ms: u64,
    /// `optout`, `optin`, `help` or `text`.
    pub kind: String,
    /// The keyword found, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword: Option<String>,
    /// For opt-outs: `exact` or `reasonable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Content, sealed; `None` once retention purged it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<Sealed>,
    /// When retention purged the content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged_ms: Option<u64>,
    /// How many parts the text came in, when it was long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<u8>,
    /// Some parts never came: released after `inbound.reassembly_timeout_secs` with those
    /// that did.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
    /// Content, opened (not stored).
    #[serde(skip)]
    pub content: InboundContent,
}

/// How a text was put together from parts: their number, and whether some never came.
#[derive(Debug, Clone, Copy, Default)]
struct Assembled {
    parts: Option<u8>,
    incomplete: bool,
}

fn default_owner() -> Option<String> {
    Some(crate::accounts::DEFAULT.to_string())
}

/// Handles receipts and inbound texts for every carrier.
pub struct Inbound {
    store: Store,
    accounts: Arc<Accounts>,
    id_formats: Arc<HashMap<String, IdFormat>>,
    correlator: Arc<Correlator>,
    live: Arc<Live>,
    audit: Audit,
    queues: Arc<Queues>,
    /// Held while a long text's parts are read and stored or joined, so that two parts
    /// arriving together on two binds cannot both miss each other.
    assembling: Arc<tokio::sync::Mutex<()>>,
}

impl Inbound {
    /// `id_formats`: how each carrier writes receipt ids.
    pub fn new(
        store: Store,
        accounts: Arc<Accounts>,
        id_formats: HashMap<String, IdFormat>,
        live: Arc<Live>,
        audit: Audit,
        queues: Arc<Queues>,
    ) -> Arc<Self> {
        let correlator = Arc::new(Correlator::default());
        let assembling = Arc::new(tokio::sync::Mutex::new(()));
        Arc::new(Inbound {
            store,
            accounts,
            id_formats: Arc::new(id_formats),
            correlator,
            live,
            audit,
            queues,
            assembling,
        })
    }

    /// Matches receipts that wait for an id written another way (see [`Correlator`]), every
    /// two seconds until `shutdown`.
    pub async fn retry_parked_receipts(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            match self.correlator.retry_parked(&self.store, now_ms()).await {
                Ok(0) => {}
                Ok(n) => debug!(adopted = n, "parked receipts matched with their id written another way"),
                Err(e) => warn!(error = %e, "retrying parked receipts failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn handle(&self, carrier: &str, sm: ShortMessage) -> u32 {
        if sm.is_receipt() { self.receipt(carrier, &sm).await } else { self.mobile_originated(carrier, &sm).await }
    }

    async fn receipt(&self, carrier: &str, sm: &ShortMessage) -> u32 {
        m::inbound(carrier, "receipt");
        let Some(r) = receipt::parse(sm) else {
            m::receipt(carrier, "unparseable");
            warn!(carrier, "receipt without a message id; acknowledged and dropped");
            return status::OK;
        };
        let format = self.id_formats.get(carrier).copied().unwrap_or_default();
        self.correlator.saw_receipt(carrier, &r.id);
        let mut carrier_message_id = normalize_id(&r.id, format);
        // Not in the configured form: maybe in another writing of the same number.
        match self.store.knows_carrier_id(carrier, &carrier_message_id) {
            Ok(true) => {}
            Ok(false) => match self.correlator.find(&self.store, carrier, r.id.trim()) {
                Ok(Some((_, id))) => carrier_message_id = id,
                Ok(None) => {}
                Err(e) => warn!(carrier, error = %e, "receipt id fallback lookup failed"),
            },
            Err(e) => warn!(carrier, error = %e, "receipt index lookup failed"),
        }
        let op = Op::Receipt { carrier: carrier.to_string(), carrier_message_id, outcome: r.outcome };
        match self.store.commit_one(op).await {
            Ok(OpResult::Updated { status, became_final, created_ms, .. }) => {
                m::receipt(carrier, "matched");
                if became_final {
                    m::finished(carrier, status.as_str());
                    if status != Status::Expired {
                        m::delivered(carrier, now_ms().saturating_sub(created_ms) as f64 / 1000.0);
                    }
                }
                status::OK
            }
            Ok(OpResult::Orphan) => {
                m::receipt(carrier, "orphan");
                debug!(carrier, "receipt kept until its submit_sm_resp is recorded");
                status::OK
            }
            Ok(OpResult::AlreadyFinal(_)) => {
                m::receipt(carrier, "duplicate");
                status::OK
            }
            Ok(_) => {
                m::receipt(carrier, "unknown");
                status::OK
            }
            Err(e) => {
                warn!(carrier, error = %e, "cannot record receipt; asking the SMSC to retry");
                status::SYSTEM_ERROR
            }
        }
    }

    /// An auto-reply from `our_address` to `handset`, sent back through `carrier` first, as
    /// a message of the account that owns `our_address`.
    fn reply(
        &self,
        carrier: &str,
        handset: &E164,
        (our_address, account): (&str, Option<&Account>),
        body: String,
    ) -> Result<Message, crate::store::StoreError> {
        let seq = self.store.next_seq()?;
        let now = now_ms();
        let mut route = vec![carrier.to_string()];
        for c in self.live.config().route(handset.as_str(), Some(our_address), None).unwrap_or_default() {
            if !route.contains(&c) {
                route.push(c);
            }
        }
        let from = (!our_address.is_empty()).then(|| our_address.to_string());
        let content = Content { to: handset.as_str().to_string(), from, body };
        let mut msg = Message::accepted("system", seq, content, route, now, now, 24 * 3600 * 1000);
        if let Some(a) = account {
            msg.account = a.name.clone();
        }
        msg.category = Some("system".into());
        msg.kind = MessageKind::AutoReply;
        msg.history = vec![crate::message::Event::new(Status::Queued, now, Some("auto_reply".into()))];
        msg.sealed = Some(crate::store::seal_content(&self.store.crypto(), &msg));
        Ok(msg)
    }

    async fn mobile_originated(&self, carrier: &str, sm: &ShortMessage) -> u32 {
        m::inbound(carrier, "mo");
        match self.receive_mo(carrier, sm).await {
            Ok(()) => status::OK,
            Err(e) => {
                warn!(carrier, error = %e, "cannot store inbound message; asking the SMSC to retry");
                status::SYSTEM_ERROR
            }
        }
    }

    /// A text on its own is handled now; a part of a long one waits for the rest (see
    /// [`reassembly`]) and the whole is handled when the last part comes.
    async fn receive_mo(&self, carrier: &str, sm: &ShortMessage) -> Result<(), crate::store::StoreError> {
        let config = self.live.config();
        let country = config.carriers.iter().find(|c| c.name == carrier).and_then(|c| c.country.as_deref());
        let from = address(&sm.source.addr, sm.source.ton, country);
        let to = address(&sm.dest.addr, sm.dest.ton, country);
        let Some((segment, data)) = reassembly::segment(sm) else {
            let content = InboundContent { from, to, body: decode_text(sm) };
            return self.store_mo(carrier, content, Assembled::default(), Vec::new()).await;
        };
        let crypto = self.store.crypto().clone();
        let _assembling = self.assembling.lock().await;
        let group = reassembly::group(&crypto.blind_index(&from), &to, segment);
        let key = reassembly::part_key(&group, segment.number);
        let part = reassembly::PartContent { from, to, data_coding: sm.data_coding, data: data.to_vec() };
        let stored = reassembly::StoredPart {
            carrier: carrier.to_string(),
            received_ms: now_ms(),
            sealed: crypto.seal_json(&part, &key),
        };
        let put = Op::Put { value: crate::store::encode(&key, &stored)?, key: key.clone() };
        let mut parts = reassembly::stored(&self.store, &crypto, &group)?;
        parts.retain(|(n, ..)| *n != segment.number);
        if parts.len() + 1 < usize::from(segment.total) {
            debug!(carrier, part = segment.number, of = segment.total, "part of a long inbound text kept");
            return self.store.commit(vec![put]).await.map(|_| ());
        }
        parts.push((segment.number, key, stored, part));
        parts.sort_by_key(|(n, ..)| *n);
        self.release(carrier, &parts, segment.total).await
    }

    /// Handles the text `parts` make (all `total` of them, or what came before the timeout),
    /// removing the stored parts in the same commit.
    async fn release(
        &self,
        carrier: &str,
        parts: &reassembly::Parts,
        total: u8,
    ) -> Result<(), crate::store::StoreError> {
        let Some((_, _, _, first)) = parts.first() else { return Ok(()) };
        let content = InboundContent {
            from: first.from.clone(),
            to: first.to.clone(),
            body: reassembly::join(parts, decode_bytes),
        };
        let done = parts.iter().map(|(_, key, ..)| Op::Delete { key: key.clone() }).collect();
        let assembled = Assembled { parts: Some(total), incomplete: parts.len() < usize::from(total) };
        self.store_mo(carrier, content, assembled, done).await
    }

    /// Releases the long texts whose parts waited longer than the configured timeout, every
    /// second until `shutdown`.
    pub async fn release_overdue_parts(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.release_overdue(now_ms()).await {
                warn!(error = %e, "releasing overdue parts of long inbound texts failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn release_overdue(&self, now: u64) -> Result<(), crate::store::StoreError> {
        let timeout_ms = self.live.config().inbound.reassembly_timeout_secs * 1000;
        let crypto = self.store.crypto().clone();
        for group in reassembly::overdue(&self.store, now.saturating_sub(timeout_ms))? {
            let _assembling = self.assembling.lock().await;
            let parts = reassembly::stored(&self.store, &crypto, &group)?;
            let total = group.len().checked_sub(2).and_then(|i| group.get(i)).copied().unwrap_or(0);
            let carrier = parts.first().map(|(_, _, p, _)| p.carrier.clone()).unwrap_or_default();
            m::inbound(&carrier, "incomplete");
            self.release(&carrier, &parts, total).await?;
        }
        Ok(())
    }

    async fn store_mo(
        &self,
        carrier: &str,
        content: InboundContent,
        assembled: Assembled,
        mut ops: Vec<Op>,
    ) -> Result<(), crate::store::StoreError> {
        let crypto = self.store.crypto().clone();
        let now = now_ms();
        let config = self.live.config();
        let compliance = self.live.compliance();
        let owner = self.accounts.route_inbound(&content.to).and_then(|name| self.accounts.get(&name));
        let account = owner.as_ref().map(|a| a.name.as_str());
        if owner.is_none() {
            m::inbound_unrouted(carrier);
        }
        let keyword = compliance.classify(&content.body);
        let handset = E164::from_trusted(&content.from).ok();
        let idx = crypto.blind_index(&content.from);
        let mut reply = None;
        let (kind, kw, rule) = match &keyword {
            Keyword::OptOut { keyword, rule } => ("optout", Some(keyword.clone()), Some(rule.to_string())),
            Keyword::OptIn(k) => ("optin", Some(k.clone()), None),
            Keyword::Help(k) => ("help", Some(k.clone()), None),
            Keyword::None => ("text", None, None),
        };
        let actor = format!("carrier:{carrier}");
        match &keyword {
            Keyword::OptOut { keyword: k, rule } => {
                let scope = compliance.optout_scope(&content.to, account);
                let key = registry::optout_key(&scope, &idx);
                let existing = self.store.get::<registry::OptOutEntry>(&key)?;
                // One confirmation per opt-out: a repeated STOP is recorded but not answered.
                let confirm = existing.as_ref().is_none_or(|e| !e.confirmation_sent) && handset.is_some();
                let (op, _) = registry::optout_op(
                    &crypto,
                    &content.from,
                    &scope,
                    "keyword",
                    Some(k.clone()),
                    Some(rule.to_string()),
                    (&actor, account),
                    now,
                    confirm || existing.as_ref().is_some_and(|e| e.confirmation_sent),
                )?;
                ops.push(op);
                // A global opt-out also withdraws consent.
                if scope == registry::GLOBAL {
                    ops.push(Op::Delete { key: registry::consent_key(&idx) });
                }
                if confirm {
                    reply = compliance.reply(&keyword, &content.to, owner.as_deref());
                }
                m::optout(k);
                info!(carrier, from = %mask(&content.from), keyword = %k, rule, "opt-out recorded");
            }
            Keyword::OptIn(_) => {
                let scope = compliance.optout_scope(&content.to, account);
                ops.push(Op::Delete { key: registry::optout_key(&scope, &idx) });
                ops.push(registry::consent_op(&crypto, &content.from, "keyword:START", now, &actor, now)?);
                if compliance.reply_allowed("optin", &idx, now) {
                    reply = compliance.reply(&keyword, &content.to, owner.as_deref());
                }
            }
            Keyword::Help(_) => {
                if compliance.reply_allowed("help", &idx, now) {
                    reply = compliance.reply(&keyword, &content.to, owner.as_deref());
                }
            }
            Keyword::None => {}
        }
        let seq = self.store.next_seq()?;
        let key = layout::inbound(seq);
        let record = InboundMessage {
            seq,
            account: account.map(String::from),
            carrier: carrier.to_string(),
            received_ms: now,
            kind: kind.into(),
            keyword: kw.clone(),
            rule: rule.clone(),
            sealed: Some(crypto.seal_json(&content, &key)),
            purged_ms: None,
            parts: assembled.parts,
            incomplete: assembled.incomplete,
            content: InboundContent::default(),
        };
        ops.push(Op::Put { value: crate::store::encode(&key, &record)?, key });
        ops.push(Op::Put { key: crate::store::index::inbound(account, seq), value: Vec::new() });
        let reply_msg = match (reply, &handset) {
            (Some(body), Some(h)) => Some(self.reply(carrier, h, (&content.to, owner.as_deref()), body)?),
            _ => None,
        };
        if let Some(r) = &reply_msg {
            ops.push(Op::Insert(Box::new(r.clone())));
            ops.extend(crate::store::index::message_ops(r, &idx));
        }
        // The owner's webhook; the configured inbound URL stays the `default` account's.
        let url = match &owner {
            Some(a) if a.webhook_url.is_some() => a.webhook_url.clone(),
            Some(a) if a.name == crate::accounts::DEFAULT => config.webhooks.inbound_url.clone(),
            _ => None,
        };
        if let (Some(url), Some(account)) = (url, account) {
            let payload = json!({"event": "inbound", "id": seq.to_string(), "account": account, "carrier": carrier,
                                 "from": content.from, "to": content.to, "body": content.body, "kind": kind,
                                 "received_at": crate::message::rfc3339(now), "parts": assembled.parts,
                                 "incomplete": assembled.incomplete});
            ops.push(crate::store::outbox::inbound_op(&crypto, account, &url, &payload)?);
        }
        self.store.commit(ops).await?;
        if let Some(r) = reply_msg
            && let Some(q) = self.queues.get(r.queue_carrier())
            && let Some(entry) = Entry::new(r.due_ms, r.seq, &r.id, r.expires_ms).map(|e| e.of(&r.account))
        {
            q.push(entry);
        }
        if kind != "text" {
            self.audit.record(
                Event::new(actor, format!("keyword.{kind}"), format!("idx:{idx}"), "recorded")
                    .detail(json!({"keyword": kw, "rule": rule, "inbound_seq": seq, "account": account})),
            );
        }
        Ok(())
    }
}

impl InboundHandler for Inbound {
    fn deliver(&self, carrier: Arc<str>, sm: ShortMessage) -> Pin<Box<dyn Future<Output = u32> + Send>> {
        let this = Inbound {
            store: self.store.clone(),
            accounts: self.accounts.clone(),
            id_formats: self.id_formats.clone(),
            correlator: self.correlator.clone(),
            live: self.live.clone(),
            audit: self.audit.clone(),
            queues: self.queues.clone(),
            assembling: self.assembling.clone(),
        };
        Box::pin(async move { this.handle(&carrier, sm).await })
    }
}

/// The inbound texts routed to `account` (`None`: the unrouted ones) after `after` (a seq),
/// at most `limit`, content opened.
pub fn list(
    store: &Store,
    account: Option<&str>,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<InboundMessage>, crate::store::StoreError> {
    use crate::store::index;
    let prefix = index::inbound_prefix(account);
    let start = match after {
        Some(a) => index::inbound(account, a.saturating_add(1)),
        None => prefix.clone(),
    };
    let end = [prefix.as_slice(), &[0xff; 9]].concat();
    let crypto = store.crypto().clone();
    let mut out = Vec::new();
    for k in store.keys_in(&start, &end, limit, false)? {
        let Some(seq) = index::seq_of(&k) else { continue };
        let key = layout::inbound(seq);
        // Gone with the metadata retention: its index entry goes at the next pass.
        if let Some(mut m) = store.get::<InboundMessage>(&key)? {
            if let Some(s) = &m.sealed {
                m.content = crypto.open_json(s, &key).unwrap_or_default();
            }
            out.push(m);
        }
    }
    Ok(out)
}

/// An address from the carrier in the form the rest of the gateway uses: a phone number in
/// E.164 (national forms read in the carrier's `country`, see [`E164::from_carrier`]), anything
/// else (short codes, alphanumeric senders) as given, `+` restored for TON 1.
fn address(addr: &str, ton: u8, country: Option<&str>) -> String {
    match E164::from_carrier(addr, ton, country) {
        Some(n) => n.as_str().to_string(),
        None if ton == 1 && !addr.starts_with('+') => format!("+{addr}"),
        None => addr.to_string(),
    }
}

/// Decodes an inbound text; a UDH (esm_class 0x40) is skipped.
pub fn decode_text(sm: &ShortMessage) -> String {
    let mut payload: &[u8] = sm.payload();
    if sm.esm_class & 0x40 != 0
        && let Some(&udh_len) = payload.first()
    {
        payload = payload.get(usize::from(udh_len) + 1..).unwrap_or(&[]);
    }
    decode_bytes(payload, sm.data_coding)
}

/// Decodes user data by its `data_coding`.
fn decode_bytes(payload: &[u8], data_coding: u8) -> String {
    match data_coding {
        0x08 => text::ucs2_decode(payload),
        0x03 => text::latin1_decode(payload),
        0x01 => String::from_utf8_lossy(payload).into_owned(),
        dc if dc & 0xF0 == 0xF0 && dc & 0x04 == 0 => text::gsm_decode(payload),
        dc if dc & 0xC0 == 0 && dc & 0x0C == 0x08 => text::ucs2_decode(payload),
        _ => text::gsm_decode(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn inbound_text_decodes_by_data_coding_and_skips_udh() {
        let sm = ShortMessage {
            data_coding: 0,
            short_message: Bytes::from(text::gsm_encode("STOP €").unwrap()),
            ..Default::default()
        };
        assert_eq!(decode_text(&sm), "STOP €");
        let sm = ShortMessage {
            data_coding: 8,
            short_message: Bytes::from(text::ucs2_encode("Alto 👋")),
            ..Default::default()
        };
        assert_eq!(decode_text(&sm), "Alto 👋");
        let mut udh = vec![5, 0, 3, 1, 2, 1];
        udh.extend(text::gsm_encode("part").unwrap());
        let sm = ShortMessage { esm_class: 0x40, short_message: Bytes::from(udh), ..Default::default() };
        assert_eq!(decode_text(&sm), "part");
        let sm = ShortMessage { esm_class: 0x40, short_message: Bytes::from_static(&[200]), ..Default::default() };
        assert_eq!(decode_text(&sm), "");
    }

    #[test]
    fn addresses_become_the_numbers_sends_use() {
        assert_eq!(address("15551234567", 1, None), "+15551234567");
        assert_eq!(address("12345", 3, Some("US")), "12345");
        assert_eq!(address("14155550123", 0, None), "+14155550123");
        assert_eq!(address("4155550123", 0, Some("US")), "+14155550123");
        assert_eq!(address("CLINIC", 5, Some("US")), "CLINIC");
    }
}
