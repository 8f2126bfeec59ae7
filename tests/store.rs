//! Store semantics on a real sled directory: atomic insert + queue entry, receipts that
//! overtake their submit_sm_resp, multi-part aggregation, final states, and reopening.

use smsgate::message::{Content, Message, Status};
use smsgate::store::{Op, OpResult, ReceiptOutcome, Store, StoreOptions};

fn keys() -> std::sync::Arc<smsgate::crypto::Crypto> {
    std::sync::Arc::new(smsgate::crypto::Crypto::parse(&smsgate::crypto::Crypto::generate_file_text()).unwrap())
}

fn message(id: &str, seq: u64, parts: usize) -> Message {
    // A body long enough for `parts` GSM parts (153 characters each after the UDH).
    let body = if parts <= 1 { "hello".to_string() } else { "x".repeat(153 * parts) };
    let content = Content { to: "+14155550123".into(), from: None, body };
    let mut msg = Message::accepted("k", seq, content, vec!["c".into()], 1, 10, u64::MAX - 10);
    assert_eq!(msg.parts.len(), parts);
    msg.id = id.into();
    msg
}

fn delivered() -> ReceiptOutcome {
    ReceiptOutcome { status: Some(Status::Delivered), stat: "DELIVRD".into(), error_code: None }
}

fn submitted(id: &str, part: usize, cid: &str) -> Op {
    let total = if id == "M" {
        3
    } else if id == "F" {
        2
    } else {
        1
    };
    Op::PartSubmitted { id: id.into(), part, total, carrier: "c".into(), carrier_message_id: cid.into() }
}

fn receipt(cid: &str, outcome: ReceiptOutcome) -> Op {
    Op::Receipt { carrier: "c".into(), carrier_message_id: cid.into(), outcome }
}

#[tokio::test]
async fn insert_is_durable_with_its_queue_entry_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let writer = {
        let store = Store::open(dir.path(), &StoreOptions::default(), keys.clone()).unwrap();
        store
            .commit(vec![Op::Insert(Box::new(message("A", 1, 1))), Op::Insert(Box::new(message("B", 2, 1)))])
            .await
            .unwrap();
        let q = store.queue_entries().unwrap();
        assert_eq!(q.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["A", "B"]);
        assert_eq!(q[0].carrier, "c");
        store.writer_stats()
    };
    // The writer thread releases the files once the last handle is gone.
    while !writer.exited.load(std::sync::atomic::Ordering::Acquire) {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let store = Store::open(dir.path(), &StoreOptions::default(), keys.clone()).unwrap();
    assert_eq!(store.message("A").unwrap().unwrap().content.body, "hello");
    assert_eq!(store.queue_entries().unwrap().len(), 2);
}

#[tokio::test]
async fn a_receipt_before_its_submit_resp_is_applied_when_the_resp_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let store = Store::open(dir.path(), &StoreOptions::default(), keys.clone()).unwrap();
    store.commit_one(Op::Insert(Box::new(message("A", 1, 1)))).await.unwrap();
    assert_eq!(store.commit_one(receipt("77", delivered())).await.unwrap(), OpResult::Orphan);
    let r = store.commit_one(submitted("A", 0, "77")).await.unwrap();
    assert!(matches!(r, OpResult::Updated { status: Status::Delivered, became_final: true, .. }), "{r:?}");
    let m = store.message("A").unwrap().unwrap();
    assert_eq!(m.status, Status::Delivered);
    assert!(store.queue_entries().unwrap().is_empty(), "submitted messages leave the queue");
    // A duplicate receipt changes nothing.
    assert_eq!(store.commit_one(receipt("77", delivered())).await.unwrap(), OpResult::AlreadyFinal(Status::Delivered));
}

#[tokio::test]
async fn multipart_is_delivered_only_when_every_part_is() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let store = Store::open(dir.path(), &StoreOptions::default(), keys.clone()).unwrap();
    store.commit_one(Op::Insert(Box::new(message("M", 1, 3)))).await.unwrap();
    store.commit(vec![submitted("M", 0, "p0"), submitted("M", 1, "p1")]).await.unwrap();
    assert_eq!(store.message("M").unwrap().unwrap().status, Status::Submitting, "not all parts submitted yet");
    assert_eq!(store.queue_entries().unwrap().len(), 1);
    store.commit_one(submitted("M", 2, "p2")).await.unwrap();
    assert_eq!(store.message("M").unwrap().unwrap().status, Status::Submitted);
    store.commit(vec![receipt("p0", delivered()), receipt("p2", delivered())]).await.unwrap();
    assert_eq!(store.message("M").unwrap().unwrap().status, Status::Submitted);
    // Intermediate receipts only add history.
    let enroute = ReceiptOutcome { status: None, stat: "ENROUTE".into(), error_code: None };
    store.commit_one(receipt("p1", enroute)).await.unwrap();
    assert_eq!(store.message("M").unwrap().unwrap().status, Status::Submitted);
    store.commit_one(receipt("p1", delivered())).await.unwrap();
    let m = store.message("M").unwrap().unwrap();
    assert_eq!(m.status, Status::Delivered);
    assert!(m.history.iter().any(|e| e.detail.as_deref() == Some("ENROUTE")));
}

#[tokio::test]
async fn one_failed_part_fails_the_message_and_final_is_final() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let store = Store::open(dir.path(), &StoreOptions::default(), keys.clone()).unwrap();
    store.commit_one(Op::Insert(Box::new(message("F", 1, 2)))).await.unwrap();
    store.commit(vec![submitted("F", 0, "x0"), submitted("F", 1, "x1")]).await.unwrap();
    let undeliv = ReceiptOutcome { status: Some(Status::Undeliverable), stat: "UNDELIV".into(), error_code: Some(34) };
    store.commit_one(receipt("x1", undeliv)).await.unwrap();
    let m = store.message("F").unwrap().unwrap();
    assert_eq!(m.status, Status::Undeliverable);
    assert_eq!(m.error.unwrap().carrier_status, Some(34));
    let r =
        store.commit_one(Op::Reschedule { id: "F".into(), due_ms: 5, count_attempt: true, error: None }).await.unwrap();
    assert_eq!(r, OpResult::AlreadyFinal(Status::Undeliverable));
    assert_eq!(store.commit_one(submitted("nope", 0, "y")).await.unwrap(), OpResult::NotFound);
}

#[tokio::test]
async fn reschedule_moves_the_queue_entry() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let store = Store::open(dir.path(), &StoreOptions::default(), keys.clone()).unwrap();
    store.commit_one(Op::Insert(Box::new(message("R", 1, 1)))).await.unwrap();
    let far = smsgate::message::now_ms() + 60_000;
    store.commit_one(Op::Reschedule { id: "R".into(), due_ms: far, count_attempt: true, error: None }).await.unwrap();
    let q = store.queue_entries().unwrap();
    assert_eq!((q.len(), q[0].due_ms), (1, far));
    let m = store.message("R").unwrap().unwrap();
    assert_eq!((m.status, m.attempts), (Status::Scheduled, 1));
    store
        .commit_one(Op::Finish { id: "R".into(), status: Status::Expired, error: None, count_attempt: false })
        .await
        .unwrap();
    assert!(store.queue_entries().unwrap().is_empty());
}

#[tokio::test]
async fn sweep_removes_only_what_is_stale() {
    use smsgate::store::{Guard, IdempotencyRecord, QuotaGuard, layout};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default(), keys()).unwrap();
    let now = smsgate::message::now_ms();
    let record = |created_ms| IdempotencyRecord {
        body_hash: "h".into(),
        status: 202,
        response: serde_json::json!({}),
        created_ms,
    };
    for (key, created) in [("old", now - 25 * 3600 * 1000), ("new", now - 3600 * 1000)] {
        let guard = Guard { idempotency: Some((layout::idempotency("k", key), record(created))), quotas: vec![] };
        store.commit_guarded(vec![], Some(guard)).await.unwrap();
    }
    for day in ["20200101", &jiff::Timestamp::now().strftime("%Y%m%d").to_string()] {
        let guard = Guard {
            idempotency: None,
            quotas: vec![QuotaGuard {
                key: layout::usage("k", day),
                also: vec![],
                amount: 1,
                adds: true,
                limit: 10,
                label: "daily".into(),
            }],
        };
        store.commit_guarded(vec![], Some(guard)).await.unwrap();
    }
    store.commit_one(receipt("nobody", delivered())).await.unwrap();
    assert_eq!(store.sweep(now, 7 * 86_400_000).await.unwrap(), 2);
    assert!(store.get::<IdempotencyRecord>(&layout::idempotency("k", "old")).unwrap().is_none());
    assert!(store.get::<IdempotencyRecord>(&layout::idempotency("k", "new")).unwrap().is_some());
    assert_eq!(store.sweep(now + 8 * 86_400_000, 7 * 86_400_000).await.unwrap(), 3, "later: the rest, and the orphan");
}

/// Every path that adds keys also takes them away again: after many rounds of messages
/// (throttled for a long time, finished by a receipt before all parts went, receipts before
/// their submit_sm_resp), inbound texts, counters and idempotency entries, followed by what
/// retention and the hourly sweep do, each prefix is back at its baseline and no record grew.
#[tokio::test]
async fn nothing_grows_without_bound() {
    use smsgate::config::RetentionConfig;
    use smsgate::store::layout;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default(), keys()).unwrap();
    let prefixes: [&[u8]; 10] = [b"m/", b"q/", b"c/", b"o/", b"i/", b"f/", b"u/", b"d/", b"w/", b"z/"];
    let count = |store: &Store| prefixes.map(|p| store.key_count(p).unwrap());
    let baseline = count(&store);
    let long_ago = 86_400_000u64 * 40;
    for round in 0..100u64 {
        let id = format!("S{round:05}");
        store.commit_one(Op::Insert(Box::new(message(&id, round, 3)))).await.unwrap();
        // Throttled for hours: every reschedule is the same step.
        for _ in 0..300 {
            let error = Some(smsgate::message::ErrorInfo {
                code: "carrier_throttled".into(),
                message: "carrier asked to slow down".into(),
                carrier_status: Some(0x58),
            });
            store.commit_one(Op::Reschedule { id: id.clone(), due_ms: 10, count_attempt: false, error }).await.unwrap();
        }
        // A receipt that came before its submit_sm_resp, then part 0's resp.
        let undeliv = ReceiptOutcome { status: Some(Status::Undeliverable), stat: "UNDELIV".into(), error_code: None };
        let cid = format!("c{round}");
        assert_eq!(store.commit_one(receipt(&cid, undeliv)).await.unwrap(), OpResult::Orphan);
        let part0 =
            Op::PartSubmitted { id: id.clone(), part: 0, total: 3, carrier: "c".into(), carrier_message_id: cid };
        store.commit_one(part0).await.unwrap();
        // Final on one part's receipt although two parts never went: it leaves the queue.
        let m = store.message(&id).unwrap().unwrap();
        assert_eq!(m.status, Status::Undeliverable);
        assert!(m.history.len() <= smsgate::message::MAX_HISTORY, "{} history entries", m.history.len());
        // Counters and entries of days long gone.
        let old_day = "19990101";
        store
            .commit(vec![
                Op::Put {
                    key: layout::inbound(round),
                    value: format!("{{\"seq\":{round},\"received_ms\":1}}").into_bytes(),
                },
                Op::Put {
                    key: [b"f/idx\0cat\0".as_slice(), old_day.as_bytes()].concat(),
                    value: 1u64.to_be_bytes().to_vec(),
                },
                Op::Put { key: layout::usage(&format!("k{round}"), old_day), value: 1u64.to_be_bytes().to_vec() },
                Op::Put {
                    key: layout::idempotency("k", &format!("i{round}")),
                    value: serde_json::to_vec(&smsgate::store::IdempotencyRecord {
                        body_hash: String::new(),
                        status: 202,
                        response: serde_json::json!({}),
                        created_ms: 1,
                    })
                    .unwrap(),
                },
                // A receipt for an id that never comes.
                receipt(&format!("never{round}"), delivered()),
            ])
            .await
            .unwrap();
    }
    let size = |store: &Store| std::fs::metadata(store.path().join("db")).map(|m| m.len()).unwrap_or(0);
    let record_len = store.key_count(b"m/").unwrap();
    assert_eq!(record_len, 100);
    println!("store after the soak: {} bytes", size(&store));
    // Retention (metadata kept 0 days here) and the hourly sweep.
    let now = smsgate::message::now_ms() + long_ago;
    let retention = RetentionConfig { metadata_days: 0, ..RetentionConfig::default() };
    smsgate::maintenance::pass(&store, &retention, now).await.unwrap();
    store.sweep(now, 0).await.unwrap();
    assert_eq!(
        count(&store),
        baseline,
        "keys per prefix {:?}",
        prefixes.map(|p| String::from_utf8_lossy(p).into_owned())
    );
}

/// A backup copies the store as it was at one point of the write order while commits go on:
/// each commit during the copy adds a key, changes one and deletes one, and the backup holds
/// exactly the commits before its point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_is_consistent_and_commits_go_on_during_the_copy() {
    let n: usize = std::env::var("SMSGATE_BACKUP_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let crypto = keys();
    let store = Store::open(dir.path(), &StoreOptions::default(), crypto.clone()).unwrap();
    let key = |prefix: &str, i: usize| format!("{prefix}/{i:08}").into_bytes();
    for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
        let ops = chunk.iter().map(|&i| Op::Put { key: key("t", i), value: vec![b'o'; 200] }).collect();
        store.commit(ops).await.unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut j = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && j < n / 2 {
                let started = std::time::Instant::now();
                store
                    .commit(vec![
                        Op::Put { key: key("n", j), value: b"new".to_vec() },
                        Op::Put { key: key("t", j), value: b"updated".to_vec() },
                        Op::Delete { key: key("t", n / 2 + j) },
                        Op::Put { key: b"last".to_vec(), value: j.to_be_bytes().to_vec() },
                    ])
                    .await
                    .unwrap();
                latencies.push((std::time::Instant::now(), started.elapsed()));
                j += 1;
            }
            latencies
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let out = dir.path().join("backup.bin");
    let started = std::time::Instant::now();
    let records = store.backup(&out, Vec::new()).await.unwrap();
    let ended = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let latencies = writer.await.unwrap();
    let during: Vec<std::time::Duration> =
        latencies.iter().filter(|(at, _)| *at > started && *at < ended).map(|(_, l)| *l).collect();
    let mut sorted = during.clone();
    sorted.sort();
    let p99 = sorted.get(sorted.len().saturating_sub(1) * 99 / 100).copied().unwrap_or_default();
    println!(
        "backup of {n} records: {records} written in {:?}; {} commits completed during the copy, p99 {p99:?}, max {:?}",
        ended - started,
        during.len(),
        sorted.last().copied().unwrap_or_default()
    );
    assert!(during.len() >= 5, "commits go on while the backup is copied");

    let contents = smsgate::store::backup::read(&out, &crypto.backup_key()).unwrap();
    let map: std::collections::HashMap<Vec<u8>, Vec<u8>> = contents.records.into_iter().collect();
    let last = map.get(b"last".as_slice()).map(|v| usize::from_be_bytes(v.as_slice().try_into().unwrap()));
    let upto = last.map(|l| l + 1).unwrap_or(0);
    for j in 0..n / 2 {
        let before = j < upto;
        assert_eq!(map.contains_key(&key("n", j)), before, "n/{j}");
        let t = map.get(&key("t", j)).unwrap();
        assert_eq!(t.as_slice() == b"updated", before, "t/{j}");
        assert_eq!(!map.contains_key(&key("t", n / 2 + j)), before, "t/{}", n / 2 + j);
    }
    assert_eq!(records as usize, map.len());
    // Besides the test's keys, only the store's own (`s/`: its key check values).
    let ours = map.keys().filter(|k| !k.starts_with(b"s/")).count();
    assert_eq!(ours, n + upto + usize::from(last.is_some()) - upto);
}

/// A day limit and a week limit on the same counter are one message, not two; both hold.
#[tokio::test]
async fn day_and_week_limits_on_one_counter_count_a_message_once() {
    use smsgate::store::{Guard, Guarded, QuotaGuard, layout};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default(), keys()).unwrap();
    let today = layout::usage("r", "20261202");
    let earlier = layout::usage("r", "20261201");
    let guard = |n: u64| Guard {
        idempotency: None,
        quotas: (0..n)
            .flat_map(|_| {
                [
                    QuotaGuard {
                        key: today.clone(),
                        also: vec![],
                        amount: 1,
                        adds: true,
                        limit: 5,
                        label: "day".into(),
                    },
                    QuotaGuard {
                        key: today.clone(),
                        also: vec![earlier.clone()],
                        amount: 1,
                        adds: false,
                        limit: 3,
                        label: "week".into(),
                    },
                ]
            })
            .collect(),
    };
    store.commit(vec![Op::Put { key: earlier.clone(), value: 1u64.to_be_bytes().to_vec() }]).await.unwrap();
    assert!(matches!(store.commit_guarded(vec![], Some(guard(1))).await.unwrap(), Guarded::Applied(_)));
    assert_eq!(store.counter(&today).unwrap(), 1, "one message counts once");
    // A batch of two to the same number would make 4 in the week: refused whole.
    let refused = store.commit_guarded(vec![], Some(guard(2))).await.unwrap();
    assert!(matches!(refused, Guarded::QuotaExceeded { ref label, .. } if label == "week"), "{refused:?}");
    assert_eq!(store.counter(&today).unwrap(), 1, "a refusal leaves nothing");
    assert!(matches!(store.commit_guarded(vec![], Some(guard(1))).await.unwrap(), Guarded::Applied(_)));
    assert!(matches!(store.commit_guarded(vec![], Some(guard(1))).await.unwrap(), Guarded::QuotaExceeded { .. }));
    assert_eq!(store.counter(&today).unwrap(), 2);
}

/// A backup file written here, independently of the gateway's writer: `version` 2 ends in
/// the keyed MAC, 1 in a plain SHA-256.
fn craft_backup(
    version: u8,
    records: &[(&[u8], &[u8])],
    files: &[(&str, &[u8])],
    mac_key: &ring::hmac::Key,
) -> Vec<u8> {
    let mut b = format!("SMSGATE-BACKUP{}\n", char::from(version)).into_bytes();
    for (k, v) in records {
        b.push(1);
        b.extend((k.len() as u32).to_be_bytes());
        b.extend(*k);
        b.extend((v.len() as u32).to_be_bytes());
        b.extend(*v);
    }
    for (name, bytes) in files {
        b.push(2);
        b.extend((name.len() as u16).to_be_bytes());
        b.extend(name.as_bytes());
        b.extend((bytes.len() as u64).to_be_bytes());
        b.extend(*bytes);
    }
    b.push(0);
    let tag = match version {
        1 => ring::digest::digest(&ring::digest::SHA256, &b).as_ref().to_vec(),
        _ => ring::hmac::sign(mac_key, &b).as_ref().to_vec(),
    };
    b.extend(tag);
    b
}

#[test]
fn restore_writes_files_only_under_audit_and_never_over_existing_ones() {
    let crypto = keys();
    let mac_key = crypto.backup_key();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("crafted.backup");
    let records: &[(&[u8], &[u8])] = &[(b"t/1", b"one")];
    // Even a correctly signed file cannot put anything outside audit/: not the store itself,
    // not the admin socket's place, not a path that climbs out.
    for name in ["store/db", "admin.sock", "audit/../store/db", "/etc/passwd", "audit", "./audit/x"] {
        let data = tmp.path().join(format!("data-{}", name.len()));
        let _ = std::fs::remove_dir_all(&data);
        std::fs::write(&file, craft_backup(2, records, &[(name, b"evil")], &mac_key)).unwrap();
        let e = smsgate::store::backup::restore(&file, &data, &crypto).unwrap_err().to_string();
        assert!(e.contains("only under audit/"), "{name}: {e}");
        assert!(!data.join("store").exists(), "{name}: nothing restored");
    }
    // Nor over a file that exists.
    let data = tmp.path().join("data-existing");
    std::fs::create_dir_all(data.join("audit")).unwrap();
    std::fs::write(data.join("audit/audit.jsonl"), "kept").unwrap();
    std::fs::write(&file, craft_backup(2, records, &[("audit/audit.jsonl", b"evil")], &mac_key)).unwrap();
    let e = smsgate::store::backup::restore(&file, &data, &crypto).unwrap_err().to_string();
    assert!(e.contains("exists already"), "{e}");
    assert_eq!(std::fs::read_to_string(data.join("audit/audit.jsonl")).unwrap(), "kept");
    // A proper one restores, private.
    let data = tmp.path().join("data-ok");
    std::fs::write(&file, craft_backup(2, records, &[("audit/audit.jsonl", b"{}\n")], &mac_key)).unwrap();
    let r = smsgate::store::backup::restore(&file, &data, &crypto).unwrap();
    assert_eq!((r.records, r.files, r.authenticated), (1, 1, true));
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(&data.join("audit")), mode(&data.join("audit/audit.jsonl"))), (0o700, 0o600));
}

#[test]
fn version_1_backups_restore_but_say_they_are_unauthenticated() {
    let crypto = keys();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("v1.backup");
    std::fs::write(&file, craft_backup(1, &[(b"t/1", b"one")], &[], &crypto.backup_key())).unwrap();
    let r = smsgate::store::backup::restore(&file, &tmp.path().join("data"), &crypto).unwrap();
    assert_eq!((r.records, r.authenticated), (1, false));
    // A damaged version 1 file is still refused by its checksum.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let e = smsgate::store::backup::restore(&file, &tmp.path().join("data2"), &crypto).unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
}
