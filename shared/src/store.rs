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
