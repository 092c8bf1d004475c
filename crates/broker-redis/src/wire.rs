//! What travels between nodes on a channel's pub/sub: a publication
//! (`p{offset} {epoch} {data}`, written by the publish script) or a join
//! or leave (`c{"kind","user","connection_id"}`). History entries are
//! `{offset} {millis} {data}`.

use serde::{Deserialize, Serialize};
use wsgate_core::broker::{ClientInfo, ControlKind};

#[derive(Debug, PartialEq, Eq)]
pub enum NodeMessage<'a> {
    Publication {
        offset: u64,
        epoch: &'a str,
        data: &'a [u8],
    },
    Control {
        kind: ControlKind,
        client: ClientInfo,
    },
}

#[derive(Serialize, Deserialize)]
struct Control<'a> {
    kind: &'a str,
    user: &'a str,
    connection_id: &'a str,
}

/// The pub/sub message announcing a join or leave.
pub fn control(kind: ControlKind, client: &ClientInfo) -> Vec<u8> {
    let body = Control {
        kind: kind.as_str(),
        user: &client.user,
        connection_id: &client.connection_id,
    };
    let mut out = b"c".to_vec();
    serde_json::to_writer(&mut out, &body).expect("strings serialize");
    out
}

/// Splits `a b rest` at its first two spaces.
fn three(bytes: &[u8]) -> Option<(&str, &str, &[u8])> {
    let first = bytes.iter().position(|b| *b == b' ')?;
    let (a, rest) = (&bytes[..first], &bytes[first + 1..]);
    let second = rest.iter().position(|b| *b == b' ')?;
    let (b, rest) = (&rest[..second], &rest[second + 1..]);
    Some((
        std::str::from_utf8(a).ok()?,
        std::str::from_utf8(b).ok()?,
        rest,
    ))
}

/// Reads a pub/sub message; `None` for anything malformed (another
/// program publishing on our names).
pub fn parse(message: &[u8]) -> Option<NodeMessage<'_>> {
    match message.split_first()? {
        (b'p', rest) => {
            let (offset, epoch, data) = three(rest)?;
            Some(NodeMessage::Publication {
                offset: offset.parse().ok()?,
                epoch,
                data,
            })
        }
        (b'c', rest) => {
            let c: Control<'_> = serde_json::from_slice(rest).ok()?;
            let kind = match c.kind {
                "join" => ControlKind::Join,
                "leave" => ControlKind::Leave,
                _ => return None,
            };
            Some(NodeMessage::Control {
                kind,
                client: ClientInfo {
                    user: c.user.into(),
                    connection_id: c.connection_id.into(),
                },
            })
        }
        _ => None,
    }
}

/// One history entry: offset, publish time (ms, Redis's clock), data.
pub fn entry(bytes: &[u8]) -> Option<(u64, i64, &[u8])> {
    let (offset, millis, data) = three(bytes)?;
    Some((offset.parse().ok()?, millis.parse().ok()?, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        assert_eq!(
            parse(b"p12 ab12cd34 {\"a\": \"b c\"}"),
            Some(NodeMessage::Publication {
                offset: 12,
                epoch: "ab12cd34",
                data: b"{\"a\": \"b c\"}",
            })
        );
        let alice = ClientInfo {
            user: "alice".into(),
            connection_id: "c1".into(),
        };
        assert_eq!(
            parse(&control(ControlKind::Leave, &alice)),
            Some(NodeMessage::Control {
                kind: ControlKind::Leave,
                client: alice
            })
        );
        for bad in [
            &b""[..],
            b"p",
            b"px y z",
            b"p1 e",
            b"c{}",
            b"c{\"kind\":\"boom\",\"user\":\"u\",\"connection_id\":\"c\"}",
            b"zzz",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(
            entry(b"3 1700000000000 null"),
            Some((3, 1_700_000_000_000, &b"null"[..]))
        );
        assert_eq!(entry(b"3 x null"), None);
    }
}
