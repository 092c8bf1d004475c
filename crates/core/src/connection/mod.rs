//! What a transport needs from core to run one connection: the handler
//! interface it drives and the bounded outbound queue it drains.

pub mod handler;
pub mod outbound;
