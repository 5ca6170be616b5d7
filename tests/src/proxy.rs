//! A TCP proxy in front of a test server, which a test can "kill" (stop listening and
//! cut every connection, as a crashed server would) and bring back on the same port.
//!
//! moto keeps its state only in memory, so killing moto itself also forgets every
//! object; killing this proxy instead makes the server vanish from the client's
//! point of view while what it stored survives, as a real S3 outage would.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

struct Running {
    stop: Arc<AtomicBool>,
    accept: JoinHandle<()>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

/// A proxy from 127.0.0.1:`port` to `upstream`.
pub struct TcpProxy {
    port: u16,
    upstream: SocketAddr,
    running: Option<Running>,
    stalled: Arc<AtomicBool>,
}

impl TcpProxy {
    /// Starts a proxy to 127.0.0.1:`upstream_port` on a free port.
    pub fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let mut proxy = Self {
            port,
            upstream: ([127, 0, 0, 1], upstream_port).into(),
            running: None,
            stalled: Arc::new(AtomicBool::new(false)),
        };
        proxy.serve(listener);
        proxy
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops listening and cuts every open connection.
    pub fn kill(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop.store(true, Ordering::SeqCst);
            let _ = running.accept.join();
            for conn in running.connections.lock().expect("proxy lock").drain(..) {
                let _ = conn.shutdown(Shutdown::Both);
            }
        }
    }

    /// Stops forwarding bytes on every connection, old and new, without closing any:
    /// a network that silently drops everything. [`unstall`](Self::unstall) resumes.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    /// Resumes forwarding after [`stall`](Self::stall).
    pub fn unstall(&self) {
        self.stalled.store(false, Ordering::SeqCst);
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) {
        assert!(self.running.is_none(), "the proxy is running");
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("rebind proxy port");
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let upstream = self.upstream;
        let stalled = self.stalled.clone();
        let accept = std::thread::spawn({
            let stop = stop.clone();
            let connections = connections.clone();
            move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let Ok(server) = TcpStream::connect(upstream) else {
                                continue;
                            };
                            let _ = client.set_nonblocking(false);
                            let mut kept = connections.lock().expect("proxy lock");
                            for s in [&client, &server] {
                                if let Ok(clone) = s.try_clone() {
                                    kept.push(clone);
                                }
                            }
                            drop(kept);
                            pump(&client, &server, stalled.clone());
                            pump(&server, &client, stalled.clone());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }
        });
        self.running = Some(Running {
            stop,
            accept,
            connections,
        });
    }
}

/// Copies `from` to `to` on a thread until either side closes, holding bytes back
/// while `stalled`.
fn pump(from: &TcpStream, to: &TcpStream, stalled: Arc<AtomicBool>) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    while stalled.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.kill();
    }
}
