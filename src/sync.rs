//! Mutexes that know their place in the lock order (`fs/mod.rs`, "Lock order").
//!
//! Why: a deadlock between two locks taken in opposite orders shows up only under an unlucky
//! interleaving, which a test rarely hits. In debug builds and in the unit tests (also under
//! `cargo test --release`, as CI runs them) each thread keeps the ranks of the locks it holds,
//! and taking a lock whose rank is not above all of them panics at once, naming both: every
//! path the suite runs checks the order, whatever the timing. The release binary has plain
//! `std::sync::Mutex`es.
//!
//! Only the `std::sync::Mutex`es are ranked: they are never held across an `.await`, so a
//! thread-local record is exact (a guard is `!Send`, it cannot move to another thread). The
//! tokio locks above them (the namespace lock, the file states) are held across awaits and
//! stay as documented.

use std::ops::{Deref, DerefMut};

/// Ranks, lowest first: a lock may be taken only while every lock held has a lower rank.
pub mod rank {
    /// The block cache's LRU (`BlockCache::lru`): taken holding none of the filesystem's.
    pub const CACHE: u8 = 1;
    /// The spill tier's state (`Spill::state`): after the block cache's, if at all.
    pub const SPILL: u8 = 2;
    /// `Namespace::table`, the inode table and its listings.
    pub const TABLE: u8 = 3;
    /// `Files::map`, which files have an in-memory state.
    pub const FILES: u8 = 4;
    /// `Persister::pending`, closed files whose attributes are not stored yet.
    pub const PENDING: u8 = 5;
    /// A leaf: nothing is taken under it, not even another leaf.
    pub const LEAF: u8 = 9;

    /// The lock a rank names, for the panic message.
    pub(super) fn name(rank: u8) -> &'static str {
        match rank {
            CACHE => "BlockCache::lru",
            SPILL => "Spill::state",
            TABLE => "Namespace::table",
            FILES => "Files::map",
            PENDING => "Persister::pending",
            LEAF => "a leaf lock",
            _ => "an unranked lock",
        }
    }
}

/// A `std::sync::Mutex` of rank `RANK` (see [`rank`]). Poisoning panics, as `.lock().unwrap()`
/// did: a thread that panicked holding one of these left its state half-changed.
#[derive(Default)]
pub struct Mutex<T, const RANK: u8> {
    inner: std::sync::Mutex<T>,
}

/// A held [`Mutex`]; dropping it releases the lock and its entry in the thread's record.
pub struct MutexGuard<'a, T, const RANK: u8> {
    inner: std::sync::MutexGuard<'a, T>,
    #[cfg(any(debug_assertions, test))]
    _held: held::Entry,
}

impl<T, const RANK: u8> Mutex<T, RANK> {
    pub const fn new(value: T) -> Self {
        Mutex {
            inner: std::sync::Mutex::new(value),
        }
    }

    /// Take the lock; in debug builds and unit tests, panic first if the thread holds a lock of equal or
    /// higher rank.
    pub fn lock(&self) -> MutexGuard<'_, T, RANK> {
        #[cfg(any(debug_assertions, test))]
        held::check(RANK, std::any::type_name::<T>());
        let inner = self.inner.lock().unwrap_or_else(|_| {
            panic!("{} was poisoned by a panic", rank::name(RANK));
        });
        MutexGuard {
            inner,
            #[cfg(any(debug_assertions, test))]
            _held: held::Entry::new(RANK, std::any::type_name::<T>()),
        }
    }

    /// The value, for a caller that owns the mutex (no lock needed).
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T, const RANK: u8> Deref for MutexGuard<'_, T, RANK> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T, const RANK: u8> DerefMut for MutexGuard<'_, T, RANK> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

/// The thread's record of the ranked locks it holds (debug builds and unit tests only).
#[cfg(any(debug_assertions, test))]
mod held {
    use std::cell::RefCell;

    use super::rank;

    thread_local! {
        /// (entry id, rank, type) of each lock held, in the order taken.
        static HELD: RefCell<Vec<(u64, u8, &'static str)>> = const { RefCell::new(Vec::new()) };
        static NEXT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// Panic if taking a lock of `rank` now would break the order.
    pub(super) fn check(rank: u8, what: &'static str) {
        HELD.with_borrow(|held| {
            if let Some(&(_, top, top_what)) = held.iter().max_by_key(|(_, r, _)| *r) {
                assert!(
                    rank > top,
                    "lock order violated: taking {} (rank {rank}, {what}) while holding {} \
                     (rank {top}, {top_what}); see the lock order in fs/mod.rs",
                    rank::name(rank),
                    rank::name(top),
                );
            }
        });
    }

    /// One lock in the record, removed when the guard holding it drops (in any order).
    pub(super) struct Entry(u64);

    impl Entry {
        pub(super) fn new(rank: u8, what: &'static str) -> Entry {
            let id = NEXT.with(|n| {
                n.set(n.get() + 1);
                n.get()
            });
            HELD.with_borrow_mut(|held| held.push((id, rank, what)));
            Entry(id)
        }
    }

    impl Drop for Entry {
        fn drop(&mut self) {
            // `try_with`: a guard dropped while the thread's locals are torn down has no record
            let _ = HELD.try_with(|held| held.borrow_mut().retain(|(id, _, _)| *id != self.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_taken_in_rank_order_are_allowed() {
        let table = Mutex::<u32, { rank::TABLE }>::new(1);
        let files = Mutex::<u32, { rank::FILES }>::new(2);
        let leaf = Mutex::<u32, { rank::LEAF }>::new(3);
        let (t, f, l) = (table.lock(), files.lock(), leaf.lock());
        assert_eq!(*t + *f + *l, 6);
        drop(t); // released out of order: the record follows
        drop((f, l));
        let _f = files.lock();
        let _l = leaf.lock();
    }

    #[test]
    #[cfg(any(debug_assertions, test))]
    #[should_panic(expected = "lock order violated: taking Namespace::table")]
    fn a_lower_rank_under_a_higher_one_panics() {
        let table = Mutex::<(), { rank::TABLE }>::new(());
        let files = Mutex::<(), { rank::FILES }>::new(());
        let _f = files.lock();
        let _t = table.lock();
    }

    #[test]
    #[cfg(any(debug_assertions, test))]
    #[should_panic(expected = "while holding a leaf lock")]
    fn nothing_is_taken_under_a_leaf() {
        let a = Mutex::<(), { rank::LEAF }>::new(());
        let b = Mutex::<(), { rank::LEAF }>::new(());
        let _a = a.lock();
        let _b = b.lock();
    }

    #[test]
    #[cfg(any(debug_assertions, test))]
    fn a_violation_leaves_the_record_clean() {
        let table = Mutex::<(), { rank::TABLE }>::new(());
        let files = Mutex::<(), { rank::FILES }>::new(());
        let caught = std::panic::catch_unwind(|| {
            let _f = files.lock();
            let _t = table.lock();
        });
        assert!(caught.is_err());
        // the panic unwound `_f` (poisoning `files`): the thread may take the table again
        let _t = table.lock();
        let other = Mutex::<(), { rank::FILES }>::new(());
        let _f = other.lock();
    }
}
