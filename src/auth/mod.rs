//! Proxy-path authentication: the verifier (key → identity, cached), scope checks, usage marks.

pub mod limiter;
pub mod scope;
pub mod usage;
pub mod verifier;

pub use verifier::{ApiKeyIdentity, AuthFailure, Verifier};
