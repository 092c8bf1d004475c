#[test]
fn sizes() {
    use std::mem::size_of;
    eprintln!("WebSocket {}", size_of::<axum::extract::ws::WebSocket>());
    eprintln!("Session {}", size_of::<wsgate_core::session::Session>());
    eprintln!("Sleep {}", size_of::<tokio::time::Sleep>());
    eprintln!("Message {}", size_of::<axum::extract::ws::Message>());
    eprintln!("Option<Result<Message>> {}", size_of::<Option<Result<axum::extract::ws::Message, axum::Error>>>());
    eprintln!("Identity {}", size_of::<wsgate_core::auth::Identity>());
    eprintln!("tungstenite ctx {}", size_of::<tungstenite::protocol::WebSocketContext>());
    eprintln!("notified {}", size_of::<tokio::sync::futures::Notified<'static>>());
}
