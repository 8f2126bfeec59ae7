//! The docs hold up verbatim: every shell example in README.md and docs/*.md that talks to the
//! API (`curl`) or the CLI (`smsgate`) is run, in the order written, against a real
//! `smsgate demo`, and must do what its text says: a `# → 202` (or `# → 200 or 409`, `# →
//! exit 64`) comment is the answer it must give; without one, a curl must get a 2xx and a CLI
//! command must exit 0.
//!
//! The only rewriting is what a reader does in their head: `https://gw` is the demo's API,
//! `$KEY` its key, `--config /etc/smsgate/smsgate.toml` (or `--config …`) its config, a message
//! id in a path the last message sent, a key id the last key created, and the install paths
//! under `/etc/smsgate`, `/var/backups/smsgate` and `/var/tmp` a scratch directory (a new key
//! file path for each `init-data-keys`, which refuses to overwrite). Commands
//! that start a server that runs until stopped (`serve`, `demo`, `smsc-sim`) are not run;
//! `restore` runs against a config with an empty data directory, as its text asks.
//!
//! Runs in a network namespace with only loopback (the demo listens on fixed ports, and a
//! callback URL in an example must reach nothing).

mod common;

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// One command of a doc example.
#[derive(Debug)]
struct Example {
    file: String,
    line: usize,
    command: String,
    /// What it must answer: HTTP statuses for curl, exit codes for smsgate.
    expect: Vec<u32>,
}

/// Splits a shell block into commands: lines joined where they end in `\` or a quote is open.
fn commands(block: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    for (i, line) in block.lines().enumerate() {
        if current.is_empty() {
            start = i;
        }
        let (text, continued) = match line.trim_end().strip_suffix('\\') {
            Some(t) => (t, true),
            None => (line, false),
        };
        current.push_str(text);
        current.push(if continued { ' ' } else { '\n' });
        if !continued && current.matches('\'').count().is_multiple_of(2) {
            out.push((start, std::mem::take(&mut current).trim().to_string()));
        }
    }
    out
}

/// The command without its trailing comment, and the comment.
fn split_comment(command: &str) -> (String, String) {
    let (mut single, mut double) = (false, false);
    let bytes = command.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\'' if !double => single = !single,
            b'"' if !single => double = !double,
            b'#' if !single && !double && (i == 0 || bytes[i - 1].is_ascii_whitespace()) => {
                return (command[..i].trim().to_string(), command[i + 1..].trim().to_string());
            }
            _ => {}
        }
    }
    (command.trim().to_string(), String::new())
}

/// Every curl/smsgate command in the shell blocks of `files`, in order.
fn examples(root: &Path, files: &[PathBuf]) -> Vec<Example> {
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path).unwrap();
        let name = path.strip_prefix(root).unwrap_or(path).display().to_string();
        let mut in_block = false;
        let mut block = String::new();
        let mut block_line = 0;
        for (n, line) in text.lines().enumerate() {
            if let Some(info) = line.strip_prefix("```") {
                if in_block {
                    for (offset, cmd) in commands(&block) {
                        let (cmd, comment) = split_comment(&cmd);
                        let cmd = cmd.strip_prefix("sudo ").unwrap_or(&cmd).to_string();
                        if !(cmd.starts_with("curl ") || cmd.starts_with("smsgate ")) {
                            continue;
                        }
                        let expect = comment
                            .split_once('→')
                            .map(|(_, e)| {
                                e.split(|c: char| !c.is_ascii_digit()).filter_map(|d| d.parse().ok()).collect()
                            })
                            .unwrap_or_default();
                        out.push(Example { file: name.clone(), line: block_line + offset + 2, command: cmd, expect });
                    }
                    block.clear();
                    in_block = false;
                } else if matches!(info.trim(), "sh" | "bash" | "shell") {
                    in_block = true;
                    block_line = n;
                }
                continue;
            }
            if in_block {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    out
}

/// What the reader substitutes; `n` keeps paths of different examples apart.
fn rewrite(command: &str, n: usize) -> String {
    let ulid = regex::Regex::new(r"/v1/messages/[0-9A-Z]{26}\b").unwrap();
    let key_id = regex::Regex::new(r"keys revoke [0-9a-f]{12}\b").unwrap();
    let config = regex::Regex::new(r"--config (/etc/smsgate/smsgate\.toml|…|\.\.\.)").unwrap();
    // `$$` is a literal `$` in a regex replacement.
    let config_var = if command.starts_with("smsgate restore ") { "$$RESTORE_CONFIG" } else { "$$CONFIG" };
    let c = command.replace("https://gw", "https://127.0.0.1:8443");
    let c = ulid.replace_all(&c, "/v1/messages/$$ID").into_owned();
    let c = key_id.replace_all(&c, "keys revoke $$KEY_ID").into_owned();
    let c = config.replace_all(&c, format!("--config {config_var}").as_str()).into_owned();
    c.replace("/etc/smsgate/data.keys", &format!("$WORK/keys-{n}"))
        .replace("/var/backups/smsgate/", "$WORK/backups/")
        .replace("/var/tmp/", "$WORK/")
}

fn long_running(command: &str) -> bool {
    ["smsgate serve", "smsgate demo", "smsgate smsc-sim"].iter().any(|p| command.starts_with(p))
}

#[test]
fn every_doc_example_runs_as_written() {
    if !have("curl", "curl") || !isolated("every_doc_example_runs_as_written", "") {
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let all = examples(&root, &files);
    assert!(all.len() >= 25, "the docs' examples were not found: {all:?}");

    // The demo, in a scratch directory, with the config file the CLI examples use.
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::write(w.join("demo.toml"), smsgate::demo::DEMO_TOML).unwrap();
    let restore_toml = smsgate::demo::DEMO_TOML.replace("data_dir = \"data/demo\"", "data_dir = \"restored\"");
    std::fs::write(w.join("restore.toml"), restore_toml).unwrap();
    std::fs::write(w.join("carrier-suppressions.csv"), "number\n+14155550177\n").unwrap();
    let mut demo = std::process::Command::new(env!("CARGO_BIN_EXE_smsgate"))
        .args(["demo", "--config", "demo.toml"])
        .current_dir(w)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = demo.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let token = loop {
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("the demo prints its key");
        if let Some(t) = line.split_whitespace().find(|w| w.starts_with("sgk_")) {
            break t.to_string();
        }
    };
    let api_ca = w.join("data/demo/tls/api.crt");
    std::fs::copy(w.join("data/demo/tls/smsc.crt"), w.join("acme-smsc.pem")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = Client::new("127.0.0.1:8443".parse().unwrap(), &api_ca, Some(token.clone()));
    rt.block_on(wait_ready(&client, "demo-smsc", 1));

    let mut vars: HashMap<&str, String> = HashMap::from([
        ("KEY", token),
        ("ID", "00000000000000000000000000".to_string()),
        ("KEY_ID", "000000000000".to_string()),
        ("CONFIG", w.join("demo.toml").display().to_string()),
        ("RESTORE_CONFIG", w.join("restore.toml").display().to_string()),
        ("WORK", w.display().to_string()),
    ]);
    let mut failures = Vec::new();
    let (mut ran, mut not_run) = (0, Vec::new());
    for (n, ex) in all.iter().enumerate() {
        if long_running(&ex.command) {
            not_run.push(format!("{}:{} `{}`", ex.file, ex.line, ex.command));
            continue;
        }
        let command = rewrite(&ex.command, n);
        let _ = std::fs::create_dir_all(w.join("backups"));
        let is_curl = command.starts_with("curl ");
        let script = if is_curl {
            format!("{command} -sS -o \"$WORK/answer\" -w '%{{http_code}}'")
        } else {
            command.replacen("smsgate ", &format!("{} ", env!("CARGO_BIN_EXE_smsgate")), 1)
        };
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .current_dir(w)
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .env("CURL_CA_BUNDLE", &api_ca)
            .output()
            .unwrap();
        ran += 1;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let got =
            if is_curl { stdout.trim().parse::<u32>().unwrap_or(0) } else { out.status.code().unwrap_or(-1) as u32 };
        let ok = match (ex.expect.is_empty(), is_curl) {
            (false, _) => ex.expect.contains(&got),
            (true, true) => (200..300).contains(&got),
            (true, false) => got == 0,
        };
        let answer =
            if is_curl { std::fs::read_to_string(w.join("answer")).unwrap_or_default() } else { stdout.clone() };
        if !ok {
            failures.push(format!(
                "{}:{}: `{}`\n  ran `{script}`\n  got {got} (expected {:?})\n  {answer}\n  {stderr}",
                ex.file, ex.line, ex.command, ex.expect
            ));
        }
        // What later examples refer to.
        if is_curl
            && got == 202
            && let Some(id) =
                serde_json::from_str::<serde_json::Value>(&answer).ok().and_then(|v| v["id"].as_str().map(String::from))
        {
            vars.insert("ID", id);
        }
        if let Some(id) = answer.lines().find_map(|l| l.strip_prefix("id:")) {
            vars.insert("KEY_ID", id.trim().to_string());
        }
    }
    let _ = demo.kill();
    let _ = demo.wait();
    println!("{ran} doc examples ran; not run (servers that run until stopped):");
    for n in &not_run {
        println!("  {n}");
    }
    assert!(
        failures.is_empty(),
        "{} doc example(s) do not do what the docs say:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn the_example_parser_reads_what_readers_read() {
    let block = "curl -X PUT https://gw/x \\\n  -d '{\"a\":\n  1}'   # → 200 or 409\nsmsgate keys list --config …\n";
    let cmds = commands(block);
    assert_eq!(cmds.len(), 2, "{cmds:?}");
    let (cmd, comment) = split_comment(&cmds[0].1);
    assert!(cmd.ends_with("1}'"), "{cmd}");
    assert_eq!(comment, "→ 200 or 409");
    assert_eq!(split_comment("curl 'a # b' # c"), ("curl 'a # b'".to_string(), "c".to_string()));
    assert_eq!(
        rewrite("smsgate keys revoke 3f9a0c12ab34 --config /etc/smsgate/smsgate.toml", 1),
        "smsgate keys revoke $KEY_ID --config $CONFIG"
    );
    assert_eq!(
        rewrite("curl https://gw/v1/messages/01M82F057BP4Q048Y88V64B3GP", 1),
        "curl https://127.0.0.1:8443/v1/messages/$ID"
    );
}
