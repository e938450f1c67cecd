//! The container end of the relay: the helper called as `srun`, `ssh` or `rsh` inside the container.
//! It sends its argv, environment, working directory and its stdin/stdout/stderr to the host, forwards
//! the signals it receives, and exits with the relayed command's status.

use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sys::signal::SigSet;

use super::protocol::{recv_message, send_message, send_request, Message, Request};
use super::{IN_RELAY_DIR, SOCKET_NAME};
use crate::process::FORWARDED;

/// Runs the relayed command; returns the exit status to exit with.
pub fn run(name: &str, args: &[String]) -> i32 {
    let path = Path::new(IN_RELAY_DIR).join(SOCKET_NAME);
    let sock = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) => {
            crate::say_error!(
                "cannot reach the host to run {name} ({}: {e}); run the job with mpiexec_docker or run_in_docker",
                path.display()
            );
            return 127;
        }
    };
    let mut argv = vec![name.to_string()];
    argv.extend(args.iter().cloned());
    let req = Request {
        argv,
        env: std::env::vars().collect(),
        cwd: std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_else(|_| "/host".into()),
    };

    // block the forwarded signals here; a thread passes them on to the host
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(*s);
    }
    let _ = set.thread_block();
    if let Err(e) = send_request(&sock, &req, &[0, 1, 2]) {
        crate::say_error!("relay: {e}");
        return 127;
    }
    if let Ok(writer) = sock.try_clone() {
        std::thread::spawn(move || loop {
            if let Ok(sig) = set.wait() {
                if send_message(&writer, &Message::Signal(sig as i32)).is_err() {
                    break;
                }
            }
        });
    }
    match recv_message(&sock) {
        Ok(Some(Message::Exit(code))) => code,
        Ok(Some(Message::Error(text))) => {
            crate::say_error!("{text}");
            127
        }
        _ => {
            crate::say_error!("the host ended the relayed {name} without a status");
            255
        }
    }
}
