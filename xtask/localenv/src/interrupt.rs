//! Ctrl-C handling for long-running harness commands.
//!
//! The first SIGINT or SIGTERM only sets a flag: the harness notices it, stops
//! what it is doing and tears the environment down through its guards instead
//! of dying with processes left behind. Children in the harness's own process
//! group receive the terminal's SIGINT themselves and exit.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: the one thing that is async-signal-safe here.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM.
pub fn install() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only performs an atomic store.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
