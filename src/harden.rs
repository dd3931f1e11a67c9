//! Process hardening: what keeps the key and plaintext out of swap, core files and freed
//! memory, for the whole process rather than only the buffers that are known to hold them.
//!
//! The arena ([`crate::arena`]) locks the cache and the key's page, but the SDK, the
//! signer and hyper copy header values (the key's base64) and bodies (plaintext) into ordinary
//! heap buffers that ssecfs never sees. Three measures cover those copies:
//! - the binary's global allocator wipes every block when it is freed (`zeroizing-alloc`,
//!   installed in `main.rs`), so a freed copy does not linger;
//! - [`lock_all_memory`] (`mlockall`, as vault and gpg-agent do) keeps every page of the daemon,
//!   heap and stacks included, out of swap;
//! - [`forbid_core_dumps`]: no core file, no ptrace or /proc/PID/mem for other users.

/// Why the daemon cannot lock all of its memory. The message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum LockAllError {
    #[error(
        "cannot lock all of the daemon's memory (so that no page of it, including transient \
         copies of the key's headers and of file data, can reach swap): RLIMIT_MEMLOCK is \
         {limit} bytes and the process lacks CAP_IPC_LOCK. Raise the limit: `ulimit -l \
         unlimited` (shell), `LimitMEMLOCK=infinity` (systemd unit) or a `memlock unlimited` \
         line in /etc/security/limits.conf; or pass --no-mlockall (-o no_mlockall) to lock only \
         the cache and the key"
    )]
    Limit { limit: u64 },
    #[error("mlockall: {0}")]
    Failed(std::io::Error),
}

/// Can this process lock all of its memory, now and as it grows? Only with no limit on locked
/// memory: with `MCL_FUTURE` every later mapping (a thread stack, a malloc arena) counts in
/// full against a finite RLIMIT_MEMLOCK, and one that does not fit fails — an abort at an
/// arbitrary moment. Raises the soft limit to the hard one where that makes it unlimited.
pub fn check_lock_all() -> Result<(), LockAllError> {
    if crate::arena::has_cap_ipc_lock() {
        return Ok(());
    }
    let (soft, hard) = crate::sys::memlock_limit().map_err(LockAllError::Failed)?;
    if soft == libc::RLIM_INFINITY {
        return Ok(());
    }
    if hard == libc::RLIM_INFINITY
        && crate::sys::set_memlock_limit(libc::RLIM_INFINITY, libc::RLIM_INFINITY).is_ok()
    {
        return Ok(());
    }
    Err(LockAllError::Limit { limit: soft })
}

/// Lock every page of the process, present and future, as each is first touched
/// (`MCL_ONFAULT`: reserved but untouched memory — thread stacks, malloc arenas — costs no
/// RAM). Call [`check_lock_all`] first.
pub fn lock_all_memory() -> Result<(), LockAllError> {
    check_lock_all()?;
    crate::sys::lock_all_memory().map_err(LockAllError::Failed)?;
    ALL_LOCKED.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Set once [`lock_all_memory`] succeeded (for `ssecfs status`).
static ALL_LOCKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Is every page of this process locked?
pub fn all_memory_locked() -> bool {
    ALL_LOCKED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Make the process non-dumpable: no core files, no ptrace by other users, /proc/PID/mem closed.
pub fn forbid_core_dumps() {
    crate::sys::set_not_dumpable();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_says_what_to_set_and_how_to_opt_out() {
        let msg = LockAllError::Limit { limit: 8 << 20 }.to_string();
        for needle in [
            "LimitMEMLOCK=infinity",
            "ulimit -l",
            "--no-mlockall",
            "8388608",
        ] {
            assert!(msg.contains(needle), "{needle}: {msg}");
        }
    }
}
