//! The `history` reply: a page of history as one frame, cut to a byte
//! budget so a history of any size can be read through a bounded queue.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use wsgate_protocol::{Encoding, ServerFrame};

use crate::broker::HistoryPage;
#[cfg(test)]
use crate::channels::publication::{Publication, StreamPosition};

#[derive(Serialize)]
struct HistoryItem<'a> {
    offset: u64,
    data: &'a Value,
}

#[derive(Serialize)]
struct HistoryPayload<'a> {
    channel: &'a str,
    epoch: &'a str,
    offset: u64,
    /// Publications after the last one here exist: ask again with
    /// `since {offset: <last offset here>, epoch}`.
    more: bool,
    publications: Vec<HistoryItem<'a>>,
}

/// Bytes a history item adds to a JSON frame besides its `data`:
/// `{"offset":<20 digits>,"data":},`.
const ITEM_OVERHEAD: usize = 40;

/// The `history` reply to `page`, encoded: its publications oldest first,
/// cut to the prefix whose frame fits `budget` bytes (at least one
/// publication, however big), with `more` saying whether publications after
/// the last one sent exist. A reply is queued like any frame, so one bigger
/// than the connection's queue would close it with 4009; cut, a history of
/// any size can be read page by page.
pub fn history_frame(
    encoding: Encoding,
    id: Option<&str>,
    channel: &str,
    page: &HistoryPage,
    budget: usize,
) -> Bytes {
    let all = &page.publications;
    let encode = |n: usize| {
        let more = match all[..n].last() {
            Some(last) => n < all.len() || last.offset < page.position.offset,
            None => false,
        };
        let payload = HistoryPayload {
            channel,
            epoch: &page.position.epoch,
            offset: page.position.offset,
            more,
            publications: all[..n]
                .iter()
                .map(|p| HistoryItem {
                    offset: p.offset,
                    data: &p.value,
                })
                .collect(),
        };
        ServerFrame::new("history", id, payload).encode(encoding)
    };
    // Estimated from the JSON text of each `data`, so the frame is encoded
    // once in the common case rather than once per publication.
    let mut used = encode(0).len();
    let mut n = 0;
    for p in all {
        let size = p.data.len() + ITEM_OVERHEAD;
        if n > 0 && used + size > budget {
            break;
        }
        used += size;
        n += 1;
    }
    loop {
        let frame = encode(n);
        if frame.len() <= budget || n <= 1 {
            return frame;
        }
        // The estimate fell short (MessagePack writes some values, e.g.
        // floats, longer than JSON does): drop an eighth and encode again.
        n -= (n / 8).max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(sizes: &[usize], head: u64) -> HistoryPage {
        let first = head + 1 - sizes.len() as u64;
        let publications = sizes
            .iter()
            .zip(first..)
            .map(|(size, offset)| {
                let value = Value::String("x".repeat(*size));
                let data = Bytes::from(value.to_string());
                Publication::new("h".into(), offset, "ep".into(), data, value)
            })
            .collect();
        HistoryPage {
            position: StreamPosition {
                offset: head,
                epoch: "ep".into(),
            },
            publications,
            complete: true,
        }
    }

    fn read(encoding: Encoding, frame: &[u8]) -> (Vec<u64>, bool) {
        let f = wsgate_protocol::ClientFrame::decode(encoding, frame).unwrap();
        assert_eq!(f.kind, "history");
        let p = f.payload.unwrap();
        let offsets = p["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect();
        (offsets, p["more"].as_bool().unwrap())
    }

    #[test]
    fn history_frames_are_cut_to_the_budget_with_more() {
        for encoding in [Encoding::Json, Encoding::Msgpack] {
            let all = page(&[400, 400, 400], 3);
            let frame = history_frame(encoding, Some("h"), "h", &all, 1000);
            assert!(frame.len() <= 1000);
            assert_eq!(read(encoding, &frame), (vec![1, 2], true));
            // Everything fits: no more.
            let frame = history_frame(encoding, None, "h", &all, 10_000);
            assert_eq!(read(encoding, &frame), (vec![1, 2, 3], false));
            // One publication over the budget still goes, alone.
            let big = page(&[5000, 10], 9);
            let frame = history_frame(encoding, None, "h", &big, 1000);
            assert_eq!(read(encoding, &frame), (vec![8], true));
            // A page that stops short of the stream's position (a limit):
            // there is more after it.
            let mut limited = page(&[10, 10], 2);
            limited.position.offset = 5;
            let frame = history_frame(encoding, None, "h", &limited, 1000);
            assert_eq!(read(encoding, &frame), (vec![1, 2], true));
            let empty = page(&[], 4);
            assert_eq!(
                read(encoding, &history_frame(encoding, None, "h", &empty, 10)),
                (vec![], false)
            );
        }
    }

    #[test]
    fn a_msgpack_estimate_that_falls_short_is_corrected() {
        // Floats: 9 bytes in MessagePack, 3 in JSON.
        let value = Value::Array(vec![serde_json::json!(1.5); 100]);
        let data = Bytes::from(value.to_string());
        let publications = (1..=10)
            .map(|o| Publication::new("h".into(), o, "ep".into(), data.clone(), value.clone()))
            .collect();
        let p = HistoryPage {
            position: StreamPosition {
                offset: 10,
                epoch: "ep".into(),
            },
            publications,
            complete: true,
        };
        let frame = history_frame(Encoding::Msgpack, None, "h", &p, 4000);
        assert!(frame.len() <= 4000, "{}", frame.len());
        let (offsets, more) = read(Encoding::Msgpack, &frame);
        assert!(!offsets.is_empty() && more);
    }
}
