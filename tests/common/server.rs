//! A server process on a loopback port of its own (moto, Python's http.server), ready only once
//! it answers HTTP.
//!
//! Waiting for a plain TCP connect is not enough: two servers of one test process may be handed
//! the same free port, and a connect to a port nobody listens on yet can, rarely, connect to
//! itself (Linux picks the source port from the same range). Both made tests fail at random.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Ports already handed to a server by this test process.
static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A server child process on a loopback port, killed when dropped.
pub struct LoopbackServer {
    child: Child,
    /// The port it answers on.
    pub port: u16,
}

impl LoopbackServer {
    /// Runs `command(port)` on a port no other server of this process has had and waits (60 s at
    /// most) until it answers an HTTP request; one that exits first (its port was taken meanwhile)
    /// is started again on another port, and after five such exits the last one's stderr is the
    /// panic's message.
    pub fn start(mut command: impl FnMut(u16) -> Command) -> LoopbackServer {
        let mut said = String::new();
        for _ in 0..5 {
            let port = fresh_port();
            let log = std::env::temp_dir().join(format!("rkd-test-server-{}-{port}.log", std::process::id()));
            let mut cmd = command(port);
            let child = cmd
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {:?}: {e}", cmd.get_program()));
            let mut server = LoopbackServer { child, port };
            let t0 = Instant::now();
            loop {
                if let Some(status) = server.child.try_wait().unwrap() {
                    said = format!("{status}: {}", std::fs::read_to_string(&log).unwrap_or_default());
                    break;
                }
                // Up once it answers and is still running a moment later (an answer from
                // another process that took the port first would leave ours exiting).
                if answers_http(port) {
                    std::thread::sleep(Duration::from_millis(200));
                    if server.child.try_wait().unwrap().is_none() {
                        let _ = std::fs::remove_file(&log);
                        return server;
                    }
                    continue;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "{:?} never answered",
                    cmd.get_program()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = std::fs::remove_file(&log);
        }
        panic!("the server exited on five different ports; the last said: {said}");
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port that no server of this process has had.
fn fresh_port() -> u16 {
    let mut given = GIVEN.lock().unwrap();
    let given = given.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if given.insert(port) {
            return port;
        }
    }
}

/// Whether something on `port` answers a request with an HTTP status line (a socket connected
/// to itself reads back the request instead).
fn answers_http(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("HEAD / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 5];
    s.read_exact(&mut head).is_ok() && &head == b"HTTP/"
}
