//! Blocking helpers over `std::os::unix::net`.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use zeroize::Zeroize;

use crate::codec::{encode, Decoder};

/// A framed, blocking channel session over a Unix stream. [`Conn::try_clone`] gives a second
/// handle for a writer thread (frames are written with one `write_all` each, so two threads must
/// not write through clones concurrently without their own lock).
#[derive(Debug)]
pub struct Conn {
    stream: UnixStream,
    dec: Decoder,
    out: Vec<u8>,
}

impl Conn {
    /// Wraps a connected stream.
    pub fn new(stream: UnixStream) -> Self {
        Conn { stream, dec: Decoder::new(), out: Vec::new() }
    }

    /// Connects to the engine's socket.
    pub fn connect(path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(Self::new(UnixStream::connect(path)?))
    }

    /// The underlying stream (for timeouts, non-blocking mode, polling).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Another handle on the same session with its own buffers.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self::new(self.stream.try_clone()?))
    }

    /// Sends one message.
    pub fn send<T: Serialize>(&mut self, msg: &T) -> io::Result<()> {
        self.out.clear();
        encode(msg, &mut self.out).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let r = self.stream.write_all(&self.out);
        self.out.zeroize();
        r
    }

    /// The next message; `Ok(None)` when the peer closed the stream between frames. Honors the
    /// stream's read timeout (then `WouldBlock` / `TimedOut`), and in non-blocking mode returns
    /// `WouldBlock` when no whole frame is buffered.
    pub fn recv<T: DeserializeOwned>(&mut self) -> io::Result<Option<T>> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(m) = self.dec.decode::<T>().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))? {
                return Ok(Some(m));
            }
            let n = match self.stream.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return if self.dec.buffered() == 0 {
                    Ok(None)
                } else {
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "channel closed inside a frame"))
                };
            }
            self.dec.push(&buf[..n]);
            buf[..n].zeroize();
        }
    }
}

/// Creates the engine's listening socket at `path`: the parent directory is created with mode
/// 0700 if missing, a stale socket file left by a dead engine is replaced (a live one is an
/// error), and the socket gets mode 0600.
pub fn listen(path: impl AsRef<Path>) -> io::Result<UnixListener> {
    let path = path.as_ref();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{}: another engine is listening there", path.display()),
                ));
            }
            fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    #[test]
    fn session_over_a_real_socket() {
        let dir = std::env::temp_dir().join(format!("ipsec-channel-test-{}", std::process::id()));
        let path = dir.join("sub/ctl.sock");
        let l = listen(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        // A second engine on the same path is refused while the first listens.
        assert_eq!(listen(&path).unwrap_err().kind(), io::ErrorKind::AddrInUse);

        let server = std::thread::spawn(move || {
            // The first connection is listen()'s liveness probe, which closes at once.
            let (mut c, first) = loop {
                let (s, _) = l.accept().unwrap();
                let mut c = Conn::new(s);
                let _ = c.send(&EngineMsg::Hello {
                    version: PROTOCOL_VERSION,
                    engine: "t".into(),
                    boot_id: 1,
                    control_sas: 0,
                });
                if let Ok(Some(m)) = c.recv::<ControlMsg>() {
                    break (c, m);
                }
            };
            assert!(matches!(first, ControlMsg::Hello { .. }));
            let mut n = 1;
            while let Some(m) = c.recv::<ControlMsg>().unwrap() {
                if let ControlMsg::Request { id, .. } = m {
                    c.send(&EngineMsg::Reply { id, result: Ok(Response::Pong) }).unwrap();
                }
                n += 1;
            }
            n
        });
        let mut c = Conn::connect(&path).unwrap();
        let hello: EngineMsg = c.recv().unwrap().unwrap();
        assert!(matches!(hello, EngineMsg::Hello { version: PROTOCOL_VERSION, .. }));
        c.send(&ControlMsg::Hello { version: PROTOCOL_VERSION, client: "t".into() }).unwrap();
        for id in 0..100 {
            c.send(&ControlMsg::Request { id, req: Request::Ping }).unwrap();
            assert_eq!(c.recv::<EngineMsg>().unwrap(), Some(EngineMsg::Reply { id, result: Ok(Response::Pong) }));
        }
        drop(c);
        assert_eq!(server.join().unwrap(), 101);
        // The engine died: its socket file is stale and a new engine takes the path over.
        let _l = listen(&path).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
