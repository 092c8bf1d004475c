//! One GraphQL operation as a client sent it (an HTTP body, a `subscribe`
//! payload), checked for size and read for its type before execution.

use async_graphql::parser::types::{ExecutableDocument, OperationType, Selection, SelectionSet};
use serde::Deserialize;
use serde_json::Value;
use wsgate_core::error::CommandError;

/// `{query, operationName, variables, extensions}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub query: String,
    #[serde(default)]
    pub operation_name: Option<String>,
    #[serde(default)]
    pub variables: Option<Value>,
    /// Accepted and ignored (persisted queries are not supported).
    #[serde(default)]
    pub extensions: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationKind {
    Query,
    Mutation,
    Subscription,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Query => "query",
            OperationKind::Mutation => "mutation",
            OperationKind::Subscription => "subscription",
        }
    }
}

impl Operation {
    /// Refuses a document over `max_bytes` (`limits.max_message_bytes`)
    /// before it is parsed.
    pub fn check_size(&self, max_bytes: usize) -> Result<(), CommandError> {
        if self.query.len() > max_bytes {
            return Err(CommandError::bad_request(format!(
                "the query document is {} bytes; at most {max_bytes} (limits.max_message_bytes)",
                self.query.len()
            )));
        }
        Ok(())
    }

    /// Refuses `variables` or `extensions` that are not objects (GraphQL
    /// over HTTP and graphql-ws both say they are maps): async-graphql would
    /// run the operation as if there were no variables at all.
    pub fn check_maps(&self) -> Result<(), CommandError> {
        for (name, value) in [
            ("variables", &self.variables),
            ("extensions", &self.extensions),
        ] {
            if matches!(value, Some(v) if !v.is_object() && !v.is_null()) {
                return Err(CommandError::bad_request(format!(
                    "{name} must be a JSON object"
                )));
            }
        }
        Ok(())
    }

    /// The type of the operation that would run, `None` when the document
    /// does not parse or names no such operation (execution then reports
    /// why, with async-graphql's own message).
    pub fn kind(&self) -> Option<OperationKind> {
        self.shape().map(|(kind, _)| kind)
    }

    /// The operation's type and how many root fields it selects, fragments
    /// at the root counted by what they select: each root field of a
    /// mutation is a command (and counts against the message rate), and a
    /// subscription has exactly one (GraphQL's own rule, which async-graphql
    /// does not check).
    pub fn shape(&self) -> Option<(OperationKind, usize)> {
        let doc = async_graphql::parser::parse_query(&self.query).ok()?;
        let op = match &self.operation_name {
            Some(name) => {
                doc.operations
                    .iter()
                    .find(|(n, _)| n.is_some_and(|n| n.as_str() == name))?
                    .1
            }
            None => doc.operations.iter().next()?.1,
        };
        let kind = match op.node.ty {
            OperationType::Query => OperationKind::Query,
            OperationType::Mutation => OperationKind::Mutation,
            OperationType::Subscription => OperationKind::Subscription,
        };
        Some((kind, root_fields(&doc, &op.node.selection_set.node, 0)))
    }

    /// The request async-graphql executes.
    pub(crate) fn request(&self) -> async_graphql::Request {
        let mut req = async_graphql::Request::new(self.query.clone());
        if let Some(name) = &self.operation_name {
            req = req.operation_name(name.clone());
        }
        if let Some(v) = &self.variables {
            req = req.variables(async_graphql::Variables::from_json(v.clone()));
        }
        req
    }

    /// What makes two subscriptions identical: the document, the operation
    /// and the variables (objects with their keys sorted, so the same
    /// variables in another order are the same key).
    pub(crate) fn share_key(&self) -> String {
        let mut key = String::with_capacity(self.query.len() + 64);
        key.push_str(&self.query);
        key.push('\0');
        key.push_str(self.operation_name.as_deref().unwrap_or(""));
        key.push('\0');
        canonical(self.variables.as_ref().unwrap_or(&Value::Null), &mut key);
        key
    }
}

/// Fields selected by `set` at the root, through fragments; fragments
/// nested past a few levels (or in a cycle, which validation refuses
/// later) count as one field each.
fn root_fields(doc: &ExecutableDocument, set: &SelectionSet, depth: usize) -> usize {
    set.items
        .iter()
        .map(|item| match &item.node {
            Selection::Field(_) => 1,
            _ if depth >= 4 => 1,
            Selection::InlineFragment(f) => root_fields(doc, &f.node.selection_set.node, depth + 1),
            Selection::FragmentSpread(f) => doc
                .fragments
                .get(&f.node.fragment_name.node)
                .map_or(1, |d| {
                    root_fields(doc, &d.node.selection_set.node, depth + 1)
                }),
        })
        .sum()
}

/// `value` as JSON with every object's keys in order, whatever order the
/// map keeps them in.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(query: &str, name: Option<&str>, variables: Option<Value>) -> Operation {
        Operation {
            query: query.into(),
            operation_name: name.map(Into::into),
            variables,
            extensions: None,
        }
    }

    #[test]
    fn kind_follows_the_named_operation() {
        let doc = "query A { me { user } } subscription B { metrics { offset } }";
        assert_eq!(op(doc, Some("A"), None).kind(), Some(OperationKind::Query));
        assert_eq!(
            op(doc, Some("B"), None).kind(),
            Some(OperationKind::Subscription)
        );
        assert_eq!(op(doc, Some("C"), None).kind(), None);
        assert_eq!(
            op("{ me { user } }", None, None).kind(),
            Some(OperationKind::Query)
        );
        assert_eq!(op("{ me ", None, None).kind(), None);
    }

    #[test]
    fn root_fields_are_counted_through_fragments() {
        let shape = |q: &str| op(q, None, None).shape();
        assert_eq!(
            shape("mutation { a: createThread { id } b: createThread { id } }"),
            Some((OperationKind::Mutation, 2))
        );
        assert_eq!(
            shape("mutation { ...M } fragment M on MutationRoot { a: createThread { id } b: deleteThread(id: 1) }"),
            Some((OperationKind::Mutation, 2))
        );
        assert_eq!(
            shape(
                "subscription { ... on SubscriptionRoot { metrics { offset } events { offset } } }"
            ),
            Some((OperationKind::Subscription, 2))
        );
        assert_eq!(shape("{ me { user } }"), Some((OperationKind::Query, 1)));
    }

    #[test]
    fn share_key_ignores_variable_order_but_not_values() {
        let q = "subscription($n: String!) { channel(name: $n) { offset } }";
        let a = op(q, None, Some(json!({"n": "x", "m": 1})));
        let b = op(q, None, Some(json!({"m": 1, "n": "x"})));
        let c = op(q, None, Some(json!({"m": 1, "n": "y"})));
        assert_eq!(a.share_key(), b.share_key());
        assert_ne!(a.share_key(), c.share_key());
    }

    #[test]
    fn documents_over_the_limit_are_refused() {
        assert!(op("{ me { user } }", None, None).check_size(15).is_ok());
        let e = op("{ me { user } }", None, None)
            .check_size(14)
            .unwrap_err();
        assert!(e.message.contains("max_message_bytes"), "{e}");
    }
}
