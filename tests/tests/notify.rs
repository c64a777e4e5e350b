//! systemd notification end to end: `polld run` with `NOTIFY_SOCKET`
//! pointing at a datagram socket of the test and `WATCHDOG_USEC` set. The
//! order and content of the messages: READY=1 only once /readyz answers,
//! WATCHDOG=1 pings, RELOADING=1 (with MONOTONIC_USEC) then READY=1 (with a
//! status of what the reload did, or that it was refused) on
//! SIGHUP, STOPPING=1 on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use polld_tests::{free_port, polld_bin};

fn next_message(socket: &UnixDatagram, deadline: Instant) -> Option<String> {
    let mut buf = [0u8; 4096];
    let left = deadline.checked_duration_since(Instant::now())?;
    socket
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .unwrap();
    let n = socket.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn readyz(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request =
        format!("GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

/// A watch list with no watches in `dir`, its API on a free port.
fn empty_list(dir: &std::path::Path) -> (std::path::PathBuf, u16) {
    let port = free_port();
    let config = dir.join("watchlist.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    (config, port)
}

/// `polld run --config CONFIG`, its output discarded.
fn polld_run(config: &std::path::Path) -> Command {
    let mut command = Command::new(polld_bin());
    command
        .args(["run", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

#[test]
fn notifications_come_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let (config, port) = empty_list(dir.path());
    let mut child = polld_run(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        // 400 ms: pings every 200 ms.
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    let deadline = Instant::now() + Duration::from_secs(20);

    let first = next_message(&socket, deadline).expect("a first notification");
    assert!(
        first.lines().any(|l| l == "READY=1"),
        "READY=1 first: {first:?}"
    );
    assert!(
        readyz(port),
        "/readyz answers 200 by the time READY=1 is sent"
    );
    assert!(
        first.contains("STATUS="),
        "READY=1 comes with a status line: {first:?}"
    );

    let mut pings = 0;
    while pings < 3 {
        let message = next_message(&socket, deadline).expect("watchdog pings");
        if message.lines().any(|l| l == "WATCHDOG=1") {
            pings += 1;
        }
    }

    kill(pid, Signal::SIGHUP).unwrap();
    let reloading = loop {
        let message = next_message(&socket, deadline).expect("RELOADING=1");
        if message.contains("RELOADING=1") {
            break message;
        }
    };
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    let ready_after_reload = || loop {
        let message = next_message(&socket, deadline).expect("READY=1 after the reload");
        if message.lines().any(|l| l == "READY=1") {
            break message;
        }
        assert!(!message.contains("STOPPING"), "{message:?}");
    };
    let ready = ready_after_reload();
    assert!(
        ready.contains("STATUS=reloaded: 0 added, 0 removed, 0 changed"),
        "{ready:?}"
    );
    // A broken file: the reload is refused, and the status says so.
    std::fs::write(&config, "[daemon\n").unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    let ready = ready_after_reload();
    assert!(ready.contains("STATUS=reload refused"), "{ready:?}");

    kill(pid, Signal::SIGTERM).unwrap();
    loop {
        let message = next_message(&socket, deadline).expect("STOPPING=1");
        if message.lines().any(|l| l == "STOPPING=1") {
            break;
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// sd_notify(3): a `NOTIFY_SOCKET` starting with `@` is an abstract socket
/// (container managers and older systemd pass one). READY=1 and STOPPING=1
/// reach it.
#[cfg(target_os = "linux")]
#[test]
fn an_abstract_notify_socket_gets_ready_and_stopping() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("polld-e2e-notify-{}", std::process::id());
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&address).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (config, _port) = empty_list(dir.path());
    let mut child = polld_run(&config)
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .env_remove("WATCHDOG_USEC")
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = next_message(&socket, deadline);
    if first.is_none() {
        let _ = kill(pid, Signal::SIGKILL);
        let _ = child.wait();
    }
    let first = first.expect("READY=1 on the abstract socket");
    assert!(first.lines().any(|l| l == "READY=1"), "{first:?}");
    kill(pid, Signal::SIGTERM).unwrap();
    loop {
        let message = next_message(&socket, deadline).expect("STOPPING=1");
        if message.lines().any(|l| l == "STOPPING=1") {
            break;
        }
    }
    assert!(child.wait().unwrap().success());
}
