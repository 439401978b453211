//! The `tbackend-testd` binary: parse flags, replay, bind, print the ready line, serve
//! until SIGTERM or SIGINT.

use std::io::Write;
use std::process::ExitCode;

use tbackend_testd::config::{Command, Config, USAGE};

fn main() -> ExitCode {
    let cfg = match Config::parse(std::env::args().skip(1)) {
        Ok(Command::Run(cfg)) => cfg,
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tbackend-testd: {e}");
            return ExitCode::from(2);
        }
    };
    // Block the stop signals before any thread exists, so every thread inherits the
    // mask and only the sigwait below receives them.
    let signals = stop_signals();
    // SAFETY: `signals` is an initialised sigset_t.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };

    let running = match tbackend_testd::server::start(cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tbackend-testd: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", running.ready_line());
    let _ = stdout.flush();
    drop(stdout);

    let mut sig: libc::c_int = 0;
    // SAFETY: valid sigset and out pointer.
    unsafe { libc::sigwait(&signals, &mut sig) };
    // Every acknowledged write already reached the OS (one write(2) per record), so
    // there is nothing to flush: exiting here loses nothing.
    eprintln!("tbackend-testd: signal {sig}, exiting");
    ExitCode::SUCCESS
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before sigaddset touches it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}
