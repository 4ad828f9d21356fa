//! formwarden's library: all logic of the contact-form backend. The executables in `bins/`
//! parse a request, call [`endpoint`] and write the answer; everything else lives here,
//! one module per concept. See ARCHITECTURE.md for the code map and the invariants.
#![deny(missing_docs)]
// Unit tests set up and inspect their fixtures with std::fs directly; the library's own
// code is held to the filesystem seam by shared/clippy.toml in every non-test build.
#![cfg_attr(
    test,
    allow(
        clippy::disallowed_methods,
        reason = "test fixtures are made and read with std::fs"
    )
)]

pub mod admin;
mod alloc;
pub mod app;
pub mod atomic;
pub mod captcha;
pub mod captcha_audio;
pub mod captcha_image;
pub mod cgi;
pub mod check;
pub mod config;
pub mod deadline;
pub mod delivery;
pub mod endpoint;
pub mod error;
pub mod fastcgi;
pub mod form;
pub mod fsio;
pub mod handler;
pub mod json;
pub mod layout;
pub mod lock;
pub mod mail;
#[cfg(test)]
mod model_testing;
pub mod net;
pub mod pages;
pub mod quota;
pub mod random;
pub mod ratelimit;
pub mod run;
pub mod screen;
pub mod seeded;
pub mod setup;
pub mod shard;
pub mod spool;
pub mod state;
pub mod store;
pub mod sweep;
pub mod tokens;

pub use error::{Error, Result};
