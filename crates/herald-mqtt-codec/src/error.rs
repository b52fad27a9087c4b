//! [`DecodeError`]: why bytes could not be decoded, and the reason code that answers it.

use crate::reason;

/// Why the bytes at the front of a buffer are not an acceptable packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Bytes that are not a valid packet (bad remaining length encoding, truncated fields inside a
    /// complete packet, invalid UTF-8 or U+0000 in a string, reserved flag bits wrong, unknown
    /// packet type, packet id 0 where one is required, bad property id or wrong property type, a
    /// property not allowed in that packet, QoS 3, ...). Maps to reason 0x81.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// Well-formed but breaks a protocol rule the codec can see (e.g. SUBSCRIBE with no filters,
    /// will QoS without will flag, AUTH on V311, a duplicate property). Reason 0x82.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The fixed header announces more than `max_packet_size` bytes (whole packet incl. fixed
    /// header). Detected from the header alone, before the body is buffered. Reason 0x95.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The whole packet's announced size in bytes, fixed header included.
        size: u64,
        /// The maximum packet size in force.
        max: u32,
    },
    /// CONNECT with a protocol name/level this codec does not speak. Reason 0x84 (V5) / return
    /// code 1 (V311).
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedProtocol {
        /// The protocol name in the CONNECT.
        name: String,
        /// The protocol level in the CONNECT.
        level: u8,
    },
}

impl DecodeError {
    /// The MQTT 5 reason code that answers this error (in a CONNACK or DISCONNECT): 0x81, 0x82,
    /// 0x95 or 0x84. For an MQTT 3.1.1 CONNACK use
    /// [`connack_code_v311`](crate::connack_code_v311) on it.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) => reason::MALFORMED_PACKET,
            DecodeError::Protocol(_) => reason::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocol { .. } => reason::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }
}
