//! MQTT 5 reason codes: one [`ReasonCode`] per entry of the specification's table (§2.4), with its value, its
//! spec name and the packets the table lists it for.
//!
//! The value 0x00 has three names (Success, Normal disconnection, Granted QoS 0), so a byte becomes a code
//! only together with its packet: [`ReasonCode::from_u8`]. A packet may carry the codes listed for it and,
//! if it reports errors (all but AUTH), any error code (≥ 0x80): an error the table lists for another packet
//! still says "failed" without ambiguity, and real brokers send them (mosquitto 2.0.11 answers an oversized PUBLISH with PUBACK
//! 0x95 Packet too large, listed for CONNACK and DISCONNECT only). A success code not listed for the packet,
//! or an undefined value, is an [`Error::InvalidReasonCode`](super::Error::InvalidReasonCode).
use std::fmt;

use super::{packet_bits, PacketType};

/// The packets whose codes include errors (AUTH's do not: a failed authentication ends in CONNACK or
/// DISCONNECT).
const WITH_ERRORS: u16 = packet_bits(&[
    PacketType::ConnAck,
    PacketType::PubAck,
    PacketType::PubRec,
    PacketType::PubRel,
    PacketType::PubComp,
    PacketType::SubAck,
    PacketType::UnsubAck,
    PacketType::Disconnect,
]);

macro_rules! reason_codes {
    ($($(#[$doc:meta])* $var:ident = $val:literal, $name:literal, [$($t:ident),*];)*) => {
        /// An MQTT 5 reason code (§2.4). [`fmt::Display`] writes the spec name and the value.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ReasonCode {
            $($(#[$doc])* $var,)*
        }

        impl ReasonCode {
            /// Every reason code, in the specification's order.
            pub const ALL: &'static [ReasonCode] = &[$(ReasonCode::$var),*];

            /// The byte on the wire.
            pub const fn to_u8(self) -> u8 {
                match self {
                    $(ReasonCode::$var => $val,)*
                }
            }

            /// The name the specification gives it, e.g. `"Quota exceeded"`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(ReasonCode::$var => $name,)*
                }
            }

            const fn listed(self) -> u16 {
                match self {
                    $(ReasonCode::$var => packet_bits(&[$(PacketType::$t),*]),)*
                }
            }
        }
    };
}

reason_codes! {
    Success = 0x00, "Success", [ConnAck, PubAck, PubRec, PubRel, PubComp, UnsubAck, Auth];
    NormalDisconnection = 0x00, "Normal disconnection", [Disconnect];
    GrantedQoS0 = 0x00, "Granted QoS 0", [SubAck];
    GrantedQoS1 = 0x01, "Granted QoS 1", [SubAck];
    GrantedQoS2 = 0x02, "Granted QoS 2", [SubAck];
    DisconnectWithWillMessage = 0x04, "Disconnect with Will Message", [Disconnect];
    NoMatchingSubscribers = 0x10, "No matching subscribers", [PubAck, PubRec];
    NoSubscriptionExisted = 0x11, "No subscription existed", [UnsubAck];
    ContinueAuthentication = 0x18, "Continue authentication", [Auth];
    ReAuthenticate = 0x19, "Re-authenticate", [Auth];
    UnspecifiedError = 0x80, "Unspecified error", [ConnAck, PubAck, PubRec, SubAck, UnsubAck, Disconnect];
    MalformedPacket = 0x81, "Malformed Packet", [ConnAck, Disconnect];
    ProtocolError = 0x82, "Protocol Error", [ConnAck, Disconnect];
    ImplementationSpecificError = 0x83, "Implementation specific error",
        [ConnAck, PubAck, PubRec, SubAck, UnsubAck, Disconnect];
    UnsupportedProtocolVersion = 0x84, "Unsupported Protocol Version", [ConnAck];
    ClientIdentifierNotValid = 0x85, "Client Identifier not valid", [ConnAck];
    BadUserNameOrPassword = 0x86, "Bad User Name or Password", [ConnAck];
    NotAuthorized = 0x87, "Not authorized", [ConnAck, PubAck, PubRec, SubAck, UnsubAck, Disconnect];
    ServerUnavailable = 0x88, "Server unavailable", [ConnAck];
    ServerBusy = 0x89, "Server busy", [ConnAck, Disconnect];
    Banned = 0x8A, "Banned", [ConnAck];
    ServerShuttingDown = 0x8B, "Server shutting down", [Disconnect];
    BadAuthenticationMethod = 0x8C, "Bad authentication method", [ConnAck, Disconnect];
    KeepAliveTimeout = 0x8D, "Keep Alive timeout", [Disconnect];
    SessionTakenOver = 0x8E, "Session taken over", [Disconnect];
    TopicFilterInvalid = 0x8F, "Topic Filter invalid", [SubAck, UnsubAck, Disconnect];
    TopicNameInvalid = 0x90, "Topic Name invalid", [ConnAck, PubAck, PubRec, Disconnect];
    PacketIdentifierInUse = 0x91, "Packet Identifier in use", [PubAck, PubRec, SubAck, UnsubAck];
    PacketIdentifierNotFound = 0x92, "Packet Identifier not found", [PubRel, PubComp];
    ReceiveMaximumExceeded = 0x93, "Receive Maximum exceeded", [Disconnect];
    TopicAliasInvalid = 0x94, "Topic Alias invalid", [Disconnect];
    PacketTooLarge = 0x95, "Packet too large", [ConnAck, Disconnect];
    MessageRateTooHigh = 0x96, "Message rate too high", [Disconnect];
    QuotaExceeded = 0x97, "Quota exceeded", [ConnAck, PubAck, PubRec, SubAck, Disconnect];
    AdministrativeAction = 0x98, "Administrative action", [Disconnect];
    PayloadFormatInvalid = 0x99, "Payload format invalid", [ConnAck, PubAck, PubRec, Disconnect];
    RetainNotSupported = 0x9A, "Retain not supported", [ConnAck, Disconnect];
    QoSNotSupported = 0x9B, "QoS not supported", [ConnAck, Disconnect];
    UseAnotherServer = 0x9C, "Use another server", [ConnAck, Disconnect];
    ServerMoved = 0x9D, "Server moved", [ConnAck, Disconnect];
    SharedSubscriptionsNotSupported = 0x9E, "Shared Subscriptions not supported", [SubAck, Disconnect];
    ConnectionRateExceeded = 0x9F, "Connection rate exceeded", [ConnAck, Disconnect];
    MaximumConnectTime = 0xA0, "Maximum connect time", [Disconnect];
    SubscriptionIdentifiersNotSupported = 0xA1, "Subscription Identifiers not supported", [SubAck, Disconnect];
    WildcardSubscriptionsNotSupported = 0xA2, "Wildcard Subscriptions not supported", [SubAck, Disconnect];
}

impl ReasonCode {
    /// The code `v` names in `packet`, if `packet` may carry it (see the module docs).
    pub fn from_u8(packet: PacketType, v: u8) -> Option<ReasonCode> {
        let bit = 1 << packet as u8;
        let mut error = None;
        for &c in Self::ALL {
            if c.to_u8() == v {
                if c.listed() & bit != 0 {
                    return Some(c);
                }
                if v >= 0x80 {
                    error = Some(c);
                }
            }
        }
        // Error values have one name each, so `error` is that code; it counts if `packet` reports errors.
        error.filter(|_| WITH_ERRORS & bit != 0)
    }

    /// Whether `packet` may carry this code: listed for it, or an error code in a packet with reason codes.
    pub fn is_valid_in(self, packet: PacketType) -> bool {
        Self::from_u8(packet, self.to_u8()) == Some(self)
    }

    /// Whether the specification's table lists this code for `packet` (stricter than [`Self::is_valid_in`]).
    pub fn is_listed_for(self, packet: PacketType) -> bool {
        self.listed() & (1 << packet as u8) != 0
    }

    /// Values of 0x80 and above report a failure.
    pub const fn is_error(self) -> bool {
        self.to_u8() >= 0x80
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:02X})", self.name(), self.to_u8())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        // 43 values, 0x00 under three names.
        assert_eq!(ReasonCode::ALL.len(), 45);
        assert_eq!(ReasonCode::QuotaExceeded.to_u8(), 0x97);
        assert_eq!(ReasonCode::QuotaExceeded.name(), "Quota exceeded");
        assert_eq!(
            ReasonCode::QuotaExceeded.to_string(),
            "Quota exceeded (0x97)"
        );
        // Error values are unique; 0x00 has three names, one per packet family.
        for a in ReasonCode::ALL {
            for b in ReasonCode::ALL {
                if a != b && a.to_u8() == b.to_u8() {
                    assert_eq!(a.to_u8(), 0, "{a:?} {b:?}");
                    assert_eq!(a.listed() & b.listed(), 0, "{a:?} {b:?}");
                }
            }
        }
    }

    #[test]
    fn by_packet() {
        use PacketType as T;
        assert_eq!(
            ReasonCode::from_u8(T::Disconnect, 0),
            Some(ReasonCode::NormalDisconnection)
        );
        assert_eq!(
            ReasonCode::from_u8(T::SubAck, 0),
            Some(ReasonCode::GrantedQoS0)
        );
        assert_eq!(ReasonCode::from_u8(T::PubAck, 0), Some(ReasonCode::Success));
        assert_eq!(
            ReasonCode::from_u8(T::SubAck, 2),
            Some(ReasonCode::GrantedQoS2)
        );
        // A success code listed elsewhere only, or an undefined value: refused.
        assert_eq!(ReasonCode::from_u8(T::ConnAck, 1), None);
        assert_eq!(ReasonCode::from_u8(T::PubAck, 0x18), None);
        assert_eq!(ReasonCode::from_u8(T::PubAck, 0x03), None);
        assert_eq!(ReasonCode::from_u8(T::PubAck, 0xA3), None);
        // Any error code in a packet with reason codes (mosquitto sends PUBACK 0x95).
        assert_eq!(
            ReasonCode::from_u8(T::PubAck, 0x95),
            Some(ReasonCode::PacketTooLarge)
        );
        assert!(!ReasonCode::PacketTooLarge.is_listed_for(T::PubAck));
        assert!(ReasonCode::PacketTooLarge.is_valid_in(T::PubAck));
        assert!(ReasonCode::PacketTooLarge.is_valid_in(T::PubRel));
        assert_eq!(ReasonCode::from_u8(T::Auth, 0x87), None);
        // Packets without reason codes carry none.
        for t in [
            T::Connect,
            T::Publish,
            T::Subscribe,
            T::Unsubscribe,
            T::PingReq,
            T::PingResp,
        ] {
            for v in 0..=255 {
                assert_eq!(ReasonCode::from_u8(t, v), None, "{t} {v}");
            }
        }
        assert!(ReasonCode::Success.is_valid_in(T::Auth));
        assert!(!ReasonCode::Success.is_valid_in(T::Disconnect));
        assert!(ReasonCode::NotAuthorized.is_error());
        assert!(!ReasonCode::NoMatchingSubscribers.is_error());
    }
}
