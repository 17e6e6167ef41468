//! Portcullis core: the pure logic shared by the Envoy filter and the control plane.
//!
//! Nothing here touches a host, a socket or a clock: time, randomness and I/O results
//! are passed in, so every decision is deterministic and testable natively and under
//! wasm.

pub mod account;
pub mod api_auth;
pub mod api_token;
pub mod audit;
pub mod authn;
pub mod burst;
pub mod check;
pub mod client_addr;
pub mod codec;
pub mod config;
pub mod control_plane;
pub mod error;
pub mod fleet;
pub mod jwt;
pub mod keyfetch;
pub mod lockout;
pub mod path;
pub mod ratelimit;
pub mod request;
pub mod response;
pub mod revocation;
pub mod route;
#[cfg(feature = "schema")]
pub mod schema;
pub mod signature;
pub mod stateful;
pub mod wire;

pub use error::ConfigError;
pub use request::RequestParts;
