//! Accounts through the whole system (issue 16): two clinics on one gateway, each with its
//! key, senders and signed webhooks; sender pools; inbound routing and the unrouted list;
//! opt-out scopes; long inbound texts; receipt timeouts; search; the admin API; an upgrade
//! from a store written before accounts. Real server, real TLS, the node simulator as the
//! carrier (the built-in one where a test needs 16-bit or SAR concatenation, which the node
//! simulator does not send).

mod common;

use std::collections::{HashMap, HashSet};

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use smsgate::accounts::admin::{AccountAdmin, AccountChanges, NewAccount};
use smsgate::auth::{KeyAdmin, Scope};

const TO: &str = "+14155550123";
const CLINIC: &str = "+14155550100";
const PHARMACY: &str = "+14155550200";

fn loopback() -> smsgate::webhooks::TargetPolicy {
    smsgate::webhooks::TargetPolicy::new(&["127.0.0.0/8".into()]).unwrap()
}

fn webhook_sections(certs: &Certs) -> String {
    format!("[webhooks]\nca_file = \"{}\"\nallow_networks = [\"127.0.0.0/8\"]\n", certs.path("api.crt").display())
}

/// Creates an account with `senders` (and `pools`), its webhooks to `webhook`; returns its
/// webhook secret and a send+read+optouts key.
async fn account(
    gw: &TestGateway,
    name: &str,
    senders: &[&str],
    pools: &[(&str, &[&str])],
    webhook: Option<String>,
) -> (String, String) {
    let admin = AccountAdmin { store: &gw.gateway.store, accounts: &gw.gateway.accounts };
    let new = NewAccount {
        name: name.into(),
        display_name: Some(format!("{name} display")),
        senders: senders.iter().map(|s| s.to_string()).collect(),
        pools: pools.iter().map(|(p, m)| (p.to_string(), m.iter().map(|s| s.to_string()).collect())).collect(),
        webhook_url: webhook,
    };
    let (_, secret) = admin.create(new, &loopback()).await.unwrap();
    let keys = KeyAdmin { store: &gw.gateway.store, ring: &gw.gateway.keys };
    let (_, token) = keys.create(name, "test", vec![Scope::Send, Scope::Read, Scope::Optouts]).await.unwrap();
    (secret, token)
}

fn leak(s: String) -> &'static [u8] {
    Box::leak(s.into_bytes().into_boxed_slice())
}

async fn start(certs: &Certs, port: u16, sections: &str) -> (TestGateway, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let text = config_text(data.path(), certs, port, "") + sections;
    let gw = TestGateway::start(parse_config(&text), certs).await;
    wait_ready(&gw.client, "sim", 1).await;
    (gw, data)
}

async fn inbound_bodies(c: &Client) -> Vec<Value> {
    let r = c.get("/v1/inbound?limit=1000").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    r.json["inbound"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accounts_see_only_their_own_and_sign_with_their_own_secret() {
    let certs = Certs::new();
    let Some(sim) = SimProcess::node(&certs, &[]) else { return };
    let (gw, _data) = start(&certs, sim.tls_port(), &webhook_sections(&certs)).await;
    // Each account's receiver checks signatures with that account's own secret.
    let (clinic_secret, clinic) = account(&gw, "clinic", &[CLINIC], &[], None).await;
    let (pharmacy_secret, pharmacy) = account(&gw, "pharmacy", &[PHARMACY], &[], None).await;
    assert_ne!(clinic_secret, pharmacy_secret, "never one secret for two accounts");
    let clinic_rx = Receiver::start(&certs, leak(clinic_secret), 0).await;
    let pharmacy_rx = Receiver::start(&certs, leak(pharmacy_secret), 0).await;
    let admin = AccountAdmin { store: &gw.gateway.store, accounts: &gw.gateway.accounts };
    for (name, port) in [("clinic", clinic_rx.port), ("pharmacy", pharmacy_rx.port)] {
        let url = format!("https://localhost:{port}/{name}");
        let changes = AccountChanges { webhook_url: Some(url), ..AccountChanges::default() };
        admin.update(name, changes, &loopback()).await.unwrap();
    }
    let (a, b) = (gw.client.with_token(Some(&clinic)), gw.client.with_token(Some(&pharmacy)));

    // A sends from its own number; B cannot read it, find it, cancel it, or send from it.
    let sent = a.post("/v1/messages", &json!({"to": TO, "from": CLINIC, "body": "Your visit is at 10"})).await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.json);
    let id = sent.json["id"].as_str().unwrap().to_string();
    assert_eq!(a.get(&format!("/v1/messages/{id}")).await.status, StatusCode::OK);
    assert_eq!(b.get(&format!("/v1/messages/{id}")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(b.delete(&format!("/v1/messages/{id}")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(b.get("/v1/messages").await.json["messages"], json!([]), "B's search is empty");
    for from in [CLINIC, "pool:reminders", "SOMEONE"] {
        let r = b.post("/v1/messages", &json!({"to": TO, "from": from, "body": "x"})).await;
        assert_eq!(
            (r.status, r.json["error"]["code"].as_str(), r.json["error"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("sender_not_allowed"), Some("from")),
            "from {from}: {}",
            r.json
        );
    }
    // Without `from`, an account's first sender.
    let own = b.post("/v1/messages", &json!({"to": TO, "body": "Your prescription is ready"})).await;
    assert_eq!(own.status, StatusCode::ACCEPTED, "{}", own.json);

    // The patient answers A's number: A lists it, B does not; A's webhook gets it.
    sim.mo(TO, CLINIC, "Running late, sorry").await;
    let listed = inbound_bodies(&a).await;
    assert!(listed.iter().any(|m| m["body"] == "Running late, sorry" && m["to"] == CLINIC), "{listed:?}");
    assert!(inbound_bodies(&b).await.is_empty(), "B sees none of A's texts");
    eventually(PATIENCE, "A's inbound webhook", || {
        clinic_rx.got.lock().unwrap().iter().any(|d| d.event == "inbound" && d.body["account"] == "clinic")
    })
    .await;
    eventually(PATIENCE, "both accounts' status webhooks", || {
        let delivered = |rx: &Receiver| rx.got.lock().unwrap().iter().any(|d| d.body["status"] == "delivered");
        delivered(&clinic_rx) && delivered(&pharmacy_rx)
    })
    .await;
    for (rx, name) in [(&clinic_rx, "clinic"), (&pharmacy_rx, "pharmacy")] {
        let got = rx.got.lock().unwrap();
        assert!(got.iter().all(|d| d.valid), "{name}: every webhook signed with its own account's secret");
        assert!(got.iter().all(|d| d.path == format!("/{name}")), "{name}: only its own webhooks");
    }
    assert!(
        pharmacy_rx.got.lock().unwrap().iter().all(|d| d.event != "inbound"),
        "B's receiver never hears A's patient"
    );
    // B's opt-out listing does not show A's patient's opt-out.
    sim.mo(TO, CLINIC, "STOP").await;
    let a_list = a.get("/v1/opt-outs").await.json["opt_outs"].as_array().cloned().unwrap_or_default();
    assert!(a_list.iter().any(|o| o["number"] == TO), "{a_list:?}");
    assert_eq!(b.get("/v1/opt-outs").await.json["opt_outs"], json!([]));
    // ... though it blocks B's sends (global scope), and B may not lift it.
    let blocked = b.post("/v1/messages", &json!({"to": TO, "body": "x"})).await;
    assert_eq!(blocked.json["error"]["code"], "recipient_opted_out", "{}", blocked.json);
    let lift = b.delete(&format!("/v1/opt-outs/{}?override=patient_stop&reason=asked", "%2B14155550123")).await;
    assert_eq!(lift.status, StatusCode::NOT_FOUND, "{}", lift.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_keeps_each_patient_on_one_sender_and_spreads_new_ones() {
    let certs = Certs::new();
    let Some(sim) = SimProcess::node(&certs, &[]) else { return };
    let (gw, _data) = start(&certs, sim.tls_port(), "").await;
    let senders = ["+14155550301", "+14155550302", "+14155550303"];
    let (_, token) = account(&gw, "clinic", &senders, &[("reminders", &senders)], None).await;
    let c = gw.client.with_token(Some(&token));
    let recipients: Vec<String> = (0..30).map(|i| format!("+1415555{:04}", 2000 + i)).collect();
    let mut ids = Vec::new();
    for round in 0..5 {
        for to in &recipients {
            let r =
                c.post("/v1/messages", &json!({"to": to, "from": "pool:reminders", "body": format!("r{round}")})).await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
            ids.push(r.json["id"].as_str().unwrap().to_string());
        }
    }
    c.wait_status(&ids, std::time::Duration::from_secs(60), &["delivered"]).await;
    let mut senders_of: HashMap<String, HashSet<String>> = HashMap::new();
    for r in sim.records().iter().filter(|r| r["text"].as_str().is_some_and(|t| t.starts_with('r'))) {
        let (to, from) = (r["destination"].as_str().unwrap(), r["source"].as_str().unwrap());
        senders_of.entry(to.to_string()).or_default().insert(from.to_string());
    }
    assert_eq!(senders_of.len(), 30, "every recipient reached");
    assert!(senders_of.values().all(|s| s.len() == 1), "one sender per recipient across 5 sends: {senders_of:?}");
    let mut per_sender: HashMap<&String, usize> = HashMap::new();
    for s in senders_of.values() {
        *per_sender.entry(s.iter().next().unwrap()).or_default() += 1;
    }
    assert_eq!(per_sender.len(), 3, "{per_sender:?}");
    assert!(per_sender.values().all(|n| (8..=12).contains(n)), "spread within ±2 of 10: {per_sender:?}");
    // A pool that does not exist, and a pool sender used directly, are the account's choice.
    let r = c.post("/v1/messages", &json!({"to": TO, "from": "pool:other", "body": "x"})).await;
    assert_eq!(r.json["error"]["code"], "sender_not_allowed");
    let r = c.post("/v1/messages", &json!({"to": TO, "from": senders[1], "body": "x"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
}

/// A STOP to A's number, then a send from B: refused under `global`, sent under `account`.
async fn stop_then_other_account_sends(scope: &str) -> Option<(StatusCode, StatusCode)> {
    let certs = Certs::new();
    let sim = SimProcess::node(&certs, &[])?;
    let (gw, _data) = start(&certs, sim.tls_port(), &format!("[compliance]\noptout_scope = \"{scope}\"\n")).await;
    let (_, clinic) = account(&gw, "clinic", &[CLINIC], &[], None).await;
    let (_, pharmacy) = account(&gw, "pharmacy", &[PHARMACY], &[], None).await;
    sim.mo(TO, CLINIC, "STOP").await;
    let (a, b) = (gw.client.with_token(Some(&clinic)), gw.client.with_token(Some(&pharmacy)));
    let from_a = a.post("/v1/messages", &json!({"to": TO, "body": "x"})).await;
    let from_b = b.post("/v1/messages", &json!({"to": TO, "body": "x"})).await;
    // The confirmation went out from the number texted, naming the clinic.
    until(PATIENCE, "the opt-out confirmation", || async {
        sim.records().iter().any(|r| {
            r["source"] == CLINIC.trim_start_matches('+')
                && r["text"].as_str().is_some_and(|t| t.starts_with("clinic display:"))
        })
    })
    .await;
    Some((from_a.status, from_b.status))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_blocks_every_account_in_global_scope_and_only_its_own_in_account_scope() {
    let Some(global) = stop_then_other_account_sends("global").await else { return };
    assert_eq!(global, (StatusCode::UNPROCESSABLE_ENTITY, StatusCode::UNPROCESSABLE_ENTITY));
    let Some(account) = stop_then_other_account_sends("account").await else { return };
    assert_eq!(account, (StatusCode::UNPROCESSABLE_ENTITY, StatusCode::ACCEPTED));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_inbound_texts_are_one_record_and_keywords_read_the_whole() {
    let certs = Certs::new();
    let sim = SimProcess::builtin(&certs, &[]);
    let (gw, _data) = start(&certs, sim.tls_port(), "[inbound]\nreassembly_timeout_secs = 2\n").await;
    let (_, token) = account(&gw, "clinic", &[CLINIC], &[], None).await;
    let c = gw.client.with_token(Some(&token));
    let long = "Thanks for the reminder. I will be there at ten but may be a few minutes late because of the \
                school run; please tell the doctor. Also, can I bring my daughter along to the appointment?";
    // `message_payload` carries a long text whole, in one PDU.
    let whole = "+14155553020";
    sim.control(Method::POST, "/mo", Some(json!({"from": whole, "to": CLINIC, "text": long, "concat": "payload"})))
        .await;
    let got: Vec<Value> = inbound_bodies(&c).await.into_iter().filter(|m| m["from"] == whole).collect();
    assert_eq!((got.len(), got[0]["body"].as_str(), got[0].get("parts")), (1, Some(long), None));
    for (n, concat) in ["udh8", "udh16", "sar"].iter().enumerate() {
        let from = format!("+1415555300{n}");
        let r = sim
            .control(Method::POST, "/mo", Some(json!({"from": from, "to": CLINIC, "text": long, "concat": concat})))
            .await;
        assert_eq!(r["parts"], 2, "{r}");
        let three = sim
            .control(Method::POST, "/mo", Some(json!({"from": from, "to": CLINIC, "text": "x", "concat": concat, "parts": ["one ", "two ", "three"]})))
            .await;
        assert_eq!(three["command_status"], json!([0, 0, 0]), "{three}");
        let got: Vec<Value> = inbound_bodies(&c).await.into_iter().filter(|m| m["from"] == from).collect();
        assert_eq!(got.len(), 2, "{concat}: one record per text: {got:?}");
        assert_eq!((got[0]["body"].as_str(), got[0]["parts"].as_u64()), (Some(long), Some(2)), "{concat}");
        assert_eq!((got[1]["body"].as_str(), got[1]["parts"].as_u64()), (Some("one two three"), Some(3)), "{concat}");
        assert_eq!(got[1]["incomplete"], false);
    }
    // "STOP" split over two parts: the first alone triggers nothing; the whole is an opt-out.
    let handset = "+14155553010";
    let split = json!({"from": handset, "to": CLINIC, "text": "x", "parts": ["ST", "OP"], "reference": 77});
    let mut first = split.clone();
    first["only"] = json!([1]);
    sim.control(Method::POST, "/mo", Some(first)).await;
    assert!(inbound_bodies(&c).await.iter().all(|m| m["from"] != handset), "a lone part is not a text yet");
    let mut second = split.clone();
    second["only"] = json!([2]);
    sim.control(Method::POST, "/mo", Some(second)).await;
    let stop: Vec<Value> = inbound_bodies(&c).await.into_iter().filter(|m| m["from"] == handset).collect();
    assert_eq!((stop.len(), stop[0]["kind"].as_str(), stop[0]["body"].as_str()), (1, Some("optout"), Some("STOP")));
    let blocked = c.post("/v1/messages", &json!({"to": handset, "body": "x"})).await;
    assert_eq!(blocked.json["error"]["code"], "recipient_opted_out");
    // "stop" inside a long text is not an opt-out (reasonable means: a short request).
    let chatty = "+14155553011";
    let text =
        "Please do not stop sending me these reminders, they really help me keep track of my visits and I like them";
    sim.control(
        Method::POST,
        "/mo",
        Some(
            json!({"from": chatty, "to": CLINIC, "text": text, "concat": "udh16", "parts": [&text[..50], &text[50..]]}),
        ),
    )
    .await;
    let kept: Vec<Value> = inbound_bodies(&c).await.into_iter().filter(|m| m["from"] == chatty).collect();
    assert_eq!((kept[0]["kind"].as_str(), kept[0]["body"].as_str()), (Some("text"), Some(text)));
    // Parts that never all come are released after the timeout, marked incomplete.
    let partial = "+14155553012";
    let some =
        json!({"from": partial, "to": CLINIC, "text": "x", "parts": ["alpha ", "beta ", "gamma"], "only": [1, 3]});
    sim.control(Method::POST, "/mo", Some(some)).await;
    until(PATIENCE, "the incomplete text released", || async {
        inbound_bodies(&c).await.iter().any(|m| m["from"] == partial)
    })
    .await;
    let released: Vec<Value> = inbound_bodies(&c).await.into_iter().filter(|m| m["from"] == partial).collect();
    assert_eq!(
        (released[0]["body"].as_str(), released[0]["parts"].as_u64(), released[0]["incomplete"].as_bool()),
        (Some("alpha gamma"), Some(3), Some(true))
    );
    assert_eq!(gw.gateway.store.key_count(smsgate::inbound::reassembly::PARTS).unwrap(), 0, "no part left waiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_receipt_in_time_is_unknown_and_a_late_receipt_still_delivers() {
    let certs = Certs::new();
    let Some(sim) = SimProcess::node(&certs, &["--dlr-delay-ms", "5000"]) else { return };
    let data = tempfile::tempdir().unwrap();
    let text = config_text(data.path(), &certs, sim.tls_port(), "receipt_timeout_secs = 2");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    wait_ready(&gw.client, "sim", 1).await;
    let r = gw.client.post("/v1/messages", &json!({"to": TO, "body": "Your results are ready in the portal"})).await;
    let id = r.json["id"].as_str().unwrap().to_string();
    let unknown = gw.client.wait_message(&id, PATIENCE, |m| m["status"] == "unknown").await;
    assert_eq!(unknown["error"]["code"], "receipt_timeout", "{unknown}");
    let delivered = gw.client.wait_message(&id, PATIENCE, |m| m["status"] == "delivered").await;
    let history: Vec<&str> =
        delivered["history"].as_array().unwrap().iter().filter_map(|e| e["status"].as_str()).collect();
    assert!(history.ends_with(&["submitted", "unknown", "delivered"]), "{history:?}");
    let found = gw.client.get("/v1/messages?status=delivered").await;
    assert_eq!(found.json["messages"][0]["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_by_recipient_and_status_pages_newest_first() {
    let certs = Certs::new();
    let Some(sim) = SimProcess::node(&certs, &[]) else { return };
    let (gw, _data) = start(&certs, sim.tls_port(), "").await;
    let (_, token) = account(&gw, "clinic", &[CLINIC], &[], None).await;
    let c = gw.client.with_token(Some(&token));
    let (x, y) = ("+14155554001", "+14155554002");
    let mut to_x = Vec::new();
    for i in 0..5 {
        let r =
            c.post("/v1/messages", &json!({"to": x, "body": format!("x{i}"), "client_ref": format!("appt-{i}")})).await;
        to_x.push(r.json["id"].as_str().unwrap().to_string());
    }
    let mut all = to_x.clone();
    for i in 0..3 {
        let r = c.post("/v1/messages", &json!({"to": y, "body": format!("y{i}")})).await;
        all.push(r.json["id"].as_str().unwrap().to_string());
    }
    c.wait_status(&all, PATIENCE, &["delivered"]).await;
    // By recipient, two per page, newest first, until `next` is null.
    let (mut seen, mut cursor) = (Vec::new(), String::new());
    loop {
        let page = c.get(&format!("/v1/messages?to=%2B14155554001&limit=2{cursor}")).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.json);
        for m in page.json["messages"].as_array().unwrap() {
            assert_eq!(m["to"], "+1415***4001");
            seen.push(m["id"].as_str().unwrap().to_string());
        }
        match page.json["next"].as_str() {
            Some(n) => cursor = format!("&cursor={n}"),
            None => break,
        }
    }
    let newest_first: Vec<String> = to_x.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    let delivered = c.get("/v1/messages?status=delivered&limit=100").await;
    assert_eq!(delivered.json["messages"].as_array().unwrap().len(), 8);
    assert_eq!(c.get("/v1/messages?status=queued").await.json["messages"], json!([]));
    let by_ref = c.get("/v1/messages?client_ref=appt-3").await;
    assert_eq!(by_ref.json["messages"][0]["id"], to_x[3].as_str());
    let since = c.get("/v1/messages?since=2099-01-01T00:00:00Z").await;
    assert_eq!(since.json["messages"], json!([]));
    for bad in ["status=sent", "to=4155554001", "since=yesterday", "cursor=zz", "limit=0", "colour=red"] {
        let r = c.get(&format!("/v1/messages?{bad}")).await;
        assert_eq!(
            (r.status, r.json["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_field")),
            "{bad}"
        );
    }
    // The CSV export masks numbers unless --unmask, which the audit trail records.
    let config = certs.path("export.toml");
    let text = config_text(_data.path(), &certs, sim.tls_port(), "");
    std::fs::write(&config, text).unwrap();
    let csv = certs.path("export.csv");
    let args = |unmask: bool| {
        let mut a: Vec<std::ffi::OsString> =
            ["messages", "export", "--account", "clinic", "--out"].iter().map(Into::into).collect();
        a.push(csv.clone().into());
        a.extend(["--config".into(), config.clone().into_os_string()]);
        if unmask {
            a.push("--unmask".into());
        }
        a
    };
    let (status, _, err) = smsgate(&args(false).iter().map(|s| s.as_os_str()).collect::<Vec<_>>());
    assert!(status.success(), "{err}");
    let masked = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(masked.lines().count(), 9, "a header and 8 messages:\n{masked}");
    assert!(masked.contains("+1415***4001") && !masked.contains("+14155554001"));
    std::fs::remove_file(&csv).unwrap();
    let (status, _, err) = smsgate(&args(true).iter().map(|s| s.as_os_str()).collect::<Vec<_>>());
    assert!(status.success(), "{err}");
    assert!(std::fs::read_to_string(&csv).unwrap().contains("+14155554001"));
    let audit = [
        std::ffi::OsStr::new("audit"),
        "export".as_ref(),
        "--out".as_ref(),
        "-".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ];
    until(PATIENCE, "the unmasked export in the audit trail", || async {
        let (_, out, _) = smsgate(&audit);
        out.lines().any(|l| l.contains("admin.messages_export") && l.contains("account:clinic numbers:unmasked"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_manage_accounts_over_the_admin_api_and_see_unrouted_texts() {
    let certs = Certs::new();
    let Some(sim) = SimProcess::node(&certs, &[]) else { return };
    let (gw, _data) = start(&certs, sim.tls_port(), "").await;
    let admin = gw.client.with_token(Some(&gw.key(vec![Scope::Admin]).await));
    let plain = gw.client.with_token(Some(&gw.key(vec![Scope::Send, Scope::Read]).await));
    assert_eq!(plain.get("/v1/admin/accounts").await.status, StatusCode::FORBIDDEN);

    let made = admin
        .post(
            "/v1/admin/accounts",
            &json!({"name": "eastside", "display_name": "Eastside Clinic", "senders": [CLINIC]}),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.json);
    assert_eq!(made.json["webhook_secret"].as_str().map(str::len), Some(64), "shown once, at creation");
    let again = admin.post("/v1/admin/accounts", &json!({"name": "eastside"})).await;
    assert_eq!((again.status, again.json["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("account_exists")));
    let taken = admin.post("/v1/admin/accounts", &json!({"name": "westside", "senders": [CLINIC]})).await;
    assert_eq!(taken.json["error"]["code"], "sender_taken", "{}", taken.json);
    let bad = admin.post("/v1/admin/accounts", &json!({"name": "Bad Name!"})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let unknown = admin.post("/v1/admin/accounts", &json!({"name": "x", "colour": "red"})).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{}", unknown.json);
    assert_eq!(
        admin.get("/v1/admin/accounts").await.json["accounts"].as_array().unwrap().len(),
        2,
        "default and eastside"
    );

    let added = admin.post("/v1/admin/accounts/eastside/senders", &json!({"senders": ["+14155550111"]})).await;
    assert_eq!(added.json["senders"], json!([CLINIC, "+14155550111"]), "{}", added.json);
    let removed = admin.delete("/v1/admin/accounts/eastside/senders/%2B14155550111").await;
    assert_eq!(removed.json["senders"], json!([CLINIC]));
    let key = admin.post("/v1/admin/accounts/eastside/keys", &json!({"name": "app", "scopes": ["send", "read"]})).await;
    assert_eq!(key.status, StatusCode::CREATED, "{}", key.json);
    let east = gw.client.with_token(key.json["token"].as_str());
    assert_eq!(east.post("/v1/messages", &json!({"to": TO, "body": "hi"})).await.status, StatusCode::ACCEPTED);
    assert_eq!(admin.get("/v1/admin/accounts/eastside/keys").await.json["keys"].as_array().unwrap().len(), 1);
    // Disabled: its keys are refused.
    let off = admin
        .raw(
            Method::PATCH,
            "/v1/admin/accounts/eastside",
            &[("content-type", "application/json")],
            r#"{"disabled": true}"#.into(),
        )
        .await;
    assert_eq!(off.status, StatusCode::OK, "{}", off.json);
    let refused = east.post("/v1/messages", &json!({"to": TO, "body": "hi"})).await;
    assert_eq!(
        (refused.status, refused.json["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("account_disabled"))
    );

    // The default account stops taking unowned addresses: a text to one is unrouted.
    let restrict = admin
        .raw(
            Method::PATCH,
            "/v1/admin/accounts/default",
            &[("content-type", "application/json")],
            r#"{"any_sender": false}"#.into(),
        )
        .await;
    assert_eq!(restrict.status, StatusCode::OK, "{}", restrict.json);
    sim.mo(TO, "+14155559999", "Who is this?").await;
    let unrouted = admin.get("/v1/admin/unrouted").await;
    assert_eq!(unrouted.json["inbound"][0]["body"], "Who is this?", "{}", unrouted.json);
    assert_eq!(plain.get("/v1/inbound").await.json["inbound"], json!([]));
    let metrics = http_text(gw.gateway.metrics_addr, "/metrics").await;
    assert_eq!(metric(&metrics, "smsgate_inbound_unrouted_total{carrier=\"sim\"}"), Some(1.0));
    assert!(metrics.contains("smsgate_messages_accepted_total{account=\"eastside\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_from_before_accounts_keeps_every_key_and_record() {
    use smsgate::store::{Op, Store};
    let certs = Certs::new();
    let Some(sim) = SimProcess::node(&certs, &[]) else { return };
    let data = tempfile::tempdir().unwrap();
    let text = config_text(data.path(), &certs, sim.tls_port(), "");
    let config = parse_config(&text);
    // What the version before accounts wrote: a key, a message and an inbound text without
    // any account field.
    let (token, message_id, writer) = {
        let crypto = std::sync::Arc::new(config.crypto.load().unwrap());
        let store = Store::open(data.path(), &Default::default(), crypto.clone()).unwrap();
        let (key, token) = smsgate::auth::generate("default", "old", vec![Scope::Send, Scope::Read]);
        let mut key_json = serde_json::to_value(&key).unwrap();
        key_json.as_object_mut().unwrap().remove("account");
        let request = smsgate::api::send::parse(
            &json!({"to": TO, "body": "from before"}),
            smsgate::api::send::Limits { max_body_chars: 1600 },
        )
        .unwrap();
        let mut msg = smsgate::api::send::build_message(request, (&key.id, "default"), 1, vec!["sim".into()], 3600);
        msg.sealed = Some(smsgate::store::seal_content(&crypto, &msg));
        msg.status = smsgate::message::Status::Delivered;
        let mut msg_json = serde_json::to_value(&msg).unwrap();
        msg_json.as_object_mut().unwrap().remove("account");
        let inbound_key = smsgate::store::layout::inbound(7);
        let content =
            smsgate::inbound::InboundContent { from: TO.into(), to: "12345".into(), body: "old reply".into() };
        let inbound = json!({"seq": 7, "carrier": "sim", "received_ms": 1_795_000_000_000u64, "kind": "text",
                             "sealed": crypto.seal_json(&content, &inbound_key)});
        let put = |key: Vec<u8>, v: &Value| Op::Put { key, value: serde_json::to_vec(v).unwrap() };
        store
            .commit(vec![
                put([b"k/".as_slice(), key.id.as_bytes()].concat(), &key_json),
                put(smsgate::store::layout::message(&msg.id), &msg_json),
                put(inbound_key, &inbound),
            ])
            .await
            .unwrap();
        store.flush().unwrap();
        (token, msg.id.clone(), store.writer_stats())
    };
    // The writer thread releases the files once the last handle is gone.
    while !writer.exited.load(std::sync::atomic::Ordering::Acquire) {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let gw = TestGateway::start(config, &certs).await;
    wait_ready(&gw.client, "sim", 1).await;
    let old = gw.client.with_token(Some(&token));
    let m = old.get(&format!("/v1/messages/{message_id}")).await;
    assert_eq!((m.status, m.json["status"].as_str()), (StatusCode::OK, Some("delivered")), "{}", m.json);
    assert!(
        inbound_bodies(&old).await.iter().any(|i| i["body"] == "old reply"),
        "the old inbound text is the default account's"
    );
    until(PATIENCE, "the old message indexed for search", || async {
        old.get("/v1/messages").await.json["messages"]
            .as_array()
            .is_some_and(|v| v.iter().any(|m| m["id"] == message_id.as_str()))
    })
    .await;
    let sent = old.post("/v1/messages", &json!({"to": TO, "body": "after the upgrade"})).await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_fills_only_its_share_of_the_queue_also_after_a_restart() {
    let certs = Certs::new();
    // No carrier listens: everything accepted stays queued.
    let nobody = Reserved::new();
    let data = tempfile::tempdir().unwrap();
    let text = config_text(data.path(), &certs, nobody.port(), "") + "[queue]\nmax_depth = 200\n";
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    let (_, clinic) = account(&gw, "clinic", &[CLINIC], &[], None).await;
    let (_, pharmacy) = account(&gw, "pharmacy", &[PHARMACY], &[], None).await;
    let admin = AccountAdmin { store: &gw.gateway.store, accounts: &gw.gateway.accounts };
    let changes = AccountChanges { queue_share: Some(2), ..AccountChanges::default() };
    admin.update("clinic", changes, &loopback()).await.unwrap();
    let (a, b) = (gw.client.with_token(Some(&clinic)), gw.client.with_token(Some(&pharmacy)));
    let send = |c: Client| async move { c.post("/v1/messages", &json!({"to": TO, "body": "x"})).await };
    for _ in 0..4 {
        assert_eq!(send(a.clone()).await.status, StatusCode::ACCEPTED, "2 % of 200 is 4");
    }
    let full = send(a.clone()).await;
    assert_eq!((full.status, full.json["error"]["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("queue_full")));
    assert_eq!(send(b.clone()).await.status, StatusCode::ACCEPTED, "the others' share is untouched");
    gw.gateway.shutdown().await;
    // After a restart the queue is read back with each entry's account.
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    let a = gw.client.with_token(Some(&clinic));
    assert_eq!(send(a).await.json["error"]["code"], "queue_full");
}
