//! The two-byte acknowledgements: PUBACK, PUBREC, PUBREL, PUBCOMP (QoS 1/2 flows) and UNSUBACK.
//!
//! Each is a struct (not a bare `u16`) so MQTT 5's reason code and properties can be added as fields.
use super::primitives::write_u16;
use super::{Error, PacketType};

/// PUBACK: QoS 1 PUBLISH received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubAck {
    pub pkid: u16,
}

/// PUBREC: QoS 2 PUBLISH received (step 1 of 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubRec {
    pub pkid: u16,
}

/// PUBREL: release a QoS 2 message (step 2 of 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubRel {
    pub pkid: u16,
}

/// PUBCOMP: QoS 2 flow complete (step 3 of 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubComp {
    pub pkid: u16,
}

/// UNSUBACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsubAck {
    pub pkid: u16,
}

/// Append a four-byte acknowledgement with first byte `b1`.
pub(super) fn write_ack(
    out: &mut Vec<u8>,
    b1: u8,
    pkid: u16,
    packet: PacketType,
) -> Result<(), Error> {
    if pkid == 0 {
        return Err(Error::ZeroPacketId { packet });
    }
    out.push(b1);
    out.push(2);
    write_u16(out, pkid);
    Ok(())
}

/// Fast path for the session: append an acknowledgement of `packet` type for `pkid` (non-zero).
pub fn encode_ack(out: &mut Vec<u8>, packet: PacketType, pkid: u16) -> Result<usize, Error> {
    let b1 = match packet {
        PacketType::PubAck => 0x40,
        PacketType::PubRec => 0x50,
        PacketType::PubRel => 0x62,
        PacketType::PubComp => 0x70,
        PacketType::UnsubAck => 0xb0,
        _ => {
            return Err(Error::Malformed {
                packet,
                what: "not a two-byte acknowledgement type",
            })
        }
    };
    write_ack(out, b1, pkid, packet)?;
    Ok(4)
}
