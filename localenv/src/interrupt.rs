//! Ctrl-C handling for long-running harness commands.
//!
//! The first SIGINT or SIGTERM only sets a flag: the harness notices it, stops
//! what it is doing and tears the environment down through its guards instead
//! of dying with processes left behind. Children in the harness's own process
//! group receive the terminal's SIGINT themselves and exit.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SigHandler, Signal};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: std::ffi::c_int) {
    // Only an atomic store: the one thing that is async-signal-safe here.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM.
// localenv's one unsafe call: installing a signal handler has no safe API,
// because the handler must be async-signal-safe, which the compiler cannot check.
#[allow(unsafe_code)]
pub fn install() {
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only performs an atomic store.
        let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::Handler(on_signal)) };
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
