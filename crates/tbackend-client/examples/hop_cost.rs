//! What one thread hop costs on this machine: two threads wake each other through a
//! futex, first free to run on any CPU, then both pinned to one CPU.
//!
//! `cargo run --release -p tbackend-client --example hop_cost`
//!
//! On the 2-vCPU dev VMs a hop between CPUs costs ~12 µs of CPU and ~20 µs of latency
//! (the idle vCPU halts, and waking it is an inter-processor interrupt through the
//! hypervisor), against ~3 µs on one CPU. A Ruby thread per request needs at least one
//! hop per answer and usually a second for the GVL, which is what bench/RESULTS.md
//! explains the 12-thread numbers with.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: `word` is a live, aligned u32; no timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned u32.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        );
    }
}

fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity only touch it
    // and this thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// (latency per hop, CPU per hop), both in µs.
fn ping_pong(rounds: u32, pinned: bool) -> (f64, f64) {
    let word = Arc::new(AtomicU32::new(0));
    let other = word.clone();
    if pinned {
        pin_to_cpu0();
    }
    let partner = std::thread::spawn(move || {
        if pinned {
            pin_to_cpu0();
        }
        for i in 0..rounds {
            let mine = 2 * i + 1;
            while other.load(Ordering::Acquire) != mine {
                futex_wait(&other, 2 * i);
            }
            other.store(mine + 1, Ordering::Release);
            futex_wake(&other);
        }
    });
    let (t0, c0) = (Instant::now(), process_cpu_seconds());
    for i in 0..rounds {
        word.store(2 * i + 1, Ordering::Release);
        futex_wake(&word);
        while word.load(Ordering::Acquire) != 2 * i + 2 {
            futex_wait(&word, 2 * i + 1);
        }
    }
    partner.join().expect("partner thread");
    let hops = 2.0 * f64::from(rounds);
    (
        t0.elapsed().as_secs_f64() / hops * 1e6,
        (process_cpu_seconds() - c0) / hops * 1e6,
    )
}

fn main() {
    let rounds = 100_000;
    let (free_lat, free_cpu) = ping_pong(rounds, false);
    println!("any CPU:  {free_lat:.1} µs per hop, {free_cpu:.1} µs CPU per hop");
    let (one_lat, one_cpu) = ping_pong(rounds, true);
    println!("one CPU:  {one_lat:.1} µs per hop, {one_cpu:.1} µs CPU per hop");
}
