//! A server-sent events client: one `GET` with `Accept: text/event-stream` over a bare HTTP/1.1
//! connection ([`crate::http`]), and a parser of the event stream format (the `EventSource`
//! part of the HTML standard) that reads the body as it arrives.
//!
//! Only what the listen scenarios need: `data` and `id` fields; `event` and `retry` fields and
//! comments (keep-alives) are read and dropped. Reconnecting is left to the caller.

use std::net::IpAddr;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST};

use crate::args::Target;

/// The most bytes of an error answer's body kept for the error message.
const ERROR_BODY_BYTES: usize = 200;

/// One event: the last `id` field seen in it (if any) and its `data` lines joined by `\n`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// The event's `id` field, when it had one.
    pub id: Option<String>,
    /// The event's data, empty when it had no `data` field.
    pub data: String,
}

/// An open event stream.
#[derive(Debug)]
pub struct EventStream {
    /// Kept so that the connection stays open as long as the stream.
    _sender: SendRequest<Full<Bytes>>,
    body: Incoming,
    parser: Parser,
}

impl EventStream {
    /// The next event, reading as needed; `None` when the server ended the stream.
    /// Cancel-safe: what was read stays in the parser.
    ///
    /// # Errors
    /// On a transport error.
    pub async fn next(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            if let Some(event) = self.parser.next_event() {
                return Ok(Some(event));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(e).context("reading the event stream failed"),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.parser.push(&data);
                    }
                }
            }
        }
    }
}

/// Opens an event stream: `GET path_and_query` on `target`, from `source` when given.
///
/// # Errors
/// When connecting fails, or the answer is not a 200 with `Content-Type: text/event-stream`
/// (the error has the status and the start of the body; the query, which may hold a token,
/// is left out).
pub async fn connect(
    target: &Target,
    path_and_query: &str,
    source: Option<IpAddr>,
) -> anyhow::Result<EventStream> {
    let mut sender = crate::http::open_from(target, source).await?;
    sender.ready().await?;
    let req = Request::get(path_and_query)
        .header(HOST, target.authority())
        .header(ACCEPT, "text/event-stream")
        .body(Full::new(Bytes::new()))?;
    let path = path_and_query
        .split_once('?')
        .map_or(path_and_query, |(p, _)| p);
    let resp = sender
        .send_request(req)
        .await
        .with_context(|| format!("GET {path} failed"))?;
    let status = resp.status();
    let is_event_stream = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !status.is_success() || !is_event_stream {
        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
        let text = body
            .as_deref()
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(ERROR_BODY_BYTES)]).into_owned())
            .unwrap_or_default();
        bail!("GET {path} answered {status}, not an event stream: {text:?}");
    }
    Ok(EventStream {
        _sender: sender,
        body: resp.into_body(),
        parser: Parser::default(),
    })
}

/// The event stream format, fed with bytes as they arrive.
#[derive(Debug, Default)]
struct Parser {
    buf: Vec<u8>,
    /// Where the unparsed part of `buf` starts.
    pos: usize,
    /// The event being read.
    event: Event,
    /// Whether the event being read had a `data` or `id` field.
    started: bool,
    /// Whether the event being read had a `data` field.
    has_data: bool,
}

impl Parser {
    fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event in the buffer. Events are ended by an empty line; events
    /// with neither `data` nor `id` (comments only) are skipped.
    fn next_event(&mut self) -> Option<Event> {
        while let Some(len) = self
            .buf
            .get(self.pos..)
            .and_then(|rest| rest.iter().position(|b| *b == b'\n'))
        {
            let start = self.pos;
            self.pos += len + 1;
            let mut line = self.buf.get(start..start + len).unwrap_or_default();
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            if line.is_empty() {
                if std::mem::take(&mut self.started) {
                    self.has_data = false;
                    return Some(std::mem::take(&mut self.event));
                }
                continue;
            }
            if line.first() == Some(&b':') {
                continue;
            }
            let (field, value) = match line.iter().position(|b| *b == b':') {
                Some(i) => {
                    let value = line.get(i + 1..).unwrap_or_default();
                    let value = value.strip_prefix(b" ").unwrap_or(value);
                    (line.get(..i).unwrap_or_default(), value)
                }
                None => (line, &b""[..]),
            };
            match field {
                b"data" => {
                    if self.has_data {
                        self.event.data.push('\n');
                    }
                    self.event.data.push_str(&String::from_utf8_lossy(value));
                    self.has_data = true;
                    self.started = true;
                }
                b"id" => {
                    self.event.id = Some(String::from_utf8_lossy(value).into_owned());
                    self.started = true;
                }
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&str]) -> Vec<Event> {
        let mut p = Parser::default();
        let mut out = Vec::new();
        for c in chunks {
            p.push(c.as_bytes());
            while let Some(e) = p.next_event() {
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn parses_events_across_chunks() {
        let got = events(&[
            "id: 1.a-0-1\n\n: keep-alive\n\nda",
            "ta: [1,2]\nid: 1.a-0-3\n",
            "\r\ndata:x\ndata: y\n\nevent: e\nretry: 5\n\n",
        ]);
        assert_eq!(
            got,
            vec![
                Event {
                    id: Some("1.a-0-1".into()),
                    data: String::new()
                },
                Event {
                    id: Some("1.a-0-3".into()),
                    data: "[1,2]".into()
                },
                Event {
                    id: None,
                    data: "x\ny".into()
                },
            ]
        );
    }

    #[test]
    fn incomplete_event_waits() {
        let mut p = Parser::default();
        p.push(b"data: [1]\n");
        assert_eq!(p.next_event(), None);
        p.push(b"\n");
        assert_eq!(p.next_event().map(|e| e.data), Some("[1]".into()));
    }
}
