//! The test proxy on its own: an echo server behind it answers, a cut stops it (open and new
//! connections alike), and a restore brings it back.

#[path = "common/proxy.rs"]
mod proxy;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use proxy::Proxy;

/// How long a read waits before the test calls the connection dead.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Echoes every connection back; stops when dropped.
struct Echo {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Echo {
    fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopping);
        let acceptor = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut reader = stream.try_clone().unwrap();
                    let mut writer = stream;
                    let _ = io::copy(&mut reader, &mut writer);
                });
            }
        });
        Echo {
            addr,
            stopping,
            acceptor: Some(acceptor),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Sends `text` and reads as many bytes back.
fn round_trip(stream: &mut TcpStream, text: &str) -> io::Result<String> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.write_all(text.as_bytes())?;
    let mut answer = vec![0; text.len()];
    stream.read_exact(&mut answer)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn connect_and_echo(proxy: &Proxy, text: &str) -> io::Result<String> {
    round_trip(&mut TcpStream::connect(proxy.addr())?, text)
}

#[test]
fn a_cut_drops_open_and_new_connections_until_restored() {
    let echo = Echo::start();
    let proxy = Proxy::start(echo.addr);
    let mut open = TcpStream::connect(proxy.addr()).unwrap();
    assert_eq!(round_trip(&mut open, "hello").unwrap(), "hello");
    assert_eq!(proxy.open_connections(), 1);

    proxy.cut();
    assert!(
        round_trip(&mut open, "again").is_err(),
        "the open connection is dropped"
    );
    assert!(
        connect_and_echo(&proxy, "new").is_err(),
        "a new connection is closed at once"
    );
    assert_eq!(proxy.open_connections(), 0);

    proxy.restore();
    assert_eq!(connect_and_echo(&proxy, "back").unwrap(), "back");
}
