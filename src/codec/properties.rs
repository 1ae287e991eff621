//! MQTT 5 properties (§2.2.2): the typed [`Property`] values, the borrowed [`Properties`] view a packet
//! carries, and [`PropertiesBuf`], which encodes a list for sending.
//!
//! A [`Properties`] is the property bytes of one packet (without the length prefix), checked once when decoded
//! or pushed: known identifiers, values of the right size and range, UTF-8 strings without U+0000. Reading it
//! again (its iterator and accessors) cannot fail and allocates nothing. Which properties a packet (or a
//! CONNECT's will) may carry, and which may repeat (User Property everywhere, Subscription Identifier in
//! PUBLISH), is checked when a list is decoded for a packet and again when it is encoded into one.
use std::fmt;

use super::primitives::{
    check_out_binary, check_out_str, check_topic, remaining_length_len, write_binary,
    write_remaining_length, write_u16, Reader, MAX_REMAINING_LENGTH,
};
use super::{packet_bits, Error, PacketType, QoS};

/// Where a property list sits: in a packet, or in the will of a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyScope {
    Packet(PacketType),
    Will,
}

impl PropertyScope {
    const fn bit(self) -> u16 {
        match self {
            // Packet type 0 is reserved, so bit 0 is free for the will.
            PropertyScope::Packet(t) => 1 << t as u8,
            PropertyScope::Will => 1,
        }
    }
    /// The packet the list is in (CONNECT for the will).
    pub fn packet(self) -> PacketType {
        match self {
            PropertyScope::Packet(t) => t,
            PropertyScope::Will => PacketType::Connect,
        }
    }
}

impl fmt::Display for PropertyScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropertyScope::Packet(t) => write!(f, "{t}"),
            PropertyScope::Will => f.write_str("the will of CONNECT"),
        }
    }
}

/// How a property's value is encoded.
#[derive(Clone, Copy)]
enum Kind {
    Byte,
    U16,
    U32,
    VarInt,
    Str,
    Bin,
    Pair,
}

/// The will's bit in the allowed sets (packet type 0 is reserved, so bit 0 is free).
const WILL: u16 = 1;

macro_rules! property_ids {
    ($($var:ident = $id:literal, $name:literal, $kind:ident, $will:literal, [$($t:ident),*];)*) => {
        /// A property identifier (§2.2.2.2).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum PropertyId {
            $($var = $id,)*
        }

        impl PropertyId {
            /// Every property, in the specification's order.
            pub const ALL: &'static [PropertyId] = &[$(PropertyId::$var),*];

            pub fn from_u8(v: u8) -> Option<PropertyId> {
                match v {
                    $($id => Some(PropertyId::$var),)*
                    _ => None,
                }
            }

            /// The name the specification gives it, e.g. `"Message Expiry Interval"`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(PropertyId::$var => $name,)*
                }
            }

            const fn kind(self) -> Kind {
                match self {
                    $(PropertyId::$var => Kind::$kind,)*
                }
            }

            const fn allowed(self) -> u16 {
                match self {
                    $(PropertyId::$var => packet_bits(&[$(PacketType::$t),*]) | if $will { WILL } else { 0 },)*
                }
            }
        }
    };
}

property_ids! {
    PayloadFormatIndicator = 0x01, "Payload Format Indicator", Byte, true, [Publish];
    MessageExpiryInterval = 0x02, "Message Expiry Interval", U32, true, [Publish];
    ContentType = 0x03, "Content Type", Str, true, [Publish];
    ResponseTopic = 0x08, "Response Topic", Str, true, [Publish];
    CorrelationData = 0x09, "Correlation Data", Bin, true, [Publish];
    SubscriptionIdentifier = 0x0B, "Subscription Identifier", VarInt, false, [Publish, Subscribe];
    SessionExpiryInterval = 0x11, "Session Expiry Interval", U32, false, [Connect, ConnAck, Disconnect];
    AssignedClientIdentifier = 0x12, "Assigned Client Identifier", Str, false, [ConnAck];
    ServerKeepAlive = 0x13, "Server Keep Alive", U16, false, [ConnAck];
    AuthenticationMethod = 0x15, "Authentication Method", Str, false, [Connect, ConnAck, Auth];
    AuthenticationData = 0x16, "Authentication Data", Bin, false, [Connect, ConnAck, Auth];
    RequestProblemInformation = 0x17, "Request Problem Information", Byte, false, [Connect];
    WillDelayInterval = 0x18, "Will Delay Interval", U32, true, [];
    RequestResponseInformation = 0x19, "Request Response Information", Byte, false, [Connect];
    ResponseInformation = 0x1A, "Response Information", Str, false, [ConnAck];
    ServerReference = 0x1C, "Server Reference", Str, false, [ConnAck, Disconnect];
    ReasonString = 0x1F, "Reason String", Str, false,
        [ConnAck, PubAck, PubRec, PubRel, PubComp, SubAck, UnsubAck, Disconnect, Auth];
    ReceiveMaximum = 0x21, "Receive Maximum", U16, false, [Connect, ConnAck];
    TopicAliasMaximum = 0x22, "Topic Alias Maximum", U16, false, [Connect, ConnAck];
    TopicAlias = 0x23, "Topic Alias", U16, false, [Publish];
    MaximumQoS = 0x24, "Maximum QoS", Byte, false, [ConnAck];
    RetainAvailable = 0x25, "Retain Available", Byte, false, [ConnAck];
    UserProperty = 0x26, "User Property", Pair, true,
        [Connect, ConnAck, Publish, PubAck, PubRec, PubRel, PubComp, Subscribe, SubAck, Unsubscribe,
         UnsubAck, Disconnect, Auth];
    MaximumPacketSize = 0x27, "Maximum Packet Size", U32, false, [Connect, ConnAck];
    WildcardSubscriptionAvailable = 0x28, "Wildcard Subscription Available", Byte, false, [ConnAck];
    SubscriptionIdentifierAvailable = 0x29, "Subscription Identifier Available", Byte, false, [ConnAck];
    SharedSubscriptionAvailable = 0x2A, "Shared Subscription Available", Byte, false, [ConnAck];
}

impl PropertyId {
    /// Whether a list in `scope` may carry this property.
    pub fn is_allowed(self, scope: PropertyScope) -> bool {
        self.allowed() & scope.bit() != 0
    }
    /// Whether it may appear more than once in `scope`: User Property anywhere, Subscription Identifier in
    /// PUBLISH (one per matching subscription).
    pub fn is_repeatable(self, scope: PropertyScope) -> bool {
        match self {
            PropertyId::UserProperty => true,
            PropertyId::SubscriptionIdentifier => {
                scope == PropertyScope::Packet(PacketType::Publish)
            }
            _ => false,
        }
    }
}

impl fmt::Display for PropertyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Largest Subscription Identifier (the largest variable byte integer).
pub const MAX_SUBSCRIPTION_ID: u32 = MAX_REMAINING_LENGTH as u32;

/// One property with its typed value, borrowing strings and binary data. The one-byte 0/1 properties are
/// `bool`s (Payload Format Indicator: `true` = UTF-8 payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Property<'a> {
    PayloadFormatIndicator(bool),
    /// Seconds.
    MessageExpiryInterval(u32),
    ContentType(&'a str),
    ResponseTopic(&'a str),
    CorrelationData(&'a [u8]),
    /// 1..=[`MAX_SUBSCRIPTION_ID`].
    SubscriptionIdentifier(u32),
    /// Seconds; `u32::MAX` means the session never expires.
    SessionExpiryInterval(u32),
    AssignedClientIdentifier(&'a str),
    /// Seconds.
    ServerKeepAlive(u16),
    AuthenticationMethod(&'a str),
    AuthenticationData(&'a [u8]),
    RequestProblemInformation(bool),
    /// Seconds.
    WillDelayInterval(u32),
    RequestResponseInformation(bool),
    ResponseInformation(&'a str),
    ServerReference(&'a str),
    ReasonString(&'a str),
    /// Non-zero.
    ReceiveMaximum(u16),
    TopicAliasMaximum(u16),
    /// Non-zero.
    TopicAlias(u16),
    /// At most once (QoS 2 is the default when absent).
    MaximumQoS(QoS),
    RetainAvailable(bool),
    /// Name and value.
    UserProperty(&'a str, &'a str),
    /// Bytes, non-zero.
    MaximumPacketSize(u32),
    WildcardSubscriptionAvailable(bool),
    SubscriptionIdentifierAvailable(bool),
    SharedSubscriptionAvailable(bool),
}

/// A property value as the wire has it.
enum Value<'a> {
    Byte(u8),
    U16(u16),
    U32(u32),
    VarInt(u32),
    Str(&'a str),
    Bin(&'a [u8]),
    Pair(&'a str, &'a str),
}

impl<'a> Property<'a> {
    pub fn id(&self) -> PropertyId {
        self.split().0
    }

    fn split(&self) -> (PropertyId, Value<'a>) {
        use Property as P;
        use PropertyId as I;
        match *self {
            P::PayloadFormatIndicator(b) => (I::PayloadFormatIndicator, Value::Byte(b as u8)),
            P::MessageExpiryInterval(v) => (I::MessageExpiryInterval, Value::U32(v)),
            P::ContentType(s) => (I::ContentType, Value::Str(s)),
            P::ResponseTopic(s) => (I::ResponseTopic, Value::Str(s)),
            P::CorrelationData(b) => (I::CorrelationData, Value::Bin(b)),
            P::SubscriptionIdentifier(v) => (I::SubscriptionIdentifier, Value::VarInt(v)),
            P::SessionExpiryInterval(v) => (I::SessionExpiryInterval, Value::U32(v)),
            P::AssignedClientIdentifier(s) => (I::AssignedClientIdentifier, Value::Str(s)),
            P::ServerKeepAlive(v) => (I::ServerKeepAlive, Value::U16(v)),
            P::AuthenticationMethod(s) => (I::AuthenticationMethod, Value::Str(s)),
            P::AuthenticationData(b) => (I::AuthenticationData, Value::Bin(b)),
            P::RequestProblemInformation(b) => (I::RequestProblemInformation, Value::Byte(b as u8)),
            P::WillDelayInterval(v) => (I::WillDelayInterval, Value::U32(v)),
            P::RequestResponseInformation(b) => {
                (I::RequestResponseInformation, Value::Byte(b as u8))
            }
            P::ResponseInformation(s) => (I::ResponseInformation, Value::Str(s)),
            P::ServerReference(s) => (I::ServerReference, Value::Str(s)),
            P::ReasonString(s) => (I::ReasonString, Value::Str(s)),
            P::ReceiveMaximum(v) => (I::ReceiveMaximum, Value::U16(v)),
            P::TopicAliasMaximum(v) => (I::TopicAliasMaximum, Value::U16(v)),
            P::TopicAlias(v) => (I::TopicAlias, Value::U16(v)),
            P::MaximumQoS(q) => (I::MaximumQoS, Value::Byte(q as u8)),
            P::RetainAvailable(b) => (I::RetainAvailable, Value::Byte(b as u8)),
            P::UserProperty(k, v) => (I::UserProperty, Value::Pair(k, v)),
            P::MaximumPacketSize(v) => (I::MaximumPacketSize, Value::U32(v)),
            P::WildcardSubscriptionAvailable(b) => {
                (I::WildcardSubscriptionAvailable, Value::Byte(b as u8))
            }
            P::SubscriptionIdentifierAvailable(b) => {
                (I::SubscriptionIdentifierAvailable, Value::Byte(b as u8))
            }
            P::SharedSubscriptionAvailable(b) => {
                (I::SharedSubscriptionAvailable, Value::Byte(b as u8))
            }
        }
    }

    /// The typed property for a value read as `id`'s kind; 0/1 bytes and Maximum QoS are range-checked here.
    fn join(id: PropertyId, v: Value<'a>) -> Result<Property<'a>, Error> {
        use Property as P;
        use PropertyId as I;
        let flag = |b: u8| match b {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Error::InvalidPropertyValue {
                property: id,
                what: "must be 0 or 1",
            }),
        };
        let p = match (id, v) {
            (I::PayloadFormatIndicator, Value::Byte(b)) => P::PayloadFormatIndicator(flag(b)?),
            (I::MessageExpiryInterval, Value::U32(v)) => P::MessageExpiryInterval(v),
            (I::ContentType, Value::Str(s)) => P::ContentType(s),
            (I::ResponseTopic, Value::Str(s)) => P::ResponseTopic(s),
            (I::CorrelationData, Value::Bin(b)) => P::CorrelationData(b),
            (I::SubscriptionIdentifier, Value::VarInt(v)) => P::SubscriptionIdentifier(v),
            (I::SessionExpiryInterval, Value::U32(v)) => P::SessionExpiryInterval(v),
            (I::AssignedClientIdentifier, Value::Str(s)) => P::AssignedClientIdentifier(s),
            (I::ServerKeepAlive, Value::U16(v)) => P::ServerKeepAlive(v),
            (I::AuthenticationMethod, Value::Str(s)) => P::AuthenticationMethod(s),
            (I::AuthenticationData, Value::Bin(b)) => P::AuthenticationData(b),
            (I::RequestProblemInformation, Value::Byte(b)) => {
                P::RequestProblemInformation(flag(b)?)
            }
            (I::WillDelayInterval, Value::U32(v)) => P::WillDelayInterval(v),
            (I::RequestResponseInformation, Value::Byte(b)) => {
                P::RequestResponseInformation(flag(b)?)
            }
            (I::ResponseInformation, Value::Str(s)) => P::ResponseInformation(s),
            (I::ServerReference, Value::Str(s)) => P::ServerReference(s),
            (I::ReasonString, Value::Str(s)) => P::ReasonString(s),
            (I::ReceiveMaximum, Value::U16(v)) => P::ReceiveMaximum(v),
            (I::TopicAliasMaximum, Value::U16(v)) => P::TopicAliasMaximum(v),
            (I::TopicAlias, Value::U16(v)) => P::TopicAlias(v),
            (I::MaximumQoS, Value::Byte(b)) => P::MaximumQoS(if flag(b)? {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            }),
            (I::RetainAvailable, Value::Byte(b)) => P::RetainAvailable(flag(b)?),
            (I::UserProperty, Value::Pair(k, v)) => P::UserProperty(k, v),
            (I::MaximumPacketSize, Value::U32(v)) => P::MaximumPacketSize(v),
            (I::WildcardSubscriptionAvailable, Value::Byte(b)) => {
                P::WildcardSubscriptionAvailable(flag(b)?)
            }
            (I::SubscriptionIdentifierAvailable, Value::Byte(b)) => {
                P::SubscriptionIdentifierAvailable(flag(b)?)
            }
            (I::SharedSubscriptionAvailable, Value::Byte(b)) => {
                P::SharedSubscriptionAvailable(flag(b)?)
            }
            // `read` takes the value's kind from `id`.
            _ => {
                return Err(Error::InvalidPropertyValue {
                    property: id,
                    what: "has a value of the wrong type",
                })
            }
        };
        p.check_range()?;
        Ok(p)
    }

    /// The range rules of values whose type allows more than the protocol does.
    fn check_range(&self) -> Result<(), Error> {
        let bad = |what| {
            Err(Error::InvalidPropertyValue {
                property: self.id(),
                what,
            })
        };
        match *self {
            Property::ReceiveMaximum(0)
            | Property::TopicAlias(0)
            | Property::MaximumPacketSize(0) => bad("must not be 0"),
            Property::SubscriptionIdentifier(v) if v == 0 || v > MAX_SUBSCRIPTION_ID => {
                bad("must be 1 to 268435455")
            }
            Property::MaximumQoS(QoS::ExactlyOnce) => bad("must be 0 or 1"),
            Property::ResponseTopic(t) if check_topic(t).is_err() => {
                bad("must be a topic name: not empty, no wildcards")
            }
            _ => Ok(()),
        }
    }

    /// Read one property (identifier and value) from `r`.
    fn read(r: &mut Reader<'a>, scope: PropertyScope) -> Result<Property<'a>, Error> {
        // The identifier is a variable byte integer; every defined one is a single byte below 0x80.
        let b = r.u8("property identifier")?;
        let id = PropertyId::from_u8(b).ok_or(Error::UnknownProperty { scope, id: b })?;
        let name = id.name();
        let v = match id.kind() {
            Kind::Byte => Value::Byte(r.u8(name)?),
            Kind::U16 => Value::U16(r.u16(name)?),
            Kind::U32 => Value::U32(r.u32(name)?),
            Kind::VarInt => Value::VarInt(r.varint(name)?),
            Kind::Str => Value::Str(r.string(name)?),
            Kind::Bin => Value::Bin(r.binary(name)?),
            Kind::Pair => Value::Pair(r.string(name)?, r.string(name)?),
        };
        Property::join(id, v)
    }

    /// Encoded size: identifier and value.
    fn len(&self) -> usize {
        1 + match self.split().1 {
            Value::Byte(_) => 1,
            Value::U16(_) => 2,
            Value::U32(_) => 4,
            Value::VarInt(v) => remaining_length_len(v as usize),
            Value::Str(s) => 2 + s.len(),
            Value::Bin(b) => 2 + b.len(),
            Value::Pair(k, v) => 4 + k.len() + v.len(),
        }
    }

    /// Check the value for sending: strings and binary data fit their length prefix, strings have no U+0000,
    /// numbers are in range.
    fn check_out(&self) -> Result<(), Error> {
        let name = self.id().name();
        match self.split().1 {
            Value::Str(s) => check_out_str(s, name)?,
            Value::Bin(b) => check_out_binary(b, name)?,
            Value::Pair(k, v) => {
                check_out_str(k, name)?;
                check_out_str(v, name)?;
            }
            _ => {}
        }
        self.check_range()
    }

    /// Append identifier and value (checked by `check_out`).
    fn write(&self, out: &mut Vec<u8>) {
        let (id, v) = self.split();
        out.push(id as u8);
        match v {
            Value::Byte(b) => out.push(b),
            Value::U16(v) => write_u16(out, v),
            Value::U32(v) => out.extend_from_slice(&v.to_be_bytes()),
            Value::VarInt(v) => {
                let _ = write_remaining_length(out, v as usize);
            }
            Value::Str(s) => write_binary(out, s.as_bytes()),
            Value::Bin(b) => write_binary(out, b),
            Value::Pair(k, v) => {
                write_binary(out, k.as_bytes());
                write_binary(out, v.as_bytes());
            }
        }
    }
}

/// The properties of one packet (or will): validated wire bytes, read without allocating.
///
/// Obtained from a decoded packet, or from a [`PropertiesBuf`] to encode one. Two lists are equal when their
/// bytes are (same properties in the same order).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Properties<'a> {
    raw: &'a [u8],
}

macro_rules! accessors {
    ($($(#[$doc:meta])* $fn:ident: $var:ident -> $t:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $fn(&self) -> Option<$t> {
                self.iter().find_map(|p| match p {
                    Property::$var(v) => Some(v),
                    _ => None,
                })
            }
        )*
    };
}

impl<'a> Properties<'a> {
    /// No properties.
    pub const EMPTY: Properties<'static> = Properties { raw: &[] };

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
    /// The property bytes as on the wire, without the length prefix.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }
    /// Bytes the list takes in a packet: the length prefix and the properties.
    pub fn encoded_len(&self) -> usize {
        remaining_length_len(self.raw.len()) + self.raw.len()
    }
    /// The properties in wire order.
    pub fn iter(&self) -> PropertyIter<'a> {
        PropertyIter {
            r: Reader::new(self.raw, PacketType::Publish),
        }
    }
    /// The first property with identifier `id`.
    pub fn get(&self, id: PropertyId) -> Option<Property<'a>> {
        self.iter().find(|p| p.id() == id)
    }
    /// User Property name/value pairs, in order (names may repeat).
    pub fn user_properties(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.iter().filter_map(|p| match p {
            Property::UserProperty(k, v) => Some((k, v)),
            _ => None,
        })
    }
    /// Subscription Identifiers (a PUBLISH carries one per matching subscription that has one).
    pub fn subscription_identifiers(&self) -> impl Iterator<Item = u32> + 'a {
        self.iter().filter_map(|p| match p {
            Property::SubscriptionIdentifier(v) => Some(v),
            _ => None,
        })
    }

    accessors! {
        payload_format_indicator: PayloadFormatIndicator -> bool;
        message_expiry_interval: MessageExpiryInterval -> u32;
        content_type: ContentType -> &'a str;
        response_topic: ResponseTopic -> &'a str;
        correlation_data: CorrelationData -> &'a [u8];
        session_expiry_interval: SessionExpiryInterval -> u32;
        assigned_client_identifier: AssignedClientIdentifier -> &'a str;
        server_keep_alive: ServerKeepAlive -> u16;
        authentication_method: AuthenticationMethod -> &'a str;
        authentication_data: AuthenticationData -> &'a [u8];
        request_problem_information: RequestProblemInformation -> bool;
        will_delay_interval: WillDelayInterval -> u32;
        request_response_information: RequestResponseInformation -> bool;
        response_information: ResponseInformation -> &'a str;
        server_reference: ServerReference -> &'a str;
        reason_string: ReasonString -> &'a str;
        receive_maximum: ReceiveMaximum -> u16;
        topic_alias_maximum: TopicAliasMaximum -> u16;
        topic_alias: TopicAlias -> u16;
        maximum_qos: MaximumQoS -> QoS;
        retain_available: RetainAvailable -> bool;
        maximum_packet_size: MaximumPacketSize -> u32;
        wildcard_subscription_available: WildcardSubscriptionAvailable -> bool;
        subscription_identifier_available: SubscriptionIdentifierAvailable -> bool;
        shared_subscription_available: SharedSubscriptionAvailable -> bool;
    }

    /// Read a property length and the list it covers from `r`, checked for `scope`.
    pub(super) fn read(r: &mut Reader<'a>, scope: PropertyScope) -> Result<Self, Error> {
        let len = r.varint("property length")? as usize;
        let raw = r.take(len, "properties")?;
        let mut v = Reader::new(raw, scope.packet());
        let mut seen = 0u64;
        while !v.is_empty() {
            let p = Property::read(&mut v, scope)?;
            seen = note(seen, p.id(), scope)?;
        }
        Ok(Properties { raw })
    }

    /// Check the list may go into `scope` (allowed there, no forbidden repeat) before encoding it.
    pub fn check(&self, scope: PropertyScope) -> Result<(), Error> {
        self.check_seen(scope).map(|_| ())
    }

    /// [`Self::check`], returning the set of identifiers present (bit `id`). Reads only the identifiers and
    /// lengths: the values were checked when the list was made.
    pub(super) fn check_seen(&self, scope: PropertyScope) -> Result<u64, Error> {
        let mut seen = 0u64;
        let mut b = self.raw;
        while let Some((&id, rest)) = b.split_first() {
            // Validated bytes: every identifier is known and every value is whole.
            let Some(id) = PropertyId::from_u8(id) else {
                break;
            };
            seen = note(seen, id, scope)?;
            let str_len = |b: &[u8]| match b {
                [h, l, ..] => 2 + ((*h as usize) << 8 | *l as usize),
                _ => b.len(),
            };
            let n = match id.kind() {
                Kind::Byte => 1,
                Kind::U16 => 2,
                Kind::U32 => 4,
                Kind::VarInt => rest
                    .iter()
                    .position(|&x| x & 0x80 == 0)
                    .map_or(rest.len(), |i| i + 1),
                Kind::Str | Kind::Bin => str_len(rest),
                Kind::Pair => {
                    let k = str_len(rest);
                    k + str_len(rest.get(k..).unwrap_or(&[]))
                }
            };
            b = rest.get(n..).unwrap_or(&[]);
        }
        Ok(seen)
    }

    /// Append the property length and the properties.
    pub(super) fn write(&self, out: &mut Vec<u8>) {
        let _ = write_remaining_length(out, self.raw.len());
        out.extend_from_slice(self.raw);
    }
}

/// Record `id` in the `seen` set of a list in `scope`: an error if it is not allowed there or repeats where it
/// may not.
fn note(seen: u64, id: PropertyId, scope: PropertyScope) -> Result<u64, Error> {
    if !id.is_allowed(scope) {
        return Err(Error::PropertyNotAllowed {
            scope,
            property: id,
        });
    }
    let bit = 1u64 << id as u8;
    if seen & bit != 0 && !id.is_repeatable(scope) {
        return Err(Error::DuplicateProperty {
            scope,
            property: id,
        });
    }
    Ok(seen | bit)
}

impl fmt::Debug for Properties<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for Properties<'a> {
    type Item = Property<'a>;
    type IntoIter = PropertyIter<'a>;
    fn into_iter(self) -> PropertyIter<'a> {
        self.iter()
    }
}

/// Iterator over a [`Properties`] list.
pub struct PropertyIter<'a> {
    r: Reader<'a>,
}

impl<'a> Iterator for PropertyIter<'a> {
    type Item = Property<'a>;
    fn next(&mut self) -> Option<Property<'a>> {
        if self.r.is_empty() {
            return None;
        }
        // The bytes were validated when the list was made, so this does not fail.
        Property::read(&mut self.r, PropertyScope::Will).ok()
    }
}

/// An owned property list being built for sending; [`PropertiesBuf::properties`] lends it to a packet.
///
/// Reusable: [`PropertiesBuf::clear`] keeps the allocation. Each [`PropertiesBuf::push`] checks the value;
/// whether the list suits a packet is checked when the packet is encoded.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PropertiesBuf {
    raw: Vec<u8>,
}

impl PropertiesBuf {
    pub fn new() -> Self {
        Self::default()
    }
    /// Append a property. On error (a string with U+0000 or longer than 65 535 bytes, a value out of range,
    /// the list beyond MQTT's size limit, or no memory for it) nothing is appended.
    pub fn push(&mut self, p: Property<'_>) -> Result<&mut Self, Error> {
        p.check_out()?;
        let n = p.len();
        let size = self.raw.len() + n;
        if size > MAX_REMAINING_LENGTH {
            return Err(Error::PayloadTooLarge { size });
        }
        self.raw
            .try_reserve(n)
            .map_err(|_| Error::PayloadTooLarge { size })?;
        p.write(&mut self.raw);
        Ok(self)
    }
    pub fn properties(&self) -> Properties<'_> {
        Properties { raw: &self.raw }
    }
    pub fn clear(&mut self) {
        self.raw.clear();
    }
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
}

impl fmt::Debug for PropertiesBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.properties().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `raw` behind its property length, as a packet carries it.
    fn framed(raw: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        write_remaining_length(&mut b, raw.len()).unwrap();
        b.extend_from_slice(raw);
        b
    }
    fn read(b: &[u8], scope: PropertyScope) -> Result<Properties<'_>, Error> {
        let mut r = Reader::new(b, scope.packet());
        let p = Properties::read(&mut r, scope)?;
        r.finish()?;
        Ok(p)
    }
    /// Read `raw` as a list in `scope`: what goes wrong.
    fn check(raw: &[u8], scope: PropertyScope) -> Result<(), Error> {
        read(&framed(raw), scope).map(|p| assert_eq!(p.as_bytes(), raw))
    }
    const PUBLISH: PropertyScope = PropertyScope::Packet(PacketType::Publish);
    const CONNACK: PropertyScope = PropertyScope::Packet(PacketType::ConnAck);

    #[test]
    fn table() {
        assert_eq!(PropertyId::ALL.len(), 27);
        for &id in PropertyId::ALL {
            assert_eq!(PropertyId::from_u8(id as u8), Some(id));
            assert!(id.allowed() != 0, "{id:?} allowed somewhere");
        }
        assert_eq!(PropertyId::from_u8(0x04), None);
        assert_eq!(PropertyId::TopicAlias.name(), "Topic Alias");
        assert!(PropertyId::WillDelayInterval.is_allowed(PropertyScope::Will));
        assert!(
            !PropertyId::WillDelayInterval.is_allowed(PropertyScope::Packet(PacketType::Connect))
        );
        assert!(!PropertyId::ReasonString.is_allowed(PUBLISH));
    }

    /// Every property through the builder, back through the reader, in one CONNACK/PUBLISH/will-sized list.
    #[test]
    fn every_property_round_trips() {
        let all = [
            Property::PayloadFormatIndicator(true),
            Property::MessageExpiryInterval(60),
            Property::ContentType("text/plain"),
            Property::ResponseTopic("r/t"),
            Property::CorrelationData(&[0, 1, 2]),
            Property::SubscriptionIdentifier(268_435_455),
            Property::SessionExpiryInterval(u32::MAX),
            Property::AssignedClientIdentifier("auto-1"),
            Property::ServerKeepAlive(30),
            Property::AuthenticationMethod("SCRAM-SHA-1"),
            Property::AuthenticationData(b"\x00data"),
            Property::RequestProblemInformation(false),
            Property::WillDelayInterval(5),
            Property::RequestResponseInformation(true),
            Property::ResponseInformation("resp/"),
            Property::ServerReference("other:1883"),
            Property::ReasonString("why"),
            Property::ReceiveMaximum(20),
            Property::TopicAliasMaximum(10),
            Property::TopicAlias(3),
            Property::MaximumQoS(QoS::AtLeastOnce),
            Property::RetainAvailable(false),
            Property::UserProperty("unit", "°C"),
            Property::MaximumPacketSize(256),
            Property::WildcardSubscriptionAvailable(true),
            Property::SubscriptionIdentifierAvailable(false),
            Property::SharedSubscriptionAvailable(true),
        ];
        assert_eq!(all.len(), PropertyId::ALL.len());
        for (p, id) in all.iter().zip(PropertyId::ALL) {
            assert_eq!(p.id(), *id);
            let mut b = PropertiesBuf::new();
            b.push(*p).unwrap();
            assert_eq!(b.properties().as_bytes().len(), p.len());
            let scope = [PUBLISH, CONNACK, PropertyScope::Will]
                .into_iter()
                .chain(
                    [
                        PacketType::Connect,
                        PacketType::Subscribe,
                        PacketType::Auth,
                        PacketType::PubAck,
                    ]
                    .map(PropertyScope::Packet),
                )
                .find(|s| id.is_allowed(*s))
                .unwrap();
            let wire = framed(b.properties().as_bytes());
            let back = read(&wire, scope).unwrap();
            assert_eq!(back.iter().collect::<Vec<_>>(), [*p]);
            assert_eq!(back.get(*id), Some(*p));
        }
    }

    #[test]
    fn spec_bytes_and_accessors() {
        // Message Expiry Interval 60, Topic Alias 1, two User Properties, Subscription Identifier 200 (two
        // bytes: 0xC8 0x01), twice.
        let raw = [
            0x02, 0, 0, 0, 60, 0x23, 0, 1, 0x26, 0, 1, b'a', 0, 1, b'b', 0x26, 0, 1, b'a', 0, 0,
            0x0B, 0xC8, 0x01, 0x0B, 1,
        ];
        let wire = framed(&raw);
        let p = read(&wire, PUBLISH).unwrap();
        assert_eq!(p.message_expiry_interval(), Some(60));
        assert_eq!(p.topic_alias(), Some(1));
        assert_eq!(p.content_type(), None);
        assert_eq!(
            p.user_properties().collect::<Vec<_>>(),
            [("a", "b"), ("a", "")]
        );
        assert_eq!(p.subscription_identifiers().collect::<Vec<_>>(), [200, 1]);
        let mut b = PropertiesBuf::new();
        b.push(Property::MessageExpiryInterval(60))
            .unwrap()
            .push(Property::TopicAlias(1))
            .unwrap()
            .push(Property::UserProperty("a", "b"))
            .unwrap()
            .push(Property::UserProperty("a", ""))
            .unwrap()
            .push(Property::SubscriptionIdentifier(200))
            .unwrap()
            .push(Property::SubscriptionIdentifier(1))
            .unwrap();
        assert_eq!(b.properties(), p);
        assert_eq!(p.encoded_len(), 1 + raw.len());
        // In SUBSCRIBE the identifier may not repeat.
        assert_eq!(
            b.properties()
                .check(PropertyScope::Packet(PacketType::Subscribe)),
            Err(Error::PropertyNotAllowed {
                scope: PropertyScope::Packet(PacketType::Subscribe),
                property: PropertyId::MessageExpiryInterval
            })
        );
    }

    #[test]
    fn malformed() {
        let na = |id| Error::PropertyNotAllowed {
            scope: PUBLISH,
            property: id,
        };
        // Unknown identifier, and a multi-byte one (all defined identifiers are one byte).
        assert_eq!(
            check(&[0x04, 0], PUBLISH),
            Err(Error::UnknownProperty {
                scope: PUBLISH,
                id: 4
            })
        );
        assert_eq!(
            check(&[0x81, 0x01, 0], PUBLISH),
            Err(Error::UnknownProperty {
                scope: PUBLISH,
                id: 0x81
            })
        );
        // Not allowed here.
        assert_eq!(
            check(&[0x1F, 0, 0], PUBLISH),
            Err(na(PropertyId::ReasonString))
        );
        assert_eq!(
            check(
                &[0x18, 0, 0, 0, 1],
                PropertyScope::Packet(PacketType::Connect)
            ),
            Err(Error::PropertyNotAllowed {
                scope: PropertyScope::Packet(PacketType::Connect),
                property: PropertyId::WillDelayInterval
            })
        );
        // Duplicates where forbidden.
        assert_eq!(
            check(&[0x23, 0, 1, 0x23, 0, 2], PUBLISH),
            Err(Error::DuplicateProperty {
                scope: PUBLISH,
                property: PropertyId::TopicAlias
            })
        );
        assert_eq!(
            check(&[0x21, 0, 1, 0x21, 0, 1], CONNACK),
            Err(Error::DuplicateProperty {
                scope: CONNACK,
                property: PropertyId::ReceiveMaximum
            })
        );
        // Values out of range.
        let bad = |property, what| Error::InvalidPropertyValue { property, what };
        assert_eq!(
            check(&[0x23, 0, 0], PUBLISH),
            Err(bad(PropertyId::TopicAlias, "must not be 0"))
        );
        assert_eq!(
            check(&[0x01, 2], PUBLISH),
            Err(bad(PropertyId::PayloadFormatIndicator, "must be 0 or 1"))
        );
        assert_eq!(
            check(&[0x24, 2], CONNACK),
            Err(bad(PropertyId::MaximumQoS, "must be 0 or 1"))
        );
        assert_eq!(
            check(&[0x27, 0, 0, 0, 0], CONNACK),
            Err(bad(PropertyId::MaximumPacketSize, "must not be 0"))
        );
        assert_eq!(
            check(&[0x0B, 0], PUBLISH),
            Err(bad(
                PropertyId::SubscriptionIdentifier,
                "must be 1 to 268435455"
            ))
        );
        assert_eq!(
            check(&[0x08, 0, 3, b'a', b'/', b'#'], PUBLISH),
            Err(bad(
                PropertyId::ResponseTopic,
                "must be a topic name: not empty, no wildcards"
            ))
        );
        // Variable byte integer not in its shortest form, or of five bytes.
        assert!(matches!(
            check(&[0x0B, 0x81, 0x00], PUBLISH),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            check(&[0x0B, 0xff, 0xff, 0xff, 0xff, 0x01], PUBLISH),
            Err(Error::Malformed { .. })
        ));
        // A value running past the list (wrong size for its type).
        assert!(matches!(
            check(&[0x02, 0, 0, 1], PUBLISH),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            check(&[0x03, 0, 5, b'a'], PUBLISH),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            check(&[0x26, 0, 1, b'a'], PUBLISH),
            Err(Error::Malformed { .. })
        ));
        // Strings: UTF-8 without U+0000.
        assert_eq!(
            check(&[0x03, 0, 1, 0], PUBLISH),
            Err(Error::NulInString {
                field: "Content Type"
            })
        );
        assert_eq!(
            check(&[0x26, 0, 1, b'k', 0, 1, 0xff], PUBLISH),
            Err(Error::InvalidUtf8 {
                field: "User Property"
            })
        );
        // A property length longer than the packet.
        let mut r = Reader::new(&[5, 0x23, 0, 1], PacketType::Publish);
        assert!(matches!(
            Properties::read(&mut r, PUBLISH),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn builder_checks_values() {
        let mut b = PropertiesBuf::new();
        assert_eq!(
            b.push(Property::ContentType("a\0")).err(),
            Some(Error::NulInString {
                field: "Content Type"
            })
        );
        let long = "x".repeat(65_536);
        assert!(matches!(
            b.push(Property::UserProperty("k", &long)).err(),
            Some(Error::StringTooLong { .. })
        ));
        assert!(matches!(
            b.push(Property::CorrelationData(long.as_bytes())).err(),
            Some(Error::StringTooLong { .. })
        ));
        assert!(b.push(Property::TopicAlias(0)).is_err());
        assert!(b.push(Property::ReceiveMaximum(0)).is_err());
        assert!(b
            .push(Property::SubscriptionIdentifier(MAX_SUBSCRIPTION_ID + 1))
            .is_err());
        assert!(b.push(Property::MaximumQoS(QoS::ExactlyOnce)).is_err());
        assert!(b.push(Property::ResponseTopic("")).is_err());
        assert!(b.is_empty(), "nothing appended on error");
        b.push(Property::TopicAlias(7)).unwrap();
        assert_eq!(b.properties().as_bytes(), [0x23, 0, 7]);
        b.clear();
        assert!(b.properties().is_empty());
        assert_eq!(Properties::EMPTY.encoded_len(), 1);
    }
}
