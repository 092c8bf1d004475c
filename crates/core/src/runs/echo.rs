//! The built-in `echo` agent (SPEC §6): deterministic, for demos and tests.
//! It thinks, calls a `word_count` tool, streams the user's last message
//! back word by word (`agent.echo_delay_ms` apart) and reports it.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use super::{AgentBackend, AgentError, AgentEvent, AgentInput, EventSender};

pub struct EchoAgent {
    /// Pause before each partial result.
    pub delay: Duration,
}

async fn send(events: &EventSender, event: AgentEvent) -> Result<(), AgentError> {
    events.send(event).await.map_err(|_| AgentError::Closed)
}

#[async_trait]
impl AgentBackend for EchoAgent {
    fn name(&self) -> &'static str {
        "echo"
    }

    async fn run(&self, input: AgentInput, events: EventSender) -> Result<String, AgentError> {
        let text = input
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let words: Vec<&str> = text.split_whitespace().collect();
        send(
            &events,
            AgentEvent::Thinking {
                text: format!(
                    "Reading your message of {} characters",
                    text.chars().count()
                ),
            },
        )
        .await?;
        send(
            &events,
            AgentEvent::ToolExecuting {
                tool: "word_count".into(),
                input: json!({ "text": text }),
            },
        )
        .await?;
        send(
            &events,
            AgentEvent::ToolResult {
                tool: "word_count".into(),
                output: json!({ "words": words.len() }),
            },
        )
        .await?;
        let mut answer = String::new();
        for (i, word) in words.iter().enumerate() {
            tokio::time::sleep(self.delay).await;
            let delta = if i + 1 < words.len() {
                format!("{word} ")
            } else {
                (*word).to_owned()
            };
            answer.push_str(&delta);
            send(&events, AgentEvent::PartialResult { delta }).await?;
        }
        send(
            &events,
            AgentEvent::FinalReport {
                content: answer.clone(),
            },
        )
        .await?;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::AgentMessage;

    fn input(text: &str) -> AgentInput {
        AgentInput {
            run_id: "r".into(),
            thread_id: "t".into(),
            user: "u".into(),
            messages: vec![
                AgentMessage {
                    role: "user",
                    content: "earlier".into(),
                },
                AgentMessage {
                    role: "assistant",
                    content: "earlier".into(),
                },
                AgentMessage {
                    role: "user",
                    content: text.into(),
                },
            ],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn echoes_the_last_user_message_word_by_word() {
        let agent = EchoAgent {
            delay: Duration::from_millis(20),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let started = tokio::time::Instant::now();
        let answer = agent.run(input("hello  big world"), tx).await.unwrap();
        assert_eq!(answer, "hello big world");
        assert_eq!(started.elapsed(), Duration::from_millis(60), "three delays");
        let mut kinds = Vec::new();
        let mut partials = String::new();
        while let Some(e) = rx.recv().await {
            if let AgentEvent::PartialResult { delta } = &e {
                partials.push_str(delta);
            }
            if let AgentEvent::ToolResult { output, .. } = &e {
                assert_eq!(output["words"], 3);
            }
            kinds.push(e.kind());
        }
        assert_eq!(
            kinds,
            [
                "agent_thinking",
                "tool_executing",
                "tool_result",
                "partial_result",
                "partial_result",
                "partial_result",
                "final_report"
            ]
        );
        assert_eq!(partials, answer, "the partials add up to the report");
    }

    #[tokio::test]
    async fn a_run_nobody_listens_to_ends() {
        let agent = EchoAgent {
            delay: Duration::ZERO,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        drop(rx);
        assert_eq!(agent.run(input("a b"), tx).await, Err(AgentError::Closed));
    }
}
