//! The system calls the daemon makes outside its memory arena, as safe functions.
//!
//! Together with `arena` (mappings, locking, wiping) this is the only module allowed
//! `unsafe` (`#![deny(unsafe_code)]` at the crate root): every block says why it is sound,
//! and each wrapper here takes only owned or borrowed Rust values, so callers stay safe code.

#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `Err(last OS error)` unless `r` is 0.
fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A pipe, both ends close-on-exec: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both descriptors were just created and are owned here only.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Which side of a [`fork`] this process is.
#[derive(Debug, PartialEq, Eq)]
pub enum Forked {
    Child,
    Parent,
}

/// Threads of this process, from `/proc/self/task`.
fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// fork(2), refused unless the process has a single thread: a child forked from a threaded
/// process may find a lock held forever by a thread that does not exist there.
pub fn fork() -> io::Result<Forked> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "fork refused: {threads} threads (only a single-threaded process may fork)"
        )));
    }
    // SAFETY: the process has one thread (checked above, and this thread is busy here), so
    // the child inherits no lock held by another thread.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        _ => Ok(Forked::Parent),
    }
}

/// A new session (setsid(2)): the daemon leaves the terminal's.
pub fn setsid() {
    // SAFETY: setsid takes no arguments and has no memory effects; failing (already a
    // session leader) is harmless.
    unsafe { libc::setsid() };
}

/// Point the standard descriptors 0, 1 and 2 at `fd` (`/dev/null` for a daemon).
pub fn redirect_stdio(fd: BorrowedFd<'_>) -> io::Result<()> {
    for target in 0..=2 {
        // SAFETY: dup2 onto a standard descriptor of this process; `fd` is open (borrowed).
        if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The real user and group ids of this process.
pub fn ids() -> (u32, u32) {
    // SAFETY: getuid and getgid take no arguments and cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// Fill `buf` from the kernel's RNG (getrandom(2)), retrying on EINTR and short reads.
pub fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe `rest`, which we borrow mutably.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

/// syslog(3) identity `ssecfs`, with the pid, facility daemon.
pub fn openlog() {
    // SAFETY: openlog keeps the pointer; the identifier is a 'static C string.
    unsafe { libc::openlog(c"ssecfs".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
}

/// One syslog(3) line at `priority`.
pub fn syslog(priority: libc::c_int, line: &CStr) {
    // SAFETY: a constant format string and one NUL-terminated argument.
    unsafe { libc::syslog(priority, c"%s".as_ptr(), line.as_ptr()) };
}

/// RLIMIT_MEMLOCK as (soft, hard) bytes; `libc::RLIM_INFINITY` for no limit.
pub fn memlock_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    check(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) })?;
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Set RLIMIT_MEMLOCK to (soft, hard) bytes.
pub fn set_memlock_limit(soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we own.
    check(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) })
}

/// Lock every page of the process, now and later, as it is first touched
/// (`MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT`).
pub fn lock_all_memory() -> io::Result<()> {
    // SAFETY: mlockall takes flags only.
    check(unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) })
}

/// No core dump, no ptrace attach by the same user, no /proc/PID/mem for others
/// (`PR_SET_DUMPABLE 0`).
pub fn set_not_dumpable() {
    // SAFETY: PR_SET_DUMPABLE takes an integer argument and has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threaded_process_may_not_fork() {
        // (the test harness runs tests on threads of their own)
        let e = fork().unwrap_err();
        assert!(e.to_string().contains("threads"), "{e}");
    }

    #[test]
    fn getrandom_fills_the_buffer() {
        let mut a = [0u8; 64];
        getrandom(&mut a).unwrap();
        assert!(a.iter().any(|&b| b != 0));
    }
}
