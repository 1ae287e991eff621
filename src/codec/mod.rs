//! MQTT packets ⇄ bytes (MQTT 3.1.1, and the MQTT 3.1 `MQIsdp` CONNECT).
//!
//! STUB written by the lead to fix the interface other layers use. The codec owner replaces the body and may
//! add to it, but keeps these public names and meanings.

/// Quality of service of a PUBLISH or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// `Some` for 0, 1, 2; `None` otherwise.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// The protocol level sent in CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1 (`MQIsdp`, level 3) — KX's `MQTTVersion 3`.
    V31,
    /// MQTT 3.1.1 (`MQTT`, level 4) — the default.
    V311,
}

/// CONNACK return codes of MQTT 3.1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectReturnCode {
    Accepted,
    UnacceptableProtocolVersion,
    IdentifierRejected,
    ServerUnavailable,
    BadUsernameOrPassword,
    NotAuthorized,
    /// A code the 3.1.1 specification does not define.
    Other(u8),
}
