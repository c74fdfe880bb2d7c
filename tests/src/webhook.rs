//! A loopback HTTP server standing in for an operator's webhook: it records every request's
//! JSON body and answers as the test tells it (a status and body per request, or never).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// What the server answers to one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// This status and JSON body.
    Answer(u16, String),
    /// No answer at all: the connection stays open and silent.
    Hang,
}

/// Decides the reply to the `n`th request (0-based) with JSON body `body`.
pub type Behaviour = Box<dyn Fn(usize, &Value) -> Reply + Send + Sync>;

/// The server; stops when dropped.
pub struct HookServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Value>>>,
    authorizations: Arc<Mutex<Vec<Option<String>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HookServer {
    /// Listens on 127.0.0.1 at a free port.
    pub fn start(behaviour: Behaviour) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the webhook server")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let authorizations = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let behaviour = Arc::new(behaviour);
        let thread = {
            let (requests, authorizations, stop) =
                (Arc::clone(&requests), Arc::clone(&authorizations), Arc::clone(&stop));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let seen =
                                Seen { requests: Arc::clone(&requests), authorizations: Arc::clone(&authorizations) };
                            let (behaviour, stop) = (Arc::clone(&behaviour), Arc::clone(&stop));
                            thread::spawn(move || serve(stream, &seen, &behaviour, &stop));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Ok(Self { addr, requests, authorizations, stop, thread: Some(thread) })
    }

    /// `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The request bodies so far, in order of arrival.
    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().map(|requests| requests.clone()).unwrap_or_default()
    }

    /// Each request's `Authorization` header, in order of arrival.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.authorizations.lock().map(|seen| seen.clone()).unwrap_or_default()
    }

    /// Waits until `count` requests have arrived.
    pub fn wait_for(&self, count: usize, timeout: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if requests.len() >= count {
                return Ok(requests);
            }
            if Instant::now() > deadline {
                bail!("{} webhook requests after {timeout:?}, expected {count}: {requests:#?}", requests.len());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HookServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the server records of each request.
struct Seen {
    requests: Arc<Mutex<Vec<Value>>>,
    authorizations: Arc<Mutex<Vec<Option<String>>>>,
}

/// One request, answered with `Connection: close`.
fn serve(stream: TcpStream, seen: &Seen, behaviour: &Behaviour, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorization = Some(value.trim().to_owned());
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let n = {
        let (Ok(mut requests), Ok(mut authorizations)) = (seen.requests.lock(), seen.authorizations.lock()) else {
            return;
        };
        requests.push(body.clone());
        authorizations.push(authorization);
        requests.len() - 1
    };
    match behaviour(n, &body) {
        Reply::Answer(status, answer) => {
            let _ = write!(
                writer,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
        Reply::Hang => {
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
