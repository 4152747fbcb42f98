//! One way to lock a mutex, for every part of the crate.

/// Locks a mutex whose data stays consistent even if a holder panicked:
/// every critical section in this crate is a few assignments, inserts or
/// removals, so the data is usable after a panic elsewhere.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
