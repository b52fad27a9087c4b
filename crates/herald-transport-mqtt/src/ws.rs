//! MQTT over WebSocket (`GET /mqtt`, subprotocol `mqtt`), merged into the main HTTP listener.
//!
//! Each binary WebSocket message carries MQTT bytes (a message may hold part of a packet or
//! several packets; MQTT's framing is what counts). The connection is then served exactly as a
//! TCP one: the WebSocket is bridged to an in-memory byte pipe handed to the broker.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::Mqtt;

/// Bytes buffered in each direction of the pipe between the WebSocket and the broker.
const PIPE_BYTES: usize = 64 * 1024;

/// The router of `GET /mqtt`; merge it into the main HTTP router.
pub fn router(mqtt: Mqtt) -> Router {
    Router::new().route("/mqtt", get(upgrade)).with_state(mqtt)
}

async fn upgrade(State(mqtt): State<Mqtt>, request: axum::extract::Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
    let headers: &HeaderMap = &parts.headers.clone();
    let Ok(upgrade) = WebSocketUpgrade::from_request_parts(&mut parts, &()).await else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({
                "error": "MQTT over WebSocket: send a WebSocket upgrade with subprotocol 'mqtt'"
            })),
        )
            .into_response();
    };
    let asks_mqtt = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("mqtt"));
    if !asks_mqtt {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({
                "error": "the WebSocket subprotocol must be 'mqtt'"
            })),
        )
            .into_response();
    }
    upgrade
        .protocols(["mqtt"])
        .max_message_size(mqtt.inner.config.max_packet_size as usize + 8)
        .on_upgrade(move |ws| bridge(mqtt, ws, peer))
}

/// Serves one WebSocket as an MQTT connection.
async fn bridge(mqtt: Mqtt, ws: WebSocket, peer: SocketAddr) {
    let (ours, broker_side) = tokio::io::duplex(PIPE_BYTES);
    mqtt.spawn_connection(broker_side, peer);
    pump(ws, ours).await;
}

/// Copies WebSocket binary messages into the pipe and the pipe's output into binary messages,
/// until either side ends.
async fn pump(ws: WebSocket, pipe: DuplexStream) {
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut pipe_rx, mut pipe_tx) = tokio::io::split(pipe);
    let inbound = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            match msg {
                Message::Binary(b) => {
                    if pipe_tx.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                // MQTT is binary; text frames are not MQTT (MQTT 6.0: close).
                Message::Text(_) => break,
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
        let _ = pipe_tx.shutdown().await;
    };
    let outbound = async {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        loop {
            buf.reserve(16 * 1024);
            match pipe_rx.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let chunk = buf.split().freeze();
                    if ws_tx.send(Message::Binary(chunk)).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.close().await;
    };
    // When the broker closes, the outbound side ends; when the client goes, the inbound side
    // ends and the broker sees end of stream. Either way both are done.
    tokio::select! {
        _ = inbound => {}
        _ = outbound => {}
    }
}
