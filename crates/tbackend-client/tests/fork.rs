//! A forked child gives up the inherited client without disturbing the parent.
//!
//! Alone in its test binary: fork(2) in a multi-threaded process is only sound if the
//! child does async-signal-safe work, which is what `forget_after_fork` promises.

mod common;

use common::*;
use tbackend_client::Status;

#[test]
fn forget_after_fork_leaves_the_parent_connection_alone() {
    let d = start(opts());
    let c = client(&d);
    assert_status(&call(&c, &ping()), Status::Ok);
    let before = c.stats();
    let child_copy = c.clone();
    // SAFETY: the child only runs forget_after_fork (atomics, close(2), no allocation,
    // no lock) and _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        child_copy.forget_after_fork();
        // SAFETY: ends the child without running the parent's atexit handlers or
        // destructors.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status}"
    );
    drop(child_copy);
    // Same connection, still working: a shutdown(2) in the child would have cut it.
    for _ in 0..10 {
        assert_status(&call(&c, &ping()), Status::Ok);
    }
    let after = c.stats();
    assert_eq!(after.connections_opened, before.connections_opened);
    assert_eq!(after.lanes[0].generation, before.lanes[0].generation);
    assert_eq!(open_connections(&d), 1);
}

#[test]
fn process_id_is_the_childs_own_after_fork() {
    let parent = tbackend_client::process_id();
    assert_eq!(parent, std::process::id());
    assert_eq!(tbackend_client::process_id(), parent, "cached");
    // SAFETY: the child reads an atomic, calls getpid(2) and _exit: all
    // async-signal-safe (the atfork registration already ran in the parent).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let seen = tbackend_client::process_id();
        // SAFETY: getpid(2) and _exit(2) only.
        let real = unsafe { libc::getpid() } as u32;
        let code = if seen == real && seen != parent { 0 } else { 1 };
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child saw the parent's pid (status {status})"
    );
    assert_eq!(tbackend_client::process_id(), parent);
}
