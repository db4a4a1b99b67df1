//! What every store edge (table, queue, secret) can fail with.
//!
//! Domain traits return [`StoreError`], so the domain never sees an SDK
//! type; the HTTP layer turns it into a problem once (`From` in
//! [`crate::error`]): a foreign cursor is the client's mistake (400), any
//! other failure makes the named store unavailable (503 + Retry-After).

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or refused the call.
    #[error("{store}: {operation}: {message}")]
    Unavailable {
        store: &'static str,
        operation: &'static str,
        message: String,
    },
    /// The store answered with something this code cannot read or build.
    #[error("{store}: a stored item is unreadable: {message}")]
    Corrupt {
        store: &'static str,
        message: String,
    },
    #[error("the cursor is not one this API returned")]
    BadCursor,
}

impl StoreError {
    pub fn corrupt(store: &'static str, cause: impl std::fmt::Display) -> Self {
        Self::Corrupt {
            store,
            message: cause.to_string(),
        }
    }

    /// The store this error is about (`None` for a client's bad cursor).
    pub fn store(&self) -> Option<&'static str> {
        match self {
            Self::Unavailable { store, .. } | Self::Corrupt { store, .. } => Some(store),
            Self::BadCursor => None,
        }
    }
}

/// A switch that makes a memory double fail the way an unreachable store
/// does, for the tests of what a handler answers then.
#[derive(Debug, Default)]
pub struct Outage(std::sync::atomic::AtomicBool);

impl Outage {
    pub fn begin(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn end(&self) {
        self.0.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// `Err` naming `store` while the outage lasts.
    pub fn check(&self, store: &'static str) -> Result<(), StoreError> {
        if self.0.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError::Unavailable {
                store,
                operation: "memory",
                message: "an outage on purpose".into(),
            });
        }
        Ok(())
    }
}

/// One page of `items` for a memory double: the cursor is the offset of
/// the next page, and anything else is a [`StoreError::BadCursor`].
pub fn page_of<T: Clone>(
    items: &[T],
    limit: usize,
    cursor: Option<&str>,
) -> Result<(Vec<T>, Option<String>), StoreError> {
    let skip = match cursor {
        None => 0,
        Some(c) => c.parse::<usize>().map_err(|_| StoreError::BadCursor)?,
    };
    let page: Vec<T> = items.iter().skip(skip).take(limit).cloned().collect();
    let next = (skip + page.len() < items.len()).then(|| (skip + page.len()).to_string());
    Ok((page, next))
}
