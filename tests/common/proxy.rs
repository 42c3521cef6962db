//! A loopback TCP forwarder for tests that need a dependency to go away and come back (e.g.
//! "the database is down for 10 s") without stopping the shared server behind it. Clients
//! connect to [`Proxy::addr`]; each connection is piped to the target by two threads.
//! [`Proxy::cut`] drops every open connection and closes each new one at once, until
//! [`Proxy::restore`]. Dropping the proxy stops it and everything it started.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

struct State {
    target: SocketAddr,
    cut: AtomicBool,
    stopping: AtomicBool,
    next_id: AtomicU64,
    /// Both sockets of every open connection, so that a cut can close them.
    open: Mutex<HashMap<u64, [TcpStream; 2]>>,
}

impl State {
    fn open(&self) -> MutexGuard<'_, HashMap<u64, [TcpStream; 2]>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close_all(&self) {
        for (_, sockets) in self.open().drain() {
            close(&sockets);
        }
    }
}

impl Proxy {
    /// Forwards a free loopback port to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let addr = listener.local_addr().expect("the proxy's address");
        let state = Arc::new(State {
            target,
            cut: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        });
        let accepting = Arc::clone(&state);
        let acceptor = std::thread::spawn(move || accept_all(&listener, &accepting));
        Proxy {
            addr,
            state,
            acceptor: Some(acceptor),
        }
    }

    /// Where clients connect instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection; new ones are closed as soon as they are accepted.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        self.state.close_all();
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }

    /// How many connections are being forwarded now.
    pub fn open_connections(&self) -> usize {
        self.state.open().len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        self.state.close_all();
        // Wakes the acceptor, which then sees `stopping`.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_all(listener: &TcpListener, state: &Arc<State>) {
    let mut pipes = Vec::new();
    for client in listener.incoming() {
        if state.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(client) = client else { continue };
        if state.cut.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        if let Ok(forwarding) = forward(client, state) {
            pipes.extend(forwarding);
        }
        pipes.retain(|pipe: &JoinHandle<()>| !pipe.is_finished());
    }
    state.close_all();
    for pipe in pipes {
        let _ = pipe.join();
    }
}

/// Connects `client` to the target and starts piping both ways.
fn forward(client: TcpStream, state: &Arc<State>) -> io::Result<[JoinHandle<()>; 2]> {
    let server = TcpStream::connect(state.target)?;
    let id = state.next_id.fetch_add(1, Ordering::SeqCst);
    state
        .open()
        .insert(id, [client.try_clone()?, server.try_clone()?]);
    let upstream = pipe(client.try_clone()?, server.try_clone()?, None);
    let downstream = pipe(server, client, Some((id, Arc::clone(state))));
    // A cut that came while this connection was being set up missed it.
    if state.cut.load(Ordering::SeqCst) {
        state.close_all();
    }
    Ok([upstream, downstream])
}

/// Copies `from` to `to` until either side ends, then closes both; `forget` removes the
/// connection from the open ones.
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    forget: Option<(u64, Arc<State>)>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = io::copy(&mut from, &mut to);
        close(&[from, to]);
        if let Some((id, state)) = forget {
            state.open().remove(&id);
        }
    })
}

fn close(sockets: &[TcpStream]) {
    for socket in sockets {
        let _ = socket.shutdown(Shutdown::Both);
    }
}
