//! WebSocket close codes wsgate sends, and what each tells the client.

/// A close code with the reason text sent beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the client or server finished normally.
    Normal,
    /// 1001: the server is shutting down; reconnect to another node or later.
    GoingAway,
    /// 1003: the frame was not a wsgate envelope.
    InvalidMessage,
    /// 1008: policy violation (too many rate-limited messages in a row).
    Policy,
    /// 1009: a frame exceeded `limits.max_message_bytes`.
    TooBig,
    /// 1011: an internal error ended the connection.
    Internal,
    /// 4001: the token expired without a refresh; get a new token.
    TokenExpired,
    /// 4002: nothing was received for `limits.heartbeat_timeout_secs`.
    HeartbeatTimeout,
    /// 4003: closed by the server API (`POST /api/users/{user}/disconnect`).
    Disconnected,
    /// 4009: the client could not keep up with its outbound queue.
    SlowConsumer,
    /// 4400 (graphql-transport-ws): a message that is not of the protocol.
    GraphqlBadMessage,
    /// 4401 (graphql-transport-ws): `subscribe` before `connection_ack`.
    GraphqlUnauthorized,
    /// 4403 (graphql-transport-ws): `connection_init` without a valid token.
    GraphqlForbidden,
    /// 4408 (graphql-transport-ws): no `connection_init` in time.
    GraphqlInitTimeout,
    /// 4409 (graphql-transport-ws): an operation id already in use.
    GraphqlDuplicateId,
    /// 4429 (graphql-transport-ws): a second `connection_init`.
    GraphqlTooManyInit,
}

impl CloseCode {
    /// The numeric code on the wire.
    pub const fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::InvalidMessage => 1003,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Internal => 1011,
            CloseCode::TokenExpired => 4001,
            CloseCode::HeartbeatTimeout => 4002,
            CloseCode::Disconnected => 4003,
            CloseCode::SlowConsumer => 4009,
            CloseCode::GraphqlBadMessage => 4400,
            CloseCode::GraphqlUnauthorized => 4401,
            CloseCode::GraphqlForbidden => 4403,
            CloseCode::GraphqlInitTimeout => 4408,
            CloseCode::GraphqlDuplicateId => 4409,
            CloseCode::GraphqlTooManyInit => 4429,
        }
    }

    /// The short reason sent in the close frame (and used as a metric label).
    pub const fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "server shutting down",
            CloseCode::InvalidMessage => "invalid message",
            CloseCode::Policy => "rate limit exceeded",
            CloseCode::TooBig => "message too big",
            CloseCode::Internal => "internal error",
            CloseCode::TokenExpired => "token expired",
            CloseCode::HeartbeatTimeout => "heartbeat timeout",
            CloseCode::Disconnected => "disconnected by server",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::GraphqlBadMessage => "invalid message",
            CloseCode::GraphqlUnauthorized => "Unauthorized",
            CloseCode::GraphqlForbidden => "Forbidden",
            CloseCode::GraphqlInitTimeout => "Connection initialisation timeout",
            CloseCode::GraphqlDuplicateId => "Subscriber for this id already exists",
            CloseCode::GraphqlTooManyInit => "Too many initialisation requests",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_spec_table() {
        let all = [
            (CloseCode::Normal, 1000),
            (CloseCode::GoingAway, 1001),
            (CloseCode::InvalidMessage, 1003),
            (CloseCode::Policy, 1008),
            (CloseCode::TooBig, 1009),
            (CloseCode::Internal, 1011),
            (CloseCode::TokenExpired, 4001),
            (CloseCode::HeartbeatTimeout, 4002),
            (CloseCode::Disconnected, 4003),
            (CloseCode::SlowConsumer, 4009),
            (CloseCode::GraphqlBadMessage, 4400),
            (CloseCode::GraphqlUnauthorized, 4401),
            (CloseCode::GraphqlForbidden, 4403),
            (CloseCode::GraphqlInitTimeout, 4408),
            (CloseCode::GraphqlDuplicateId, 4409),
            (CloseCode::GraphqlTooManyInit, 4429),
        ];
        for (code, n) in all {
            assert_eq!(code.code(), n, "{code:?}");
            // Close reasons must fit a control frame (123 bytes).
            assert!(code.reason().len() <= 123);
        }
    }
}
