//! The schema and what its resolvers reach: the services `/ws` uses, so
//! every field asks the same authorizer and the same ownership rules.

use std::sync::Arc;

use async_graphql::{Context, Response, Schema};
use serde_json::Value;
use wsgate_core::auth::Identity;
use wsgate_core::error::CommandError;
use wsgate_core::metrics::Metrics;
use wsgate_core::session::SessionShared;

use crate::error::{error_response, with_codes};
use crate::mutation::MutationRoot;
use crate::operation::{Operation, OperationKind};
use crate::query::QueryRoot;
use crate::shared::Groups;
use crate::subscription::SubscriptionRoot;

/// `[graphql]` of the configuration.
#[derive(Debug, Clone)]
pub struct GraphqlSettings {
    pub max_depth: usize,
    pub max_complexity: usize,
    pub introspection: bool,
    /// How long a WebSocket client has to send `connection_init`.
    pub init_timeout: std::time::Duration,
    /// Identical subscriptions share one resolution per publication (off
    /// only to measure what sharing buys).
    pub shared_resolution: bool,
}

/// `/ws/stats`' answer, for the `stats` field (the server knows the hub).
pub type StatsFn = Arc<dyn Fn() -> Value + Send + Sync>;

/// The caller of an operation: a verified token.
#[derive(Debug, Clone)]
pub struct Viewer(pub Identity);

pub(crate) type AppSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// Everything GraphQL needs, built once per server.
pub struct Graphql {
    pub(crate) schema: AppSchema,
    pub(crate) services: Arc<SessionShared>,
    pub(crate) settings: GraphqlSettings,
    pub(crate) groups: Arc<Groups>,
}

/// What resolvers find in their context.
pub(crate) struct Services {
    pub shared: Arc<SessionShared>,
    pub stats: StatsFn,
}

impl Graphql {
    pub fn new(
        services: Arc<SessionShared>,
        settings: GraphqlSettings,
        stats: StatsFn,
    ) -> Arc<Self> {
        let builder = limited(&settings).data(Services {
            shared: services.clone(),
            stats,
        });
        let metrics = services.metrics.clone();
        Arc::new(Graphql {
            schema: builder.finish(),
            groups: Groups::new(metrics),
            services,
            settings,
        })
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.services.metrics
    }

    /// Runs a query or mutation for `viewer` (HTTP). A subscription is
    /// refused: it needs the WebSocket. `allow_mutation` is false for GET.
    pub async fn execute(
        &self,
        viewer: Identity,
        op: &Operation,
        allow_mutation: bool,
    ) -> Response {
        if let Err(e) = op.check_size(self.services.limits.max_message_bytes) {
            return with_codes(error_response(e), self.metrics());
        }
        let kind = op.kind();
        if let Some(kind) = kind {
            self.count(kind);
        }
        let refused = match kind {
            Some(OperationKind::Subscription) => {
                Some("subscriptions are served over WebSocket (subprotocol graphql-transport-ws)")
            }
            Some(OperationKind::Mutation) if !allow_mutation => Some("mutations need POST"),
            _ => None,
        };
        if let Some(message) = refused {
            return with_codes(
                error_response(CommandError::bad_request(message)),
                self.metrics(),
            );
        }
        let response = self.schema.execute(op.request().data(Viewer(viewer))).await;
        with_codes(response, self.metrics())
    }

    pub(crate) fn count(&self, kind: OperationKind) {
        Metrics::count(&self.metrics().graphql_operations, "type", kind.as_str());
    }
}

/// The schema with the document limits of `settings` (depth, complexity,
/// introspection), before any data is attached.
pub(crate) fn limited(
    settings: &GraphqlSettings,
) -> async_graphql::SchemaBuilder<QueryRoot, MutationRoot, SubscriptionRoot> {
    let builder = Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .limit_depth(settings.max_depth)
        .limit_complexity(settings.max_complexity);
    if settings.introspection {
        builder
    } else {
        builder.disable_introspection()
    }
}

/// The schema in SDL; docs/graphql.md holds it, checked by a test.
pub fn sdl() -> String {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .finish()
        .sdl()
}

/// The services, from a resolver's context.
pub(crate) fn services<'a>(ctx: &Context<'a>) -> &'a Services {
    ctx.data_unchecked::<Services>()
}

/// The caller, from a resolver's context: every operation has one (HTTP
/// and WebSocket both refuse to run without a valid token).
pub(crate) fn viewer<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a Identity> {
    ctx.data::<Viewer>().map(|v| &v.0)
}

#[cfg(test)]
mod tests {
    /// docs/graphql.md shows the schema as it is: regenerate the block with
    /// `WSGATE_WRITE_SDL=1 cargo test -p wsgate-graphql` when it changes.
    #[test]
    fn the_documented_schema_is_the_schema() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/graphql.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let sdl = super::sdl();
        let (start, end) = ("```graphql\n", "```\n");
        let from = doc.find(start).expect("a graphql block") + start.len();
        let to = from + doc[from..].find(end).expect("the block ends");
        if std::env::var_os("WSGATE_WRITE_SDL").is_some() {
            let written = format!("{}{}{}", &doc[..from], sdl.trim_start(), &doc[to..]);
            std::fs::write(path, written).unwrap();
            return;
        }
        assert_eq!(
            doc[from..to].trim(),
            sdl.trim(),
            "docs/graphql.md's schema is stale"
        );
    }
}
