//! Relay wire format over a Unix stream socket.
//!
//! Request (client → server), sent once: a frame `u32 length, payload` where the payload is the lists
//! argv, env (`NAME=VALUE`) and the one-element list cwd, each as `u32 count` then `u32 length, bytes`
//! per string. The client's stdin, stdout and stderr ride along as `SCM_RIGHTS` with the frame's first
//! bytes, so the relayed command writes straight to the container's streams: nothing is copied.
//!
//! Then, client → server: `b'S', i32 signal` for each signal the client receives;
//! server → client: `b'X', i32 status` once, the command's shell-style exit status (128+N after
//! signal N), or `b'E', error frame` when the request is refused.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// Largest request accepted (argv and environment of one command).
pub const MAX_REQUEST: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
}

/// Messages after the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Signal(i32),
    Exit(i32),
    Error(String),
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_list<'a>(buf: &mut Vec<u8>, items: impl ExactSizeIterator<Item = &'a str>) {
    buf.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for s in items {
        put_str(buf, s);
    }
}

/// Encodes a request payload (without the frame length).
pub fn encode(req: &Request) -> Vec<u8> {
    let mut buf = Vec::new();
    put_list(&mut buf, req.argv.iter().map(String::as_str));
    let env: Vec<String> = req.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    put_list(&mut buf, env.iter().map(String::as_str));
    put_list(&mut buf, std::iter::once(req.cwd.as_str()));
    buf
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed relay request: {what}"))
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn u32(&mut self) -> io::Result<u32> {
        let (head, rest) = self.buf.split_at_checked(4).ok_or_else(|| bad("truncated"))?;
        self.buf = rest;
        Ok(u32::from_le_bytes(head.try_into().unwrap()))
    }
    fn string(&mut self) -> io::Result<String> {
        let n = self.u32()? as usize;
        let (head, rest) = self.buf.split_at_checked(n).ok_or_else(|| bad("truncated string"))?;
        self.buf = rest;
        String::from_utf8(head.to_vec()).map_err(|_| bad("not UTF-8"))
    }
    fn list(&mut self) -> io::Result<Vec<String>> {
        let n = self.u32()? as usize;
        if n > MAX_REQUEST / 4 {
            return Err(bad("list too long"));
        }
        (0..n).map(|_| self.string()).collect()
    }
}

/// Decodes a request payload.
pub fn decode(payload: &[u8]) -> io::Result<Request> {
    let mut r = Reader { buf: payload };
    let argv = r.list()?;
    let env = r
        .list()?
        .into_iter()
        .map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| bad("env entry")))
        .collect::<io::Result<Vec<_>>>()?;
    let cwd = r.list()?.into_iter().next().ok_or_else(|| bad("no cwd"))?;
    if !r.buf.is_empty() {
        return Err(bad("trailing bytes"));
    }
    if argv.is_empty() {
        return Err(bad("empty argv"));
    }
    Ok(Request { argv, env, cwd })
}

/// Sends the request with `fds` (stdin, stdout, stderr) attached.
pub fn send_request(sock: &UnixStream, req: &Request, fds: &[RawFd]) -> io::Result<()> {
    let payload = encode(req);
    let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&payload);
    let iov = [io::IoSlice::new(&frame[..4])];
    let cmsg = [ControlMessage::ScmRights(fds)];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).map_err(io::Error::from)?;
    (&*sock).write_all(&frame[4..])
}

/// Receives a request and the file descriptors that came with it.
pub fn recv_request(sock: &UnixStream) -> io::Result<(Request, Vec<OwnedFd>)> {
    let mut len = [0u8; 4];
    let mut cmsg_buf = nix::cmsg_space!([RawFd; 3]);
    let mut fds = Vec::new();
    let got = {
        let mut iov = [io::IoSliceMut::new(&mut len)];
        let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg_buf), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(io::Error::from)?;
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(received) = c {
                // SAFETY: the kernel just installed these descriptors in this process; we own them.
                fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        msg.bytes
    };
    if got < 4 {
        (&*sock).read_exact(&mut len[got..])?;
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_REQUEST {
        return Err(bad("too large"));
    }
    let mut payload = vec![0u8; n];
    (&*sock).read_exact(&mut payload)?;
    Ok((decode(&payload)?, fds))
}

pub fn send_message(mut sock: &UnixStream, msg: &Message) -> io::Result<()> {
    let mut buf = Vec::new();
    match msg {
        Message::Signal(s) => {
            buf.push(b'S');
            buf.extend_from_slice(&s.to_le_bytes());
        }
        Message::Exit(c) => {
            buf.push(b'X');
            buf.extend_from_slice(&c.to_le_bytes());
        }
        Message::Error(text) => {
            buf.push(b'E');
            put_str(&mut buf, text);
        }
    }
    sock.write_all(&buf)
}

/// Reads one message; `Ok(None)` at end of stream.
pub fn recv_message(mut sock: &UnixStream) -> io::Result<Option<Message>> {
    let mut tag = [0u8; 1];
    if sock.read(&mut tag)? == 0 {
        return Ok(None);
    }
    let mut word = [0u8; 4];
    sock.read_exact(&mut word)?;
    let n = i32::from_le_bytes(word);
    Ok(Some(match tag[0] {
        b'S' => Message::Signal(n),
        b'X' => Message::Exit(n),
        b'E' => {
            let len = (n as u32 as usize).min(64 * 1024);
            let mut text = vec![0u8; len];
            sock.read_exact(&mut text)?;
            Message::Error(String::from_utf8_lossy(&text).into_owned())
        }
        _ => return Err(bad("unknown message")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Request {
        Request {
            argv: vec!["srun".into(), "-N".into(), "2".into(), "hydra_pmi_proxy".into(), "--arg with space".into()],
            env: vec![("SLURM_JOB_ID".into(), "7".into()), ("X".into(), "a=b".into())],
            cwd: "/host/sub".into(),
        }
    }

    #[test]
    fn round_trip() {
        let req = sample();
        assert_eq!(decode(&encode(&req)).unwrap(), req);
    }

    #[test]
    fn rejects_garbage() {
        let mut bytes = encode(&sample());
        bytes.push(0);
        assert!(decode(&bytes).is_err());
        assert!(decode(&bytes[..10]).is_err());
        assert!(decode(&encode(&Request { argv: vec![], env: vec![], cwd: "/".into() })).is_err());
    }

    #[test]
    fn over_a_socket_with_descriptors() {
        let (a, b) = UnixStream::pair().unwrap();
        let req = sample();
        let file = std::fs::File::open("/dev/null").unwrap();
        send_request(&a, &req, &[file.as_raw_fd(), 1, 2]).unwrap();
        let (got, fds) = recv_request(&b).unwrap();
        assert_eq!(got, req);
        assert_eq!(fds.len(), 3);
        send_message(&a, &Message::Signal(15)).unwrap();
        send_message(&b, &Message::Exit(143)).unwrap();
        send_message(&b, &Message::Error("refused".into())).unwrap();
        assert_eq!(recv_message(&b).unwrap(), Some(Message::Signal(15)));
        assert_eq!(recv_message(&a).unwrap(), Some(Message::Exit(143)));
        assert_eq!(recv_message(&a).unwrap(), Some(Message::Error("refused".into())));
        drop(b);
        assert_eq!(recv_message(&a).unwrap(), None);
    }
}
