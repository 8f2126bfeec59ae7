//! Healthcare compliance through the whole system: keywords from a handset (node simulator's
//! `POST /mo`), opt-out blocking at accept and dispatch, consent, quiet hours, frequency caps,
//! PHI content rules, encryption at rest (a byte scan of the data directory), the audit chain,
//! signed webhooks to a real HTTPS receiver, retention, data-key rotation.

mod common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use smsgate::auth::Scope;
use smsgate::sim::SimConfig;

const TO: &str = "+14155550123";

async fn send(c: &Client, body: Value) -> Answer {
    c.post("/v1/messages", &body).await
}

/// A text from the handset; returns once smsgate acknowledged it (stored, keyword applied).
async fn mo(sim: &SimProcess, text: &str) -> Value {
    sim.mo(TO, "12345", text).await
}

/// Waits until a text containing `needle` reached the handset.
async fn handset_gets(sim: &SimProcess, needle: &str) {
    until(PATIENCE, &format!("'{needle}' at the handset"), || async {
        texts_to_handset(sim).iter().any(|t| t.contains(needle))
    })
    .await;
}

/// Texts the simulator received addressed to the handset.
fn texts_to_handset(sim: &SimProcess) -> Vec<String> {
    sim.records()
        .iter()
        .filter(|r| r["destination"] == "14155550123")
        .filter_map(|r| r["text"].as_str().map(String::from))
        .collect()
}

async fn gateway_with(certs: &Certs, port: u16, extra_sections: &str) -> (TestGateway, tempfile::TempDir, String) {
    let data = tempfile::tempdir().unwrap();
    let text = config_text(data.path(), certs, port, "default_source = \"12345\"") + extra_sections;
    let gw = TestGateway::start(parse_config(&text), certs).await;
    let key = gw.key(vec![Scope::Send, Scope::Read, Scope::Optouts]).await;
    // Bound before a test injects a handset's text (the SMSC needs a session to send it on).
    wait_ready(&gw.client, "sim", 1).await;
    (gw, data, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_from_a_handset_blocks_and_start_resumes() {
    let certs = Certs::new();
    let Some(sim) = SimProcess::node(&certs, &[]) else { return };
    let (gw, _data, key) = gateway_with(&certs, sim.tls_port(), "").await;
    let c = gw.client.with_token(Some(&key));
    // A message scheduled before the STOP is blocked at dispatch.
    let later = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_secs(3)).unwrap();
    let queued = send(&c, json!({"to": TO, "body": "queued before the STOP", "send_at": later.to_string()})).await;
    assert_eq!(queued.status, StatusCode::ACCEPTED);

    let r = mo(&sim, "Stop").await;
    assert_eq!(r["command_status"][0].as_u64(), Some(0), "{r}");
    // One confirmation reply reaches the handset.
    handset_gets(&sim, "unsubscribed").await;
    // New sends are refused.
    let a = send(&c, json!({"to": TO, "body": "after the STOP"})).await;
    assert_eq!(
        (a.status, a.json["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("recipient_opted_out"))
    );
    // A second STOP is recorded but not answered again (checked below, once a later reply
    // has arrived: a second confirmation would have been queued before it).
    mo(&sim, "STOP").await;
    // The scheduled one is blocked when its time comes.
    let id = queued.json["id"].as_str().unwrap();
    let m = c.wait_message(id, PATIENCE, |m| m["status"] == "blocked").await;
    assert_eq!(
        (m["status"].as_str(), m["error"]["code"].as_str()),
        (Some("blocked"), Some("recipient_opted_out")),
        "{m}"
    );
    assert!(!texts_to_handset(&sim).iter().any(|t| t.contains("queued before")));

    // The registry shows it, with how it came.
    let g = c.get("/v1/opt-outs/%2B14155550123").await;
    assert_eq!(g.status, StatusCode::OK, "{}", g.json);
    assert_eq!(
        (g.json["opt_outs"][0]["source"].as_str(), g.json["opt_outs"][0]["keyword"].as_str()),
        (Some("keyword"), Some("STOP"))
    );
    // START resumes.
    mo(&sim, "start").await;
    handset_gets(&sim, "subscribed again").await;
    assert_eq!(
        texts_to_handset(&sim).iter().filter(|t| t.contains("unsubscribed")).count(),
        1,
        "one confirmation only"
    );
    let a = send(&c, json!({"to": TO, "body": "welcome back"})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
    let m = c.wait_message(a.json["id"].as_str().unwrap(), PATIENCE, |m| m["status"] == "delivered").await;
    assert_eq!(m["status"], "delivered");
    // Inbound texts are listed with their keyword.
    let inbound = c.get("/v1/inbound").await.json;
    let kinds: Vec<&str> = inbound["inbound"].as_array().unwrap().iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["optout", "optout", "optin"]);
    assert_eq!(inbound["inbound"][0]["from"], TO);
    gw.gateway.shutdown().await;
    // The audit trail has the keyword events, without the number.
    let audit = std::fs::read_to_string(smsgate::audit::log_path(_data.path())).unwrap();
    assert!(audit.contains("keyword.optout") && audit.contains("keyword.optin"));
    assert!(!audit.contains("4155550123"), "numbers never in the audit trail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasonable_opt_outs_and_rate_limited_help() {
    let certs = Certs::new();
    let Some(sim) = SimProcess::node(&certs, &[]) else { return };
    let (gw, _data, key) = gateway_with(&certs, sim.tls_port(), "").await;
    let c = gw.client.with_token(Some(&key));
    mo(&sim, "help").await;
    mo(&sim, "HELP").await;
    mo(&sim, "please stop texting me").await;
    // The opt-out confirmation comes after whatever the two HELPs produced.
    handset_gets(&sim, "unsubscribed").await;
    let help = texts_to_handset(&sim).iter().filter(|t| t.contains("Reply STOP")).count();
    assert_eq!(help, 1, "HELP replies are rate-limited per number");
    let g = c.get("/v1/opt-outs/%2B14155550123").await;
    assert_eq!(g.json["opt_outs"][0]["rule"], "reasonable", "{}", g.json);
    mo(&sim, "I will stop by the clinic at noon").await;
    let inbound = c.get("/v1/inbound").await.json;
    let kinds: Vec<&str> = inbound["inbound"].as_array().unwrap().iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["help", "help", "optout", "text"], "{inbound}");
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_replies_are_rate_limited_like_help() {
    let certs = Certs::new();
    let Some(sim) = SimProcess::node(&certs, &[]) else { return };
    let (gw, _data, key) = gateway_with(&certs, sim.tls_port(), "").await;
    let c = gw.client.with_token(Some(&key));
    mo(&sim, "START").await;
    mo(&sim, "start").await;
    mo(&sim, "unstop").await;
    // The opt-out confirmation comes after whatever the three STARTs produced.
    mo(&sim, "STOP").await;
    handset_gets(&sim, "unsubscribed").await;
    let confirmations = texts_to_handset(&sim).iter().filter(|t| t.contains("subscribed again")).count();
    assert_eq!(confirmations, 1, "START replies are rate-limited per number");
    let inbound = c.get("/v1/inbound").await.json;
    let kinds: Vec<&str> = inbound["inbound"].as_array().unwrap().iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["optin", "optin", "optin", "optout"], "every START is still recorded: {inbound}");
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_form_of_a_number_reaches_the_registry_as_the_number_sends_use() {
    let certs = Certs::new();
    let Some(sim) = SimProcess::node(&certs, &[]) else { return };
    let data = tempfile::tempdir().unwrap();
    let text = config_text(data.path(), &certs, sim.tls_port(), "default_source = \"12345\"\ncountry = \"US\"");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    let key = gw.key(vec![Scope::Send, Scope::Read, Scope::Optouts]).await;
    wait_ready(&gw.client, "sim", 1).await;
    let c = gw.client.with_token(Some(&key));
    let blocked = |to: &'static str| {
        let c = c.clone();
        async move {
            let a = send(&c, json!({"to": to, "body": "appointment tomorrow"})).await;
            (a.status, a.json["error"]["code"].as_str().unwrap_or_default().to_string())
        }
    };
    let opted_out = (StatusCode::UNPROCESSABLE_ENTITY, "recipient_opted_out".to_string());
    // The carrier gives the handset as 14155550147 with TON 0 (the simulator sends digits so).
    sim.mo("14155550147", "12345", "STOP").await;
    assert_eq!(blocked("+14155550147").await, opted_out, "TON 0 with the country code");
    // …or in the national form, read in the carrier's country.
    sim.mo("4155550148", "12345", "STOP").await;
    assert_eq!(blocked("+14155550148").await, opted_out, "national form, carrier country US");
    // Through the API, written as people write numbers.
    let put = c.raw(Method::PUT, "/v1/opt-outs/%2B1%20(415)%20555-0149", &[], Bytes::new()).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.json);
    assert_eq!(put.json["number"], "+14155550149");
    assert_eq!(blocked("+14155550149").await, opted_out, "API form with separators");
    assert_eq!(c.get("/v1/opt-outs/%2B14155550149").await.status, StatusCode::OK);
    // A number no plan allows is refused, not stored as a prefix that blocks nothing.
    let short = c.raw(Method::PUT, "/v1/opt-outs/%2B1415", &[], Bytes::new()).await;
    assert_eq!((short.status, short.json["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("e164")));

    // A STOP the patient texted is not lifted through the API by accident…
    let d = c.raw(Method::DELETE, "/v1/opt-outs/%2B14155550147", &[], Bytes::new()).await;
    assert_eq!((d.status, d.json["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("patient_opt_out")));
    let d = c.raw(Method::DELETE, "/v1/opt-outs/%2B14155550147?override=patient_stop", &[], Bytes::new()).await;
    assert_eq!(d.status, StatusCode::CONFLICT, "an override needs its reason");
    assert_eq!(blocked("+14155550147").await, opted_out);
    // …only with an explicit override and its reason, which the audit trail keeps.
    let d = c
        .raw(
            Method::DELETE,
            "/v1/opt-outs/%2B14155550147?override=patient_stop&reason=signed%20consent%20form%20at%20the%20front%20desk",
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.json);
    assert_eq!(blocked("+14155550147").await.0, StatusCode::ACCEPTED);
    // An opt-out recorded through the API is the operator's to remove.
    let d = c.raw(Method::DELETE, "/v1/opt-outs/%2B14155550149", &[], Bytes::new()).await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.json);
    gw.gateway.shutdown().await;
    let audit = std::fs::read_to_string(smsgate::audit::log_path(data.path())).unwrap();
    let overridden: Vec<&str> =
        audit.lines().filter(|l| l.contains("optout.delete") && l.contains("patient_stop")).collect();
    assert_eq!(overridden.len(), 1, "{audit}");
    assert!(overridden[0].contains("signed consent form at the front desk"));
    assert!(!audit.contains("4155550147"), "no numbers in the audit trail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_scoped_opt_outs_hold_for_sends_without_a_from() {
    let certs = Certs::new();
    let sim = TestSim::start(&certs, SimConfig::default(), None).await;
    let (gw, _data, key) = gateway_with(&certs, sim.tls_port(), "[compliance]\noptout_scope = \"sender\"\n").await;
    let c = gw.client.with_token(Some(&key));
    // The patient opted out of 12345, the carrier's default source.
    let put = c
        .raw(
            Method::PUT,
            "/v1/opt-outs/%2B14155550123",
            &[("content-type", "application/json")],
            Bytes::from(json!({"scope": "12345"}).to_string()),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.json);
    let a = send(&c, json!({"to": TO, "body": "no from: it leaves from 12345"})).await;
    assert_eq!(a.json["error"]["code"], "recipient_opted_out", "{}", a.json);
    let a = send(&c, json!({"to": TO, "body": "from another sender", "from": "67890"})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
    gw.gateway.shutdown().await;
}

/// Entries stored before numbers were normalised and keyed by number first are moved, so
/// that an old STOP still blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_registry_entries_move_to_the_normalised_number() {
    use smsgate::compliance::registry;
    let dir = tempfile::tempdir().unwrap();
    let crypto = smsgate::crypto::Crypto::parse(&smsgate::crypto::Crypto::generate_file_text()).unwrap();
    let store = smsgate::store::Store::open(dir.path(), &Default::default(), std::sync::Arc::new(crypto)).unwrap();
    let crypto = store.crypto();
    // The old layout (`x/{scope}\0{idx}`), with the number as a carrier once gave it.
    let old_key = [b"x/*\0".as_slice(), crypto.blind_index("14155550123").as_bytes()].concat();
    let entry = registry::OptOutEntry {
        number: crypto.seal(b"14155550123", &old_key),
        scope: "*".into(),
        source: "keyword".into(),
        keyword: Some("STOP".into()),
        rule: Some("exact".into()),
        actor: "carrier:sim".into(),
        account: None,
        at_ms: 1,
        confirmation_sent: true,
    };
    let value = serde_json::to_vec(&entry).unwrap();
    store.commit(vec![smsgate::store::Op::Put { key: old_key.clone(), value }]).await.unwrap();
    let consent_key = registry::consent_key(&crypto.blind_index("14155550124"));
    let consent = registry::ConsentEntry {
        number: crypto.seal(b"14155550124", &consent_key),
        source: "keyword:START".into(),
        consented_ms: 1,
        actor: "carrier:sim".into(),
        recorded_ms: 1,
    };
    let value = serde_json::to_vec(&consent).unwrap();
    store.commit(vec![smsgate::store::Op::Put { key: consent_key, value }]).await.unwrap();

    assert_eq!(registry::migrate(&store).await.unwrap(), 2);
    let idx = crypto.blind_index("+14155550123");
    let found = registry::find_optout(&store, &idx, &["*".to_string()]).unwrap().expect("the STOP still blocks");
    assert_eq!((found.source.as_str(), found.keyword.as_deref()), ("keyword", Some("STOP")));
    assert!(store.get::<registry::OptOutEntry>(&old_key).unwrap().is_none(), "the old entry is gone");
    assert!(registry::has_consent(&store, &crypto.blind_index("+14155550124")).unwrap());
    assert_eq!(registry::migrate(&store).await.unwrap(), 0, "idempotent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_and_consent_api() {
    let certs = Certs::new();
    let sim = TestSim::start(&certs, SimConfig::default(), None).await;
    let (gw, _data, key) =
        gateway_with(&certs, sim.tls_port(), "[compliance]\nrequire_consent = true\noptout_scope = \"sender\"\n").await;
    let c = gw.client.with_token(Some(&key));
    let a = send(&c, json!({"to": TO, "body": "hi"})).await;
    assert_eq!(a.json["error"]["code"], "consent_required");
    let p = c
        .raw(
            Method::PUT,
            "/v1/consents/%2B14155550123",
            &[("content-type", "application/json")],
            Bytes::from(json!({"source": "intake form", "consented_at": "2026-01-05T10:00:00Z"}).to_string()),
        )
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.json);
    assert_eq!(send(&c, json!({"to": TO, "body": "hi"})).await.status, StatusCode::ACCEPTED);
    // Per-sender scope: an opt-out for sender 12345 does not block sender 67890.
    let p = c
        .raw(
            Method::PUT,
            "/v1/opt-outs/%2B14155550123",
            &[("content-type", "application/json")],
            Bytes::from(json!({"scope": "12345"}).to_string()),
        )
        .await;
    assert_eq!(p.status, StatusCode::OK);
    assert_eq!(
        send(&c, json!({"to": TO, "body": "x", "from": "12345"})).await.json["error"]["code"],
        "recipient_opted_out"
    );
    assert_eq!(send(&c, json!({"to": TO, "body": "x", "from": "67890"})).await.status, StatusCode::ACCEPTED);
    let list = c.get("/v1/opt-outs").await.json;
    assert_eq!(list["opt_outs"][0]["scope"], "12345");
    assert_eq!(list["opt_outs"][0]["source"], "api");
    let d = c.raw(Method::DELETE, "/v1/opt-outs/%2B14155550123", &[], Bytes::new()).await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(send(&c, json!({"to": TO, "body": "x", "from": "12345"})).await.status, StatusCode::ACCEPTED);
    let d = c.raw(Method::DELETE, "/v1/consents/%2B14155550123", &[], Bytes::new()).await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(send(&c, json!({"to": TO, "body": "x"})).await.json["error"]["code"], "consent_required");
    // Scope enforcement: the default test key has no optouts scope.
    assert_eq!(gw.client.get("/v1/opt-outs").await.status, StatusCode::FORBIDDEN);
    let bad = c.raw(Method::PUT, "/v1/opt-outs/not-a-number", &[], Bytes::new()).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    // A body that does not say what it means is refused, never taken for a global opt-out.
    let json_type = [("content-type", "application/json")];
    for (headers, body, code) in [
        (&json_type[..], "{\"scope\": ", "malformed_json"),
        (&json_type[..], "{\"scpoe\": \"12345\"}", "unknown_field"),
        (&json_type[..], "{\"scope\": 12345}", "invalid_field"),
        (&json_type[..], "[\"global\"]", "invalid_field"),
        (&[("content-type", "text/plain")][..], "scope=12345", "unsupported_media_type"),
    ] {
        let r = c.raw(Method::PUT, "/v1/opt-outs/%2B14155550188", headers, Bytes::from(body)).await;
        assert_eq!(r.json["error"]["code"], code, "{body}: {}", r.json);
        assert!(r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    }
    assert_eq!(c.get("/v1/opt-outs/%2B14155550188").await.status, StatusCode::NOT_FOUND, "nothing recorded");
    // Consents are held to the same rules.
    for (body, code) in [
        ("{\"source\": \"intake\", \"extra\": 1}", "unknown_field"),
        ("{\"source\": 5}", "invalid_field"),
        ("{\"consented_at\": null}", "missing_field"),
        ("[]", "invalid_field"),
    ] {
        let r = c.raw(Method::PUT, "/v1/consents/%2B14155550188", &json_type, Bytes::from(body)).await;
        assert_eq!((r.status, r.json["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some(code)), "{body}");
    }
    gw.gateway.shutdown().await;
}

/// An `Etc/GMT±N` zone where the local hour is now `hour`.
fn zone_at_local_hour(hour: i64) -> String {
    let utc_hour = (smsgate::message::now_ms() / 3_600_000 % 24) as i64;
    let mut offset = (hour - utc_hour).rem_euclid(24);
    if offset > 14 {
        offset -= 24;
    }
    // Etc/GMT signs are inverted: Etc/GMT-3 is UTC+3.
    if offset >= 0 { format!("Etc/GMT-{offset}") } else { format!("Etc/GMT+{}", -offset) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_caps_and_content_rules_at_accept() {
    let certs = Certs::new();
    let sim = TestSim::start(&certs, SimConfig::default(), None).await;
    let sections = r#"
[compliance.quiet_hours]
start = "21:00"
end = "08:00"
default_timezone = "America/New_York"
[[compliance.category_policies]]
category = "appointment_reminder"
max_per_day = 1
max_per_week = 3
max_chars = 160
[compliance.content]
action = "reject"
mrn_patterns = ["(?i)\\bMRN[:#\\s]*\\d{6,10}\\b"]
deny_terms = ["HIV", "chlamydia"]
"#;
    let (gw, _data, key) = gateway_with(&certs, sim.tls_port(), sections).await;
    let c = gw.client.with_token(Some(&key));
    // 03:00 local: held until 08:00; urgent goes now.
    let night = zone_at_local_hour(3);
    let a = send(&c, json!({"to": TO, "body": "Reminder", "recipient_timezone": night})).await;
    assert_eq!((a.status, a.json["status"].as_str()), (StatusCode::ACCEPTED, Some("scheduled")), "{}", a.json);
    let m = c.get(&format!("/v1/messages/{}", a.json["id"].as_str().unwrap())).await.json;
    // Held until the next 08:00 in that zone after it was accepted (whatever the hour is
    // by now: the expectation is computed from the accept time, not from the clock).
    let created = m["created_at"].as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    let zone = jiff::tz::TimeZone::get(&night).unwrap();
    let local = created.to_zoned(zone.clone());
    let mut eight = local.date().at(8, 0, 0, 0).to_zoned(zone).unwrap();
    if eight <= local {
        eight = eight.checked_add(jiff::Span::new().days(1)).unwrap();
    }
    let held = m["send_at"].as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    assert_eq!(held, eight.timestamp(), "held until 08:00 local ({night})");
    let u =
        send(&c, json!({"to": TO, "body": "Clinic closed today", "recipient_timezone": night, "category": "urgent"}))
            .await;
    assert_eq!(u.json["status"], "queued");
    // Daytime: straight out.
    let day = zone_at_local_hour(13);
    // Frequency caps: one appointment reminder a day.
    let r1 = send(&c, json!({"to": TO, "body": "Your visit is tomorrow 9:00", "category": "appointment_reminder", "recipient_timezone": day})).await;
    assert_eq!(r1.status, StatusCode::ACCEPTED, "{}", r1.json);
    let r2 = send(
        &c,
        json!({"to": TO, "body": "Second reminder", "category": "appointment_reminder", "recipient_timezone": day}),
    )
    .await;
    assert_eq!(
        (r2.status, r2.json["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("frequency_cap_exceeded"))
    );
    assert!(r2.json["error"]["message"].as_str().unwrap().contains("next message may go at"));
    let long = send(&c, json!({"to": "+14155550124", "body": "x".repeat(161), "category": "appointment_reminder", "recipient_timezone": day})).await;
    assert_eq!(long.json["error"]["code"], "content_policy_violation");
    // PHI content rules: named, never echoed.
    for (body, rule) in [
        ("SSN 123-45-6789 on file", "ssn"),
        ("Patient MRN#00123456", "mrn"),
        ("Your HIV result is in", "deny_term"),
        ("Confirm DOB 04/12/1980", "dob"),
    ] {
        let a = send(&c, json!({"to": TO, "body": body, "recipient_timezone": day})).await;
        assert_eq!(a.json["error"]["code"], "content_policy_violation", "{body}");
        let msg = a.json["error"]["message"].as_str().unwrap();
        assert!(msg.contains(rule), "{msg}");
        assert!(!msg.contains("123-45-6789") && !msg.contains("00123456") && !msg.contains("04/12/1980"));
    }
    // An admin can switch a key to flag: accepted, counted, audited.
    let admin = smsgate::auth::KeyAdmin { store: &gw.gateway.store, ring: &gw.gateway.keys };
    let key_id = key.split('_').nth(1).unwrap();
    admin.set_policy(key_id, Some("flag"), None, None, &Default::default()).await.unwrap();
    let f = send(&c, json!({"to": TO, "body": "Your HIV result is in", "recipient_timezone": day})).await;
    assert_eq!(f.status, StatusCode::ACCEPTED);
    gw.gateway.shutdown().await;
    let audit = std::fs::read_to_string(smsgate::audit::log_path(_data.path())).unwrap();
    assert!(audit.contains("content.flag") && audit.contains("deny_term"));
    assert!(!audit.contains("HIV"), "the audit names the rule, not the text");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_readable_in_the_data_directory() {
    let certs = Certs::new();
    let sim = TestSim::start(&certs, SimConfig::default(), None).await;
    let (gw, data, key) = gateway_with(&certs, sim.tls_port(), "").await;
    let c = gw.client.with_token(Some(&key));
    let body = "Zebra-Quartz lab results: call Dr. Xylophone";
    let a = send(&c, json!({"to": TO, "body": body, "client_ref": "cr-1"})).await;
    let m = c.wait_message(a.json["id"].as_str().unwrap(), PATIENCE, |m| m["status"] == "delivered").await;
    assert_eq!(m["status"], "delivered");
    // An inbound text, and an opt-out through the API.
    let mo = smsgate::smpp::codec::pdu::ShortMessage {
        source: smsgate::smpp::codec::pdu::Address { ton: 1, npi: 1, addr: "14155550199".into() },
        dest: smsgate::smpp::codec::pdu::Address { ton: 3, npi: 0, addr: "12345".into() },
        short_message: Bytes::from(smsgate::text::gsm_encode("Marmalade-Octopus reply").unwrap()),
        ..Default::default()
    };
    let (_, rx) = sim.handle.sim.inject(&mo).expect("a bound session");
    assert_eq!(rx.await.unwrap(), 0);
    let p = c.raw(Method::PUT, "/v1/opt-outs/%2B14155550177", &[], Bytes::new()).await;
    assert_eq!(p.status, StatusCode::OK);
    gw.gateway.shutdown().await;
    let needles = [
        body,
        "Zebra-Quartz",
        "Xylophone",
        "Marmalade-Octopus",
        "+14155550123",
        "14155550123",
        "4155550123",
        "14155550199",
        "14155550177",
    ];
    let mut scanned = 0;
    for entry in walk(data.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        scanned += bytes.len();
        for n in needles {
            assert!(!bytes.windows(n.len()).any(|w| w == n.as_bytes()), "'{n}' in clear in {}", entry.display());
        }
    }
    assert!(scanned > 0);
    println!(
        "encryption at rest: scanned {scanned} bytes in {}; none of {} known values in clear",
        data.path().display(),
        needles.len()
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_audit_entry_is_named_by_audit_verify() {
    let certs = Certs::new();
    let sim = TestSim::start(&certs, SimConfig::default(), None).await;
    let (gw, data, key) = gateway_with(&certs, sim.tls_port(), "").await;
    let c = gw.client.with_token(Some(&key));
    for i in 0..5 {
        send(&c, json!({"to": TO, "body": format!("audit {i}")})).await;
    }
    gw.gateway.shutdown().await;
    let config = certs.path("audit.toml");
    std::fs::write(&config, config_text(data.path(), &certs, sim.tls_port(), "")).unwrap();
    let verify = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_smsgate"))
            .args(["audit", "verify", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let ok = verify();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("intact"));
    let path = smsgate::audit::log_path(data.path());
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 5);
    let tampered = lines[3].replace("\"202\"", "\"500\"");
    assert_ne!(tampered, lines[3]);
    std::fs::write(&path, text.replace(lines[3], &tampered)).unwrap();
    let bad = verify();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("line 4") && err.contains("seq 4") && err.contains("edited"), "{err}");
}

/// Requests without a valid key are counted per source and window, not written one by one:
/// a flood of them cannot fill the disk, and the chain stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_key_are_counted_not_logged_one_by_one() {
    let certs = Certs::new();
    let sim = TestSim::start(&certs, SimConfig::default(), None).await;
    let (gw, data, key) = gateway_with(&certs, sim.tls_port(), "[audit]\nrefusal_window_secs = 1\n").await;
    let before = std::fs::metadata(smsgate::audit::log_path(data.path())).unwrap().len();
    let mut anonymous = gw.client.with_token(None).connect().await.unwrap();
    let mut wrong = gw.client.with_token(Some("sgk_000000000000_00")).connect().await.unwrap();
    for i in 0..300 {
        let (path, status) =
            if i % 2 == 0 { ("/v1/nothing", StatusCode::NOT_FOUND) } else { ("/v1/inbound", StatusCode::UNAUTHORIZED) };
        assert_eq!(anonymous.get_json(path).await.unwrap().0, status);
    }
    for _ in 0..100 {
        assert_eq!(wrong.get_json("/v1/inbound").await.unwrap().0, StatusCode::UNAUTHORIZED);
    }
    // An authenticated request is still an entry of its own.
    assert_eq!(gw.client.with_token(Some(&key)).get("/v1/inbound").await.status, StatusCode::OK);
    let path = smsgate::audit::log_path(data.path());
    let refused_total = || {
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["action"] == "api.refused")
            .map(|e| e["outcome"].as_str().unwrap().parse::<u64>().unwrap())
            .sum::<u64>()
    };
    eventually(PATIENCE, "the refused requests counted", || refused_total() == 400).await;
    let text = std::fs::read_to_string(&path).unwrap();
    let entries: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let refused = entries.iter().filter(|e| e["action"] == "api.refused").count();
    assert!(refused <= 10, "{refused} entries for 400 requests in a few seconds");
    assert!(entries.iter().all(|e| e["actor"] != "anonymous" && e["actor"] != "invalid-key"), "none one by one");
    assert!(
        entries.iter().any(|e| e["action"] == "api.list_inbound" && e["actor"].as_str().unwrap().starts_with("key:"))
    );
    let grown = std::fs::metadata(&path).unwrap().len() - before;
    println!("400 requests without a valid key: {refused} audit entries, {grown} bytes");
    gw.gateway.shutdown().await;
    let crypto = smsgate::crypto::Crypto::from_file(&certs.path("data.keys")).unwrap();
    assert!(matches!(
        smsgate::audit::verify(data.path(), &crypto.audit_key()).unwrap(),
        smsgate::audit::Verification::Intact { .. }
    ));
}

/// A receiver that answers 500 to the first `fail_first` POSTs: (port, what it got).
async fn receiver_failing(certs: &Certs, secret: &'static [u8], fail_first: usize) -> (u16, Deliveries) {
    let r = Receiver::start(certs, secret, fail_first).await;
    (r.port, r.got)
}

/// A receiver that always answers 200: (port, (signature valid, body) of each POST).
async fn receiver(certs: &Certs, secret: &'static [u8]) -> (u16, Arc<Mutex<Vec<(bool, Value)>>>) {
    let (port, got) = receiver_failing(certs, secret, 0).await;
    let view: Arc<Mutex<Vec<(bool, Value)>>> = Arc::default();
    let v = view.clone();
    tokio::spawn(async move {
        loop {
            let now: Vec<(bool, Value)> = got.lock().unwrap().iter().map(|d| (d.valid, d.body.clone())).collect();
            *v.lock().unwrap() = now;
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    });
    (port, view)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhooks_for_status_and_inbound() {
    let certs = Certs::new();
    let secret: &'static [u8] = b"whsec-test-0123456789";
    std::fs::write(certs.path("webhook.secret"), secret).unwrap();
    let (port, got) = receiver(&certs, secret).await;
    let sim = TestSim::start(&certs, SimConfig::default(), None).await;
    let sections = format!(
        "[webhooks]\nsecret_file = \"{}\"\nca_file = \"{}\"\ninbound_url = \"https://localhost:{port}/inbound\"\nallow_networks = [\"127.0.0.0/8\"]\n",
        certs.path("webhook.secret").display(),
        certs.path("api.crt").display()
    );
    let (gw, _data, key) = gateway_with(&certs, sim.tls_port(), &sections).await;
    let c = gw.client.with_token(Some(&key));
    let hook = format!("https://localhost:{port}/status");
    let a = send(&c, json!({"to": TO, "body": "Secret body text", "callback_url": hook, "client_ref": "r9"})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
    eventually(PATIENCE, "the delivered webhook", || {
        got.lock().unwrap().iter().any(|(_, v)| v["status"] == "delivered")
    })
    .await;
    {
        let events = got.lock().unwrap();
        assert!(events.iter().all(|(valid, _)| *valid), "every signature verifies");
        let delivered = events.iter().find(|(_, v)| v["status"] == "delivered").unwrap();
        assert_eq!(
            (delivered.1["client_ref"].as_str(), delivered.1["to"].as_str()),
            (Some("r9"), Some("+1415***0123"))
        );
        assert!(delivered.1.get("body").is_none(), "no body unless the key allows it");
    }
    // A key that allows bodies gets them.
    let admin = smsgate::auth::KeyAdmin { store: &gw.gateway.store, ring: &gw.gateway.keys };
    let loopback = smsgate::webhooks::TargetPolicy::new(&["127.0.0.0/8".into()]).unwrap();
    admin.set_policy(key.split('_').nth(1).unwrap(), None, Some(&hook), Some(true), &loopback).await.unwrap();
    let b = send(&c, json!({"to": TO, "body": "Body allowed"})).await;
    let id = b.json["id"].as_str().unwrap().to_string();
    eventually(PATIENCE, "a webhook with the body", || {
        got.lock().unwrap().iter().any(|(_, v)| v["id"] == id.as_str() && v["body"] == "Body allowed")
    })
    .await;
    // Inbound texts go to the inbound webhook.
    let mo = smsgate::smpp::codec::pdu::ShortMessage {
        source: smsgate::smpp::codec::pdu::Address { ton: 1, npi: 1, addr: "14155550123".into() },
        dest: smsgate::smpp::codec::pdu::Address { ton: 3, npi: 0, addr: "12345".into() },
        short_message: Bytes::from(smsgate::text::gsm_encode("See you then").unwrap()),
        ..Default::default()
    };
    let (_, rx) = sim.handle.sim.inject(&mo).unwrap();
    assert_eq!(rx.await.unwrap(), 0);
    eventually(PATIENCE, "the inbound webhook", || {
        got.lock().unwrap().iter().any(|(valid, v)| *valid && v["event"] == "inbound" && v["body"] == "See you then")
    })
    .await;
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_bodies_and_rotation_reseals() {
    let certs = Certs::new();
    let sim = TestSim::start(&certs, SimConfig::default(), None).await;
    let sections = "[retention]\nbody_days = 0\ninbound_days = 0\nsweep_interval_secs = 1\n";
    let (gw, data, key) = gateway_with(&certs, sim.tls_port(), sections).await;
    let c = gw.client.with_token(Some(&key));
    let a = send(&c, json!({"to": TO, "body": "purge me"})).await;
    let id = a.json["id"].as_str().unwrap().to_string();
    c.wait_message(&id, PATIENCE, |m| m["status"] == "delivered").await;
    eventually(PATIENCE, "the body to be purged", || {
        gw.gateway.store.message(&id).unwrap().unwrap().purged_ms.is_some()
    })
    .await;
    let m = gw.gateway.store.message(&id).unwrap().unwrap();
    assert_eq!(m.content.body, "", "body gone");
    assert_eq!(m.content.to, TO, "the number (sealed) stays with the metadata");
    assert_eq!(c.get(&format!("/v1/messages/{id}")).await.json["status"], "delivered", "metadata stays");
    gw.gateway.shutdown().await;

    // Rotation (server stopped: the CLI works on the store directly).
    let config = certs.path("rotate.toml");
    std::fs::write(&config, config_text(data.path(), &certs, sim.tls_port(), "")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smsgate"))
        .args(["keys", "rotate-data-key", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("k2"));
    let gw2 = smsgate::gateway::Gateway::start(parse_config(&std::fs::read_to_string(&config).unwrap())).await.unwrap();
    let m = gw2.store.message(&id).unwrap().unwrap();
    assert_eq!(m.sealed.as_ref().unwrap().k, "k2", "re-sealed under the new key");
    assert_eq!(m.content.to, TO);
    gw2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_out_csv_import_and_export() {
    let certs = Certs::new();
    let data = tempfile::tempdir().unwrap();
    let config = certs.path("csv.toml");
    std::fs::write(&config, config_text(data.path(), &certs, 1, "")).unwrap();
    let csv = certs.path("in.csv");
    std::fs::write(&csv, "number,scope\n+14155550123,global\n+447911123456,12345\nnot-a-number,global\n").unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_smsgate"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = run(&["optouts", "import", csv.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("recorded 2"), "{stdout}");
    assert!(stderr.contains("row 3"), "{stderr}");
    let out = certs.path("out.csv");
    let (ok, _, stderr) = run(&["optouts", "export", "--out", out.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.starts_with("number,scope,source,keyword,rule,recorded_by,at"));
    assert!(text.contains("+14155550123,global,import"), "{text}");
    assert!(text.contains("+447911123456,12345,import"), "{text}");
    // And the gateway honours them.
    let gw = TestGateway::start(parse_config(&std::fs::read_to_string(&config).unwrap()), &certs).await;
    let a = gw.client.post("/v1/messages", &json!({"to": TO, "body": "x"})).await;
    assert_eq!(a.json["error"]["code"], "recipient_opted_out");
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_paging_scopes_and_consent_removal() {
    let certs = Certs::new();
    let sim = TestSim::start(&certs, SimConfig::default(), None).await;
    let (gw, _data, key) = gateway_with(&certs, sim.tls_port(), "").await;
    let c = gw.client.with_token(Some(&key));
    let put = |n: &'static str, body: Value| {
        let c = c.clone();
        async move {
            let a = c
                .raw(
                    Method::PUT,
                    &format!("/v1/opt-outs/{}", n.replace('+', "%2B")),
                    &[("content-type", "application/json")],
                    Bytes::from(body.to_string()),
                )
                .await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.json);
        }
    };
    let (n1, n2, n3) = ("+14155550101", "+14155550102", "+14155550103");
    put(n1, json!({"scope": "global"})).await;
    put(n1, json!({"scope": "12345"})).await;
    put(n2, json!({})).await;
    put(n3, json!({"scope": "67890"})).await;
    // Page by one: every entry once, none skipped at a page boundary; the order is the
    // registry's (by blind index), a number's scopes together, global first.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/opt-outs?limit=1&after={}", a.replace('+', "%2B")),
            None => "/v1/opt-outs?limit=1".to_string(),
        };
        let page = c.get(&path).await.json;
        for e in page["opt_outs"].as_array().unwrap() {
            seen.push(format!("{} {}", e["number"].as_str().unwrap(), e["scope"].as_str().unwrap()));
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
        assert!(seen.len() <= 10, "paging does not end: {seen:?}");
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, [format!("{n1} 12345"), format!("{n1} global"), format!("{n2} global"), format!("{n3} 67890")]);
    let first_n1 = seen.iter().position(|s| s.starts_with(n1)).unwrap();
    assert_eq!(seen[first_n1..first_n1 + 2], [format!("{n1} global"), format!("{n1} 12345")], "{seen:?}");
    // ?scope= removes one scope only.
    let d = c.raw(Method::DELETE, "/v1/opt-outs/%2B14155550101?scope=12345", &[], Bytes::new()).await;
    assert_eq!((d.status, d.json["removed"].as_u64()), (StatusCode::OK, Some(1)), "{}", d.json);
    let g = c.get("/v1/opt-outs/%2B14155550101").await;
    assert_eq!(g.json["opt_outs"].as_array().unwrap().len(), 1);
    assert_eq!(g.json["opt_outs"][0]["scope"], "global");
    // A global opt-out takes the consent away; a sender-scoped one leaves it.
    let consent = |n: &'static str| {
        let c = c.clone();
        async move {
            c.raw(
                Method::PUT,
                &format!("/v1/consents/{}", n.replace('+', "%2B")),
                &[("content-type", "application/json")],
                Bytes::from(json!({"source": "intake"}).to_string()),
            )
            .await
            .status
        }
    };
    let n4 = "+14155550104";
    assert_eq!(consent(n4).await, StatusCode::OK);
    put(n4, json!({"scope": "12345"})).await;
    let d = c.raw(Method::DELETE, "/v1/consents/%2B14155550104", &[], Bytes::new()).await;
    assert_eq!(d.status, StatusCode::OK, "a sender-scoped opt-out leaves the consent");
    assert_eq!(consent(n4).await, StatusCode::OK);
    put(n4, json!({"scope": "global"})).await;
    let d = c.raw(Method::DELETE, "/v1/consents/%2B14155550104", &[], Bytes::new()).await;
    assert_eq!(d.status, StatusCode::NOT_FOUND, "the global opt-out removed the consent");
    // Inbound pages: three texts, two per page.
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        let mo = smsgate::smpp::codec::pdu::ShortMessage {
            source: smsgate::smpp::codec::pdu::Address { ton: 1, npi: 1, addr: format!("1415555020{i}") },
            dest: smsgate::smpp::codec::pdu::Address { ton: 3, npi: 0, addr: "12345".into() },
            short_message: Bytes::from(smsgate::text::gsm_encode(text).unwrap()),
            ..Default::default()
        };
        let (_, rx) = sim.handle.sim.inject(&mo).expect("a bound session");
        assert_eq!(rx.await.unwrap(), 0);
    }
    let first = c.get("/v1/inbound?limit=2").await.json;
    let bodies = |p: &Value| p["inbound"].as_array().unwrap().iter().map(|i| i["body"].clone()).collect::<Vec<_>>();
    assert_eq!(bodies(&first), [json!("one"), json!("two")]);
    assert_eq!(first["more"], true);
    let next = first["next"].as_str().expect("a full page has a next cursor");
    let second = c.get(&format!("/v1/inbound?limit=2&after={next}")).await.json;
    assert_eq!(bodies(&second), [json!("three")]);
    // A short page still says where to resume: a poller keeps `next` and asks again.
    assert_eq!(second["more"], false);
    let resume = second["next"].as_str().expect("a short page has a cursor too").to_string();
    assert_eq!(second["inbound"][0]["id"], resume.as_str());
    let mo = smsgate::smpp::codec::pdu::ShortMessage {
        source: smsgate::smpp::codec::pdu::Address { ton: 1, npi: 1, addr: "14155550209".into() },
        dest: smsgate::smpp::codec::pdu::Address { ton: 3, npi: 0, addr: "12345".into() },
        short_message: Bytes::from(smsgate::text::gsm_encode("four").unwrap()),
        ..Default::default()
    };
    let (_, rx) = sim.handle.sim.inject(&mo).expect("a bound session");
    assert_eq!(rx.await.unwrap(), 0);
    let third = c.get(&format!("/v1/inbound?after={resume}")).await.json;
    assert_eq!(bodies(&third), [json!("four")]);
    let empty = c.get(&format!("/v1/inbound?after={}", third["next"].as_str().unwrap())).await.json;
    assert_eq!((empty["inbound"].as_array().unwrap().len(), &empty["next"]), (0, &third["next"]), "{empty}");
    // `limit` is validated as documented.
    for bad in ["0", "-1", "abc", "1001", "5000"] {
        let r = c.get(&format!("/v1/inbound?limit={bad}")).await;
        assert_eq!((r.status, r.json["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("limit")), "{bad}");
        assert_eq!(c.get(&format!("/v1/opt-outs?limit={bad}")).await.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_checks_consent_and_quiet_hours_again() {
    let certs = Certs::new();
    let sim = TestSim::start(&certs, SimConfig::default(), Some(certs.path("again.jsonl"))).await;
    let data = tempfile::tempdir().unwrap();
    let base = config_text(data.path(), &certs, sim.tls_port(), "default_source = \"12345\"");
    let text = base.clone() + "[compliance]\nrequire_consent = true\n";
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    let key = gw.key(vec![Scope::Send, Scope::Read, Scope::Optouts]).await;
    let c = gw.client.with_token(Some(&key));
    let consent = Bytes::from(json!({"source": "intake"}).to_string());
    let p = c.raw(Method::PUT, "/v1/consents/%2B14155550123", &[("content-type", "application/json")], consent).await;
    assert_eq!(p.status, StatusCode::OK);
    let soon = || jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_secs(2)).unwrap().to_string();
    let day = zone_at_local_hour(13);
    let a =
        send(&c, json!({"to": TO, "body": "consented then withdrawn", "send_at": soon(), "recipient_timezone": day}))
            .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
    // Consent withdrawn before the message is due: dispatch blocks it.
    assert_eq!(c.delete("/v1/consents/%2B14155550123").await.status, StatusCode::OK);
    let m = c.wait_message(a.json["id"].as_str().unwrap(), PATIENCE, |m| m["status"] == "blocked").await;
    assert_eq!((m["status"].as_str(), m["error"]["code"].as_str()), (Some("blocked"), Some("consent_required")), "{m}");

    // Quiet hours that start applying after accept (a reload) hold the message at dispatch.
    let night = zone_at_local_hour(3);
    let gw2 = {
        gw.gateway.shutdown().await;
        TestGateway::start(parse_config(&base), &certs).await
    };
    let b = gw2
        .client
        .post(
            "/v1/messages",
            &json!({"to": TO, "body": "held at dispatch", "send_at": soon(), "recipient_timezone": night}),
        )
        .await;
    assert_eq!(b.status, StatusCode::ACCEPTED, "{}", b.json);
    let quiet =
        base.clone() + "[compliance.quiet_hours]\nstart = \"21:00\"\nend = \"08:00\"\ndefault_timezone = \"UTC\"\n";
    let report = gw2.gateway.reload(parse_config(&quiet));
    assert!(report.needs_restart.is_empty(), "{report:?}");
    let id = b.json["id"].as_str().unwrap();
    let m = gw2
        .client
        .wait_message(id, PATIENCE, |m| m["history"].as_array().unwrap().iter().any(|h| h["detail"] == "quiet_hours"))
        .await;
    assert_eq!(m["status"], "scheduled", "{m}");
    let held = m["send_at"].as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    let local = held.to_zoned(jiff::tz::TimeZone::get(&night).unwrap());
    assert_eq!((local.hour(), local.minute()), (8, 0), "held until 08:00 local: {m}");
    assert!(!submitted_texts(&certs.path("again.jsonl")).contains_key("held at dispatch"));
    gw2.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_records_and_weekly_caps_hold() {
    let certs = Certs::new();
    let sim = TestSim::start(&certs, SimConfig::default(), None).await;
    let sections = r#"
[retention]
body_days = 0
inbound_days = 0
metadata_days = 0
sweep_interval_secs = 1
[[compliance.category_policies]]
category = "billing"
max_per_day = 5
max_per_week = 2
"#;
    let (gw, _data, key) = gateway_with(&certs, sim.tls_port(), sections).await;
    let c = gw.client.with_token(Some(&key));
    // Weekly cap: two a week, although five a day would be allowed.
    let day = zone_at_local_hour(13);
    let bill = |n: u32| json!({"to": "+14155550166", "body": format!("Statement {n} is ready"), "category": "billing", "recipient_timezone": day});
    let first = send(&c, bill(1)).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.json);
    let second = send(&c, bill(2)).await;
    assert_eq!(second.status, StatusCode::ACCEPTED, "{}", second.json);
    let third = send(&c, bill(3)).await;
    assert_eq!(third.json["error"]["code"], "frequency_cap_exceeded", "{}", third.json);
    assert!(third.json["error"]["message"].as_str().unwrap().contains("max_per_week"), "{}", third.json);
    // Metadata retention of 0 days: a final message and an inbound text are deleted by the
    // next pass (bodies first, then the records).
    let a = send(&c, json!({"to": TO, "body": "short-lived"})).await;
    let id = a.json["id"].as_str().unwrap().to_string();
    let mo = smsgate::smpp::codec::pdu::ShortMessage {
        source: smsgate::smpp::codec::pdu::Address { ton: 1, npi: 1, addr: "14155550123".into() },
        dest: smsgate::smpp::codec::pdu::Address { ton: 3, npi: 0, addr: "12345".into() },
        short_message: Bytes::from(smsgate::text::gsm_encode("see you").unwrap()),
        ..Default::default()
    };
    let (_, rx) = sim.handle.sim.inject(&mo).expect("a bound session");
    assert_eq!(rx.await.unwrap(), 0);
    until(PATIENCE, "the message record to be deleted", || async {
        c.get(&format!("/v1/messages/{id}")).await.status == StatusCode::NOT_FOUND
    })
    .await;
    until(PATIENCE, "the inbound record to be deleted", || async {
        c.get("/v1/inbound").await.json["inbound"].as_array().is_some_and(|a| a.is_empty())
    })
    .await;
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_retried_with_their_headers_and_given_up_after_48_hours() {
    let certs = Certs::new();
    let secret: &'static [u8] = b"whsec-retry-0123456789";
    std::fs::write(certs.path("webhook.secret"), secret).unwrap();
    let (port, got) = receiver_failing(&certs, secret, 2).await;
    let sim = TestSim::start(&certs, SimConfig::default(), None).await;
    let sections = format!(
        "[webhooks]\nsecret_file = \"{}\"\nca_file = \"{}\"\nallow_networks = [\"127.0.0.0/8\"]\n",
        certs.path("webhook.secret").display(),
        certs.path("api.crt").display()
    );
    let (gw, _data, key) = gateway_with(&certs, sim.tls_port(), &sections).await;
    let c = gw.client.with_token(Some(&key));
    let hook = format!("https://localhost:{port}/status");
    let a = send(&c, json!({"to": TO, "body": "retried hook", "callback_url": hook})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
    // The first two POSTs get 500: each of those deliveries comes again (same delivery id,
    // same payload, after a backoff) until it gets a 200.
    // Both failed deliveries come again after about 2 s each, in either order: wait until
    // the delivered one has come and every delivery has ended accepted.
    let settled = || {
        let all = got.lock().unwrap();
        let ended = |id: &str| all.iter().rev().find(|d| d.delivery == id).is_some_and(|d| d.answered == 200);
        all.iter().any(|d| d.answered == 200 && d.body["status"] == "delivered")
            && all.iter().all(|d| ended(&d.delivery))
    };
    eventually(PATIENCE, "every webhook delivery answered 200 in the end", settled).await;
    let all = got.lock().unwrap().clone();
    let mut by_delivery: std::collections::BTreeMap<String, Vec<&Delivery>> = Default::default();
    for d in &all {
        by_delivery.entry(d.delivery.clone()).or_default().push(d);
    }
    let mut retried = 0;
    for (id, tries) in &by_delivery {
        assert_eq!(tries.last().unwrap().answered, 200, "{id} ends accepted: {tries:?}");
        assert!(tries.iter().all(|d| d.body == tries[0].body), "{id}: the same payload each time");
        retried += usize::from(tries.len() > 1);
    }
    assert_eq!(retried, 2, "both failed deliveries were tried again: {all:?}");
    for d in &all {
        assert!(d.valid, "signed: {d:?}");
        assert_eq!((d.event.as_str(), d.content_type.as_str()), ("status", "application/json"));
        assert!(!d.delivery.is_empty() && d.user_agent.starts_with("smsgate"), "{d:?}");
    }

    // An entry older than 48 hours that fails again is given up (deleted, counted).
    let crypto = gw.gateway.store.crypto();
    let url = format!("https://localhost:{port}/fail");
    let op = smsgate::store::outbox::inbound_op(&crypto, "default", &url, &json!({"event": "old"})).unwrap();
    let smsgate::store::Op::Put { key, value } = op else { panic!("an outbox put") };
    let mut entry: smsgate::store::outbox::OutboxEntry = serde_json::from_slice(&value).unwrap();
    entry.created_ms = smsgate::message::now_ms() - 49 * 3_600_000;
    let value = serde_json::to_vec(&entry).unwrap();
    gw.gateway.store.commit(vec![smsgate::store::Op::Put { key: key.clone(), value }]).await.unwrap();
    eventually(PATIENCE, "the old entry tried once more", || got.lock().unwrap().iter().any(|d| d.path == "/fail"))
        .await;
    until(PATIENCE, "the old entry abandoned", || async {
        gw.gateway.store.get::<smsgate::store::outbox::OutboxEntry>(&key).unwrap().is_none()
    })
    .await;
    let exposition = http_text(gw.gateway.metrics_addr, "/metrics").await;
    assert!(metric(&exposition, "smsgate_webhooks_total{result=\"abandoned\"}").unwrap_or(0.0) >= 1.0, "counted");
    gw.gateway.shutdown().await;
}
