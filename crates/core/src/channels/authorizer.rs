//! Namespace policies and the one authorizer every subscribe and publish
//! asks (default deny).

use std::collections::HashMap;
use std::time::Duration;

use crate::auth::Identity;

use super::names::{namespace, pattern_matches, valid_name};

/// Publications a `thread:<id>` channel keeps unless configured (SPEC §6).
pub const THREAD_HISTORY_SIZE: usize = 1000;
/// How long it keeps them unless configured.
pub const THREAD_HISTORY_TTL: Duration = Duration::from_secs(600);

/// Who may subscribe to channels of a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribePolicy {
    /// Any authenticated user.
    Any,
    /// `user:<sub>` of the user itself, or a thread the user owns.
    Owner,
    /// Users with this role (the `channels` claim does not count).
    Role(String),
    /// Only channels matching the token's `channels` patterns: the one
    /// policy under which that claim grants anything.
    Claim,
}

/// Who may publish from a client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishPolicy {
    /// Only the server API.
    Server,
    Any,
    Owner,
    Role(String),
}

/// Everything configured for one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespacePolicy {
    pub subscribe: SubscribePolicy,
    pub publish: PublishPolicy,
    /// Publications kept for history and recovery (0: none).
    pub history_size: usize,
    /// How long they are kept (zero: as long as they fit).
    pub history_ttl: Duration,
    pub presence: bool,
    pub join_leave: bool,
}

impl NamespacePolicy {
    pub fn new(subscribe: SubscribePolicy, publish: PublishPolicy) -> Self {
        NamespacePolicy {
            subscribe,
            publish,
            history_size: 0,
            history_ttl: Duration::ZERO,
            presence: false,
            join_leave: false,
        }
    }
}

/// Why a subscribe or publish was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("invalid channel name")]
    BadName,
    #[error("not allowed on this channel")]
    Forbidden,
}

/// Answers "may this identity subscribe to / publish in this channel?".
/// Unknown namespaces are refused: only `""` and the built-ins exist unless
/// configured.
#[derive(Debug, Clone)]
pub struct Authorizer {
    namespaces: HashMap<String, NamespacePolicy>,
}

impl Authorizer {
    /// Built-in namespaces, then the configured ones (which may override a
    /// built-in's history or presence, but `user` and `thread` stay
    /// owner-only).
    pub fn new(configured: impl IntoIterator<Item = (String, NamespacePolicy)>) -> Self {
        let mut namespaces = HashMap::new();
        namespaces.insert(
            String::new(),
            NamespacePolicy::new(SubscribePolicy::Any, PublishPolicy::Server),
        );
        namespaces.insert(
            "user".into(),
            NamespacePolicy::new(SubscribePolicy::Owner, PublishPolicy::Server),
        );
        // Run events live in `thread:<id>`: history is what makes a run
        // resumable after a reload or a dropped connection (SPEC §6).
        namespaces.insert(
            "thread".into(),
            NamespacePolicy {
                history_size: THREAD_HISTORY_SIZE,
                history_ttl: THREAD_HISTORY_TTL,
                ..NamespacePolicy::new(SubscribePolicy::Owner, PublishPolicy::Server)
            },
        );
        for (name, mut policy) in configured {
            if name == "user" || name == "thread" {
                policy.subscribe = SubscribePolicy::Owner;
                if policy.publish != PublishPolicy::Server {
                    policy.publish = PublishPolicy::Owner;
                }
            }
            namespaces.insert(name, policy);
        }
        Authorizer { namespaces }
    }

    pub fn policy(&self, channel: &str) -> Option<&NamespacePolicy> {
        self.namespaces.get(namespace(channel))
    }

    /// A valid name in a known namespace (unknown namespaces are denied).
    pub fn lookup(&self, channel: &str) -> Result<&NamespacePolicy, Denied> {
        if !valid_name(channel) {
            return Err(Denied::BadName);
        }
        self.policy(channel).ok_or(Denied::Forbidden)
    }

    /// Ownership of `user:` and `thread:` channels. A thread is owned by
    /// the user that created it: `thread_owner` is that user, which the
    /// caller looked up (asynchronously, in the thread store) for a
    /// `thread:<id>` channel; `None`, no such thread, owns nothing.
    fn owns(identity: &Identity, channel: &str, thread_owner: Option<&str>) -> bool {
        match channel.split_once(':') {
            Some(("user", sub)) => sub == &*identity.user,
            Some(("thread", _)) => thread_owner == Some(&*identity.user),
            _ => false,
        }
    }

    pub fn can_subscribe(
        &self,
        identity: &Identity,
        channel: &str,
        thread_owner: Option<&str>,
    ) -> Result<&NamespacePolicy, Denied> {
        let policy = self.lookup(channel)?;
        // The token's `channels` claim counts only where the namespace asks
        // for it (`claim`). Every other policy ignores it: a claim that
        // opened `role:` namespaces would let whoever mints tokens with
        // patterns bypass the role the operator configured, and owner-only
        // namespaces must never open to anyone but the owner.
        let allowed = match &policy.subscribe {
            SubscribePolicy::Any => true,
            SubscribePolicy::Owner => Self::owns(identity, channel, thread_owner),
            SubscribePolicy::Role(role) => identity.has_role(role),
            SubscribePolicy::Claim => identity
                .channels()
                .iter()
                .any(|p| pattern_matches(p, channel)),
        };
        allowed.then_some(policy).ok_or(Denied::Forbidden)
    }

    pub fn can_publish(
        &self,
        identity: &Identity,
        channel: &str,
        thread_owner: Option<&str>,
    ) -> Result<&NamespacePolicy, Denied> {
        let policy = self.lookup(channel)?;
        let allowed = match &policy.publish {
            PublishPolicy::Server => false,
            PublishPolicy::Any => true,
            PublishPolicy::Owner => Self::owns(identity, channel, thread_owner),
            PublishPolicy::Role(role) => identity.has_role(role),
        };
        allowed.then_some(policy).ok_or(Denied::Forbidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(user: &str, roles: &[&str], channels: &[&str]) -> Identity {
        Identity::new(user.into(), 0).with_claims(
            roles.iter().map(|s| s.to_string()).collect(),
            channels.iter().map(|s| s.to_string()).collect(),
            None,
        )
    }

    const NO_THREAD: Option<&str> = None;

    #[test]
    fn names() {
        assert!(valid_name("chat:room-1_a.b@c"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("ü"));
        assert!(!valid_name(&"a".repeat(256)));
        assert!(valid_name(&"a".repeat(255)));
        assert_eq!(namespace("chat:x:y"), "chat");
        assert_eq!(namespace("news"), "");
    }

    #[test]
    fn default_deny_and_builtins() {
        let a = Authorizer::new([(
            "chat".to_string(),
            NamespacePolicy::new(SubscribePolicy::Any, PublishPolicy::Any),
        )]);
        let alice = id("alice", &[], &[]);
        assert!(a.can_subscribe(&alice, "news", NO_THREAD).is_ok());
        assert!(a.can_publish(&alice, "news", NO_THREAD).is_err());
        assert!(a.can_subscribe(&alice, "unknown:x", NO_THREAD).is_err());
        assert!(a.can_subscribe(&alice, "user:alice", NO_THREAD).is_ok());
        assert!(a.can_subscribe(&alice, "user:bob", NO_THREAD).is_err());
        assert!(a.can_subscribe(&alice, "thread:t1", NO_THREAD).is_err());
        assert!(a.can_subscribe(&alice, "thread:t1", Some("alice")).is_ok());
        assert!(a.can_publish(&alice, "chat:1", NO_THREAD).is_ok());
        assert_eq!(
            a.can_subscribe(&alice, "bad name", NO_THREAD).unwrap_err(),
            Denied::BadName
        );
    }

    #[test]
    fn claim_and_role_policies() {
        let a = Authorizer::new([
            (
                "ops".to_string(),
                NamespacePolicy::new(SubscribePolicy::Role("admin".into()), PublishPolicy::Server),
            ),
            (
                "team".to_string(),
                NamespacePolicy::new(SubscribePolicy::Claim, PublishPolicy::Server),
            ),
        ]);
        let admin = id("a", &["admin"], &[]);
        let member = id("m", &[], &["team:blue*"]);
        assert!(a.can_subscribe(&admin, "ops:x", NO_THREAD).is_ok());
        assert!(a.can_subscribe(&member, "ops:x", NO_THREAD).is_err());
        assert!(a.can_subscribe(&member, "team:blue-1", NO_THREAD).is_ok());
        assert!(a.can_subscribe(&member, "team:red", NO_THREAD).is_err());
        // A claim never opens someone else's private channel.
        let sneaky = id("s", &[], &["user:*"]);
        assert!(a.can_subscribe(&sneaky, "user:alice", NO_THREAD).is_err());
    }

    #[test]
    fn a_claim_opens_only_claim_namespaces() {
        let a = Authorizer::new([
            (
                "ops".to_string(),
                NamespacePolicy::new(SubscribePolicy::Role("admin".into()), PublishPolicy::Server),
            ),
            (
                "team".to_string(),
                NamespacePolicy::new(SubscribePolicy::Claim, PublishPolicy::Server),
            ),
        ]);
        // A pattern in the token is no substitute for the configured role.
        let claimer = id("c", &[], &["ops:*", "team:*", "*"]);
        assert_eq!(
            a.can_subscribe(&claimer, "ops:x", NO_THREAD).unwrap_err(),
            Denied::Forbidden
        );
        assert!(a.can_subscribe(&claimer, "team:x", NO_THREAD).is_ok());
        let admin = id("a", &["admin"], &[]);
        assert!(a.can_subscribe(&admin, "ops:x", NO_THREAD).is_ok());
        // Nor does a claim open owner-only namespaces.
        assert!(a.can_subscribe(&claimer, "user:bob", NO_THREAD).is_err());
        assert!(a.can_subscribe(&claimer, "thread:t", NO_THREAD).is_err());
    }
}
