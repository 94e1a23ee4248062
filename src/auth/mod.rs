//! Proxy-path authentication: the verifier (key → identity, cached), usage marks, the failed-auth limiter.

pub mod limiter;
pub mod usage;
pub mod verifier;

pub use verifier::{ApiKeyIdentity, AuthFailure, ClientAddr, Verifier};
