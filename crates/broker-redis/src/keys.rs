//! The Redis names wsgate uses, all under `broker.prefix`. A channel's
//! keys carry it as a hash tag (`{news:1}`) so a script's keys share a
//! slot should the store ever be a Redis Cluster; channel names hold no
//! braces (`names::valid_name`).

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    /// `{prefix}:ch:`, what every pub/sub channel name starts with.
    pubsub_prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            pubsub_prefix: format!("{prefix}:ch:"),
        }
    }

    /// Hash `{s: top offset, e: epoch}`.
    pub fn meta(&self, channel: &str) -> String {
        format!("{}:meta:{{{channel}}}", self.prefix)
    }

    /// List of `offset millis data`, newest first.
    pub fn history(&self, channel: &str) -> String {
        format!("{}:hist:{{{channel}}}", self.prefix)
    }

    /// Hash `connection id → {user, connection_id}`.
    pub fn presence(&self, channel: &str) -> String {
        format!("{}:pres:{{{channel}}}", self.prefix)
    }

    /// Sorted set `connection id → expiry (ms)`.
    pub fn presence_expiry(&self, channel: &str) -> String {
        format!("{}:pexp:{{{channel}}}", self.prefix)
    }

    /// The pub/sub channel nodes listen on for `channel`.
    pub fn pubsub(&self, channel: &str) -> String {
        format!("{}{channel}", self.pubsub_prefix)
    }

    /// Sorted set `connection id → expiry (ms)` of one user's connections.
    pub fn connections(&self, user: &str) -> String {
        format!("{}:conn:{user}", self.prefix)
    }

    /// A thread's run in progress (JSON claim). A user's run keys share
    /// the user as their hash tag: the claim script writes them together.
    pub fn run(&self, owner: &str, thread_id: &str) -> String {
        format!("{}:run:{{{owner}}}:{thread_id}", self.prefix)
    }

    /// Sorted set `thread id → expiry (ms)` of one user's runs.
    pub fn user_runs(&self, owner: &str) -> String {
        format!("{}:runs:{{{owner}}}", self.prefix)
    }

    /// The thread of a run in progress, by run id.
    pub fn run_id(&self, owner: &str, run_id: &str) -> String {
        format!("{}:runid:{{{owner}}}:{run_id}", self.prefix)
    }

    /// The pub/sub channel every node listens on for node commands.
    pub fn nodes(&self) -> String {
        format!("{}:node", self.prefix)
    }

    /// The wsgate channel of a pub/sub channel name, if it is one of ours.
    pub fn channel_of<'a>(&self, pubsub: &'a str) -> Option<&'a str> {
        pubsub.strip_prefix(&self.pubsub_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_tagged() {
        let k = Keys::new("wsgate");
        assert_eq!(k.meta("news:1"), "wsgate:meta:{news:1}");
        assert_eq!(k.history("news:1"), "wsgate:hist:{news:1}");
        assert_eq!(k.pubsub("news:1"), "wsgate:ch:news:1");
        assert_eq!(k.channel_of("wsgate:ch:news:1"), Some("news:1"));
        assert_eq!(k.channel_of("other:ch:news:1"), None);
    }
}
