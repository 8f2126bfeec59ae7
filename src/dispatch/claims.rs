//! Messages a task is working on: the dispatcher while submitting, the API while cancelling.
//! Whoever claims first wins, so a cancel and a dispatch of one message never interleave. A
//! claim is a guard: it is given back when the guard drops, also when its task panics.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The set of claimed message ids.
#[derive(Default)]
pub struct Claims(Mutex<HashSet<String>>);

/// A claim on one message; released on drop.
pub struct ClaimGuard {
    claims: Arc<Claims>,
    id: String,
}

impl Claims {
    /// Takes the message; `None` if someone else has it.
    pub fn claim(self: &Arc<Self>, id: &str) -> Option<ClaimGuard> {
        let taken = self.0.lock().map(|mut s| s.insert(id.to_string())).unwrap_or(false);
        taken.then(|| ClaimGuard { claims: self.clone(), id: id.to_string() })
    }

    /// Whether someone has the message now.
    pub fn is_claimed(&self, id: &str) -> bool {
        self.0.lock().map(|s| s.contains(id)).unwrap_or(false)
    }
}

impl ClaimGuard {
    /// The claimed message.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let mut set = match self.claims.0.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        set.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_exclusive_and_released_on_drop_even_in_a_panic() {
        let c = Arc::new(Claims::default());
        let g = c.claim("a").unwrap();
        assert!(c.claim("a").is_none());
        drop(g);
        assert!(c.claim("a").is_some(), "the temporary guard above was dropped at once");
        let c2 = c.clone();
        let _ = std::thread::spawn(move || {
            let _g = c2.claim("b").unwrap();
            panic!("boom");
        })
        .join();
        assert!(!c.is_claimed("b"), "a panicking holder gives its claim back");
    }
}
