//! The small value types of the protocol: [`QoS`], [`Protocol`], and the mapping of MQTT 5 reason
//! codes to MQTT 3.1.1 CONNACK return codes.

use crate::reason;

/// A Quality of Service level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// QoS 0: delivered at most once, never acknowledged.
    AtMostOnce = 0,
    /// QoS 1: delivered at least once (PUBLISH, PUBACK).
    AtLeastOnce = 1,
    /// QoS 2: delivered exactly once (PUBLISH, PUBREC, PUBREL, PUBCOMP).
    ExactlyOnce = 2,
}

impl QoS {
    /// The level with wire value `v`; `None` for 3 and above.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// Protocol level: 4 = 3.1.1, 5 = 5.0. (Level 3 "MQIsdp", MQTT 3.1, is accepted as V311 when
/// decoding a CONNECT; the decoded [`Connect`](crate::Connect) then says V311 and encodes as
/// "MQTT" level 4.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

impl Protocol {
    /// The protocol level byte written in CONNECT: 4 or 5.
    pub fn level(self) -> u8 {
        match self {
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }
}

/// Maps an MQTT 5 CONNACK reason code to the nearest MQTT 3.1.1 CONNACK return code:
///
/// | MQTT 5 | 3.1.1 |
/// |---|---|
/// | 0x00 success | 0 accepted |
/// | 0x84 unsupported protocol version | 1 unacceptable protocol version |
/// | 0x85 client identifier not valid | 2 identifier rejected |
/// | 0x86 bad user name or password, 0x8C bad authentication method | 4 bad user name or password |
/// | 0x87 not authorized, 0x8A banned | 5 not authorized |
/// | anything else (0x88 server unavailable, 0x89 server busy, ...) | 3 server unavailable |
pub fn connack_code_v311(v5_reason: u8) -> u8 {
    match v5_reason {
        reason::SUCCESS => 0,
        reason::UNSUPPORTED_PROTOCOL_VERSION => 1,
        reason::CLIENT_IDENTIFIER_NOT_VALID => 2,
        reason::BAD_USER_NAME_OR_PASSWORD | reason::BAD_AUTHENTICATION_METHOD => 4,
        reason::NOT_AUTHORIZED | reason::BANNED => 5,
        _ => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_from_u8() {
        assert_eq!(QoS::from_u8(0), Some(QoS::AtMostOnce));
        assert_eq!(QoS::from_u8(1), Some(QoS::AtLeastOnce));
        assert_eq!(QoS::from_u8(2), Some(QoS::ExactlyOnce));
        assert_eq!(QoS::from_u8(3), None);
        assert!(QoS::AtMostOnce < QoS::ExactlyOnce);
    }

    #[test]
    fn connack_codes() {
        assert_eq!(connack_code_v311(0x00), 0);
        assert_eq!(connack_code_v311(0x84), 1);
        assert_eq!(connack_code_v311(0x85), 2);
        assert_eq!(connack_code_v311(0x88), 3);
        assert_eq!(connack_code_v311(0x89), 3);
        assert_eq!(connack_code_v311(0x80), 3);
        assert_eq!(connack_code_v311(0x86), 4);
        assert_eq!(connack_code_v311(0x8C), 4);
        assert_eq!(connack_code_v311(0x87), 5);
        assert_eq!(connack_code_v311(0x8A), 5);
    }
}
