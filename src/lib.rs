//! Portcullis: an API gateway security layer on Cloudflare's Pingora.
//!
//! See `docs/` for the configuration reference and the design. Module map:
//! - [`config`]: raw YAML → compile/validate → immutable [`config::Snapshot`]
//! - [`proxy`]: Pingora phases, each delegating to one module function
//! - [`gateway`]: per-request admission (limits, host, path, route)
//! - [`route`]: route table and path normalisation
//! - [`upstream`]: pools, balancing, health checks
//! - [`ratelimit`]: rate and concurrency limits (local sketch, Redis)
//! - [`forward`]: the request sent upstream
//! - [`error`]: the one mapping from decisions to HTTP responses
//! - [`audit`]: one tamper-evident record per request, and `audit verify`
//! - [`metrics`], [`admin`]: Prometheus metrics and the admin listener
//! - [`echo`]: the demo/test upstream
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod carry;
pub mod clientip;
pub mod config;
pub mod echo;
pub mod error;
pub mod forward;
pub mod frontdoor;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod route;
pub mod server;
pub mod state;
pub mod tls;
pub mod upgrade;
pub mod upstream;
