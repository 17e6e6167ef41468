//! Routes: which requests a rule (or a lockout login route) is about, and what a rule
//! demands of them. The first rule whose match fits the request decides; see
//! [`crate::config::NoMatchAction`] for requests no rule matches.
//!
//! - [`matcher`]: a `match` section (hosts, path, methods), compiled into a [`Matcher`];
//! - [`rule`]: a `rules[]` entry, compiled into a [`Rule`].

pub mod matcher;
pub mod rule;

pub(crate) use matcher::compile_match;
pub use matcher::{HostMatcher, MatchConfig, Matcher, PathMatcher};
pub(crate) use rule::compile_rule;
pub use rule::{
    is_cors_preflight, Requirement, RequirementConfig, RolesConfig, RolesRequirement, Rule, RuleConfig,
};
