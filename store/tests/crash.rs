//! Crash safety: a child process commits outcomes through the batch writer
//! and prints each committed seq; the parent SIGKILLs it at random moments,
//! reopens the file and checks that everything printed is there, with its
//! body, and that the tables agree.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::state;
use polld_store::{NewVersion, Outcome, Store, WriterConfig, hash_body};

const CHILD_ENV: &str = "POLLD_STORE_TEST_CRASH";
const TASKS: usize = 8;
const KEEP: u32 = 4;
/// Each child stops by itself after this many outcomes per task.
const PER_TASK: usize = 300;

/// The body a token stands for: some tokens repeat (shared bodies, stored
/// once), the others are unique.
fn body_of(token: &str) -> Vec<u8> {
    format!("{token};").repeat(40).into_bytes()
}

#[test]
#[ignore = "child process of killed_writers_lose_nothing_printed; it runs this"]
fn crash_child() {
    let path = PathBuf::from(std::env::var(CHILD_ENV).expect("run by the crash test"));
    let round = std::env::var("POLLD_STORE_TEST_ROUND").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Every commit walks on in the state log's rolling fold, and with
        // eight watches a cycle ends every few commits: kills land in folds.
        let store = Store::open(&path).unwrap();
        let (writer, task) = store.spawn_writer(WriterConfig {
            max_batch: 32,
            max_delay: Duration::from_millis(1),
        });
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let writer = writer.clone();
            let round = round.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("w{t}");
                for i in 0..PER_TASK {
                    let token = if i % 5 == 0 {
                        format!("shared{}", i % 3)
                    } else {
                        format!("{round}-{t}-{i}")
                    };
                    let body = body_of(&token);
                    let mut s = state(&id);
                    // The cursor commits with the version it came with.
                    s.cursor = Some(token.clone());
                    let c = writer
                        .submit(Outcome {
                            state: s.into(),
                            new_version: Some(NewVersion {
                                hash: hash_body(&body),
                                body,
                                content_type: None,
                                headers: vec![],
                                fetched_at_ms: 1,
                            }),
                            events: vec![],
                            keep_versions: KEEP,
                        })
                        .await
                        .unwrap();
                    println!("SEQ {} {id} {} {token}", c.seqs[0], c.version.unwrap());
                }
            }));
        }
        drop(writer);
        for t in tasks {
            t.await.unwrap();
        }
        task.await.unwrap().unwrap();
        store.close().unwrap();
    });
}

#[test]
fn killed_writers_lose_nothing_printed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("polld.redb");
    let mut x = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {x}");
    let mut printed: Vec<(u64, String, u64, String)> = Vec::new();
    let mut kills = 0;
    for round in 0..24 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // 0 kills the child while it opens (and maybe repairs) the file.
        let wanted = (x % 160) as usize;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .env("POLLD_STORE_TEST_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Kept open until the child is killed: a child whose stdout closed
        // would die of its next line (a panic on the broken pipe), not of
        // the kill.
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = 0;
        // Bounded: the child ends by itself after TASKS * PER_TASK lines.
        for line in lines.by_ref().map_while(Result::ok) {
            if seen >= wanted {
                break;
            }
            let Some(rest) = line.split("SEQ ").nth(1) else {
                continue;
            };
            let f: Vec<&str> = rest.split(' ').collect();
            printed.push((
                f[0].parse().unwrap(),
                f[1].to_owned(),
                f[2].parse().unwrap(),
                f[3].to_owned(),
            ));
            seen += 1;
        }
        // std's kill is SIGKILL on Unix. It also succeeds on a child that
        // has exited but was not waited for: only the exit status tells
        // whether the kill is what ended it.
        child.kill().unwrap();
        if killed(child.wait().unwrap()) {
            kills += 1;
        }
        drop(lines);

        let store = Store::open(&path).unwrap();
        store.check().unwrap();
        for (seq, id, version, token) in &printed {
            let c = store.changes_after(seq - 1, 1).unwrap();
            assert_eq!(
                (c[0].seq, &c[0].watch, c[0].version),
                (*seq, id, Some(*version)),
                "round {round}"
            );
            let s = store.watch(id).unwrap().unwrap();
            if *version + u64::from(KEEP) > s.latest_version.unwrap() {
                let (_, body) = store.body(id, *version).unwrap().expect("retained version");
                assert_eq!(body, body_of(token), "round {round}: {id}/{version}");
            }
        }
        // Version and cursor were one transaction.
        for s in store.all_watches().unwrap() {
            let (_, body) = store
                .body(&s.id, s.latest_version.unwrap())
                .unwrap()
                .unwrap();
            assert_eq!(
                body,
                body_of(s.cursor.as_deref().unwrap()),
                "round {round}: {}",
                s.id
            );
        }
        store.close().unwrap();
    }
    // Most rounds must end in a kill mid-write, not in a child that had
    // finished (or failed) by itself.
    assert!(kills >= 20, "only {kills} of 24 children were killed");
    assert!(!printed.is_empty());
}

/// Whether the child died of the SIGKILL that `Child::kill` sends.
#[cfg(unix)]
fn killed(status: ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(9)
}

/// Elsewhere (Windows) `Child::kill` terminates the child with exit code 1;
/// a child that panics exits with 101.
#[cfg(not(unix))]
fn killed(status: ExitStatus) -> bool {
    status.code() == Some(1)
}
