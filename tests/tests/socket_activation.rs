//! Socket activation end to end: `systemd-socket-activate` (systemd's own
//! tool, what `polld.socket` does) listens, passes the socket in
//! `LISTEN_FDS` and execs `polld run`. polld must serve the API on that
//! socket, bind nothing itself, and leave a passed Unix socket's file to
//! its owner. Needs the tool from Debian's `systemd` package: `.ci/run`
//! installs it and sets `POLLD_REQUIRE_SYSTEMD=1`; elsewhere the tests say
//! that they were skipped.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use polld_tests::{Polld, free_port};

const TOOL: &str = "systemd-socket-activate";

fn tool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(TOOL))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("POLLD_REQUIRE_SYSTEMD").is_none(),
            "{TOOL} is required (POLLD_REQUIRE_SYSTEMD is set) but not on PATH"
        );
        eprintln!("skipped: {TOOL} is not installed (Debian package systemd)");
    }
    found
}

/// One request over `stream`; the whole answer.
fn exchange(mut stream: impl Read + Write, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// Retries `connect` + `/readyz` until it answers 200: the first connection
/// is what makes the tool start polld.
fn ready<S: Read + Write>(mut connect: impl FnMut() -> std::io::Result<S>) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(stream) = connect() {
            let answer = exchange(stream, "/readyz");
            if answer.starts_with("HTTP/1.1 200") {
                return answer;
            }
        }
        assert!(Instant::now() < deadline, "the API never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_api_is_served_on_a_tcp_socket_systemd_passes() {
    let Some(tool) = tool() else { return };
    let mut polld = Polld::prepare_with("", "");
    let configured: u16 = polld.api.rsplit(':').next().unwrap().parse().unwrap();
    let activated = free_port();
    let listen = format!("127.0.0.1:{activated}");
    polld.spawn_wrapped(&[tool.to_str().unwrap(), "-l", &listen]);

    ready(|| std::net::TcpStream::connect(&listen));
    let stream = std::net::TcpStream::connect(&listen).unwrap();
    let answer = exchange(stream, "/v1/watches");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", configured)).is_err(),
        "polld bound its configured `listen` as well"
    );
    assert!(
        polld.log().contains("API on the socket passed by systemd"),
        "{}",
        polld.log()
    );
    polld.signal(Signal::SIGTERM);
    let status = polld.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(status.success(), "{status:?}\n{}", polld.log());
}

#[test]
fn a_passed_unix_socket_is_served_and_its_file_left_to_its_owner() {
    let Some(tool) = tool() else { return };
    let mut polld = Polld::prepare_with("", "");
    let socket = polld.dir.path().join("api.sock");
    polld.spawn_wrapped(&[tool.to_str().unwrap(), "-l", socket.to_str().unwrap()]);

    ready(|| std::os::unix::net::UnixStream::connect(&socket));
    polld.signal(Signal::SIGTERM);
    let status = polld.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(status.success(), "{status:?}\n{}", polld.log());
    assert!(
        socket.exists(),
        "polld removed the socket file that systemd owns"
    );
}
