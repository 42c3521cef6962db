//! Claims: who runs an event or sends an action is decided in the store, never in a process's
//! memory. A claimer takes rows with an atomic update that names it and sets a lease; its
//! results are recorded only while the claim is still its own, and a claimer that stops (or
//! stalls past the lease) loses its rows to the next claimer once the lease ends.

use std::fmt;
use std::sync::OnceLock;

/// One claimer: a script worker, or an instance's delivery. Unique across processes, so that
/// instances sharing a store never take each other's claims for their own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Claimer(String);

impl Claimer {
    /// The claimer `role` (e.g. `deliver`, `script-0`) of this process.
    pub fn of_this_process(role: &str) -> Claimer {
        Claimer(format!("{}/{role}", this_process()))
    }

    /// A claimer named outright, for tests of the store contract.
    pub fn named(name: &str) -> Claimer {
        Claimer(name.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Claimer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A ULID fixed at the first claim: two processes, even on one host and in one second, never
/// share it.
fn this_process() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        ulid::Generator::new()
            .generate()
            .unwrap_or_else(|overflow| overflow.commit_overflow_increment())
            .to_string()
    })
}

/// A claimed action, as delivery names it when it records a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionClaim {
    pub id: String,
    pub by: Claimer,
}
