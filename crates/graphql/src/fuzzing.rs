//! Entry point for `cargo fuzz` (feature `fuzzing`, see `fuzz/`): a
//! client's graphql-transport-ws message through every check that runs
//! before a resolver does — the message parse, the size limit, the
//! variables' shape, the operation's shape, and async-graphql's parse and
//! validation with the server's depth and complexity limits.

use std::sync::{Arc, OnceLock};

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextValidation};
use async_graphql::{Schema, ServerError, ValidationResult};

use crate::mutation::MutationRoot;
use crate::protocol::ClientMessage;
use crate::query::QueryRoot;
use crate::schema::{limited, GraphqlSettings};
use crate::subscription::SubscriptionRoot;

/// The limits the fuzzer runs with: the configuration's defaults.
const MAX_BYTES: usize = 8192;

/// What became of one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not a message of the protocol (close 4400).
    NotProtocol,
    /// A message other than `subscribe`.
    Other,
    /// Refused before parsing: over the size limit.
    TooLarge,
    /// Parsed and validated: it would execute.
    Valid,
    /// Refused by the parser or validation (limits included).
    Refused,
}

/// Runs `text` through the checks.
pub fn message(text: &[u8]) -> Verdict {
    let op = match ClientMessage::parse(text) {
        Ok(ClientMessage::Subscribe { payload, .. }) => payload,
        Ok(_) => return Verdict::Other,
        Err(_) => return Verdict::NotProtocol,
    };
    if op.check_size(MAX_BYTES).is_err() {
        return Verdict::TooLarge;
    }
    if op.check_maps().is_err() {
        return Verdict::Refused;
    }
    let _ = op.shape();
    let response = runtime().block_on(schema().execute(op.request()));
    match response.errors.as_slice() {
        [e] if e.message == PASSED => Verdict::Valid,
        _ => Verdict::Refused,
    }
}

const PASSED: &str = "validated (fuzzing: not executed)";

type FuzzSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

fn schema() -> &'static FuzzSchema {
    static SCHEMA: OnceLock<FuzzSchema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let settings = GraphqlSettings {
            max_depth: 10,
            max_complexity: 1000,
            introspection: true,
            init_timeout: std::time::Duration::from_secs(10),
            shared_resolution: true,
        };
        limited(&settings).extension(StopAfterValidation).finish()
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

/// Ends every request once validation passed: resolvers need the server's
/// services, and what is fuzzed here is what runs before them.
struct StopAfterValidation;

impl ExtensionFactory for StopAfterValidation {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(StopAfterValidation)
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for StopAfterValidation {
    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await?;
        Err(vec![ServerError::new(PASSED, None)])
    }
}
