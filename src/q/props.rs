//! MQTT 5 properties ⇄ q dictionaries: what `pubp` / `pubbatchp` send, what `msgrcvdp` receives, and the
//! reason `msgfail` reports.
//!
//! Keys (symbols, the same both ways): `messageExpiry` (seconds), `contentType` (string), `payloadFormat`
//! (0 bytes, 1 UTF-8), `responseTopic` (string), `correlationData` (string or bytes; received as bytes),
//! `userProperties` (a dictionary of symbol names to strings; names may repeat). Received messages may also
//! carry `subscriptionIds` (longs).
use std::cell::RefCell;
use std::fmt::Write;

use kdbplus::api::K;

use super::k::{self, KRef, Val, KS};
use super::opts::QErr;
use crate::codec::{Properties, PropertiesBuf, Property, ReasonCode};
use crate::error::DeliveryError;

thread_local! {
    /// The properties of the current publish call, reused (no allocation per message once grown).
    static BUF: RefCell<PropertiesBuf> = RefCell::new(PropertiesBuf::new());
}

fn text<'a>(v: Val<'a>, ty: QErr) -> Result<&'a str, QErr> {
    match v {
        Val::Sym(b) | Val::Chars(b) => std::str::from_utf8(b).map_err(|_| c"Invalid UTF8 string"),
        _ => Err(ty),
    }
}

fn push(buf: &mut PropertiesBuf, p: Property<'_>, bad: QErr) -> Result<(), QErr> {
    buf.push(p).map(|_| ()).map_err(|_| bad)
}

/// Parse a q properties dictionary (or `::` / an empty dictionary: none) into `buf`.
fn parse(x: KRef<'_>, buf: &mut PropertiesBuf) -> Result<(), QErr> {
    buf.clear();
    if x.t() == k::GENERIC_NULL {
        return Ok(());
    }
    let (keys, vals) = x.dict().ok_or(c"props type")?;
    let n = keys.len().ok_or(c"props type")?;
    if n == 0 {
        return Ok(());
    }
    if keys.t() != KS || vals.len() != Some(n) {
        return Err(c"props type");
    }
    for i in 0..n {
        let Some(Val::Sym(name)) = keys.item(i) else {
            return Err(c"props type");
        };
        let v = vals.item(i).ok_or(c"props type")?;
        match name {
            b"messageExpiry" => match v {
                Val::Int(s) if (0..=u32::MAX as i64).contains(&s) => push(
                    buf,
                    Property::MessageExpiryInterval(s as u32),
                    c"messageExpiry invalid",
                )?,
                Val::Int(_) | Val::IntNull => return Err(c"messageExpiry invalid"),
                _ => return Err(c"messageExpiry type incorrect"),
            },
            b"contentType" => push(
                buf,
                Property::ContentType(text(v, c"contentType type incorrect")?),
                c"contentType invalid",
            )?,
            b"payloadFormat" => match v {
                Val::Int(f @ (0 | 1)) => push(
                    buf,
                    Property::PayloadFormatIndicator(f == 1),
                    c"payloadFormat invalid",
                )?,
                Val::Int(_) | Val::IntNull => return Err(c"payloadFormat invalid"),
                _ => return Err(c"payloadFormat type incorrect"),
            },
            b"responseTopic" => {
                let t = text(v, c"responseTopic type incorrect")?;
                if crate::codec::validate_topic(t).is_err() {
                    return Err(c"responseTopic invalid");
                }
                push(buf, Property::ResponseTopic(t), c"responseTopic invalid")?
            }
            b"correlationData" => match v {
                Val::Chars(b) | Val::Bytes(b) | Val::Sym(b) => push(
                    buf,
                    Property::CorrelationData(b),
                    c"correlationData invalid",
                )?,
                _ => return Err(c"correlationData type incorrect"),
            },
            b"userProperties" => {
                const TY: QErr = c"userProperties type incorrect";
                let Val::Dict(d) = v else { return Err(TY) };
                let (names, values) = d.dict().ok_or(TY)?;
                let m = names.len().ok_or(TY)?;
                if values.len() != Some(m) {
                    return Err(TY);
                }
                for j in 0..m {
                    let name = text(names.item(j).ok_or(TY)?, TY)?;
                    let value = text(values.item(j).ok_or(TY)?, TY)?;
                    push(
                        buf,
                        Property::UserProperty(name, value),
                        c"userProperties invalid",
                    )?;
                }
            }
            _ => return Err(c"props: unsupported property name"),
        }
    }
    Ok(())
}

/// Run `f` with the properties the q dictionary `x` describes.
pub fn with_props<T>(x: K, f: impl FnOnce(Properties<'_>) -> Result<T, QErr>) -> Result<T, QErr> {
    // SAFETY: q hands us a valid K (or null from a broken caller) that lives for the call.
    let x = unsafe { KRef::new(x) }.ok_or(c"props type")?;
    BUF.with(|b| {
        // A callback publishing from inside a publish cannot happen (no q code runs in between); still,
        // never panic on a re-entrant borrow.
        let mut buf = b.try_borrow_mut().map_err(|_| c"props busy")?;
        parse(x, &mut buf)?;
        f(buf.properties())
    })
}

/// A received message's properties as a q dictionary (empty when there are none). Allocates nothing but
/// the q objects.
pub fn received(p: Properties<'_>) -> K {
    const N: usize = 7;
    let mut out: [(&[u8], K); N] = [(&[], std::ptr::null_mut()); N];
    let mut n = 0;
    let (mut users, mut subs) = (0, 0);
    for prop in p.iter() {
        let entry: (&[u8], K) = match prop {
            Property::MessageExpiryInterval(s) => (b"messageExpiry", k::kj(s as i64)),
            Property::ContentType(s) => (b"contentType", k::kvec(s.as_bytes(), false)),
            Property::PayloadFormatIndicator(f) => (b"payloadFormat", k::kj(f as i64)),
            Property::ResponseTopic(s) => (b"responseTopic", k::kvec(s.as_bytes(), false)),
            Property::CorrelationData(d) => (b"correlationData", k::kvec(d, true)),
            Property::UserProperty(..) => {
                users += 1;
                continue;
            }
            Property::SubscriptionIdentifier(_) => {
                subs += 1;
                continue;
            }
            // Topic Alias is resolved by the engine; nothing else may come in PUBLISH.
            _ => continue,
        };
        // Each of these appears at most once in a valid PUBLISH (the codec refuses duplicates).
        if n < N - 2 {
            out[n] = entry;
            n += 1;
        } else {
            k::release(entry.1);
        }
    }
    if users > 0 {
        let pairs = p
            .user_properties()
            .map(|(name, v)| (name.as_bytes(), k::kvec(v.as_bytes(), false)));
        out[n] = (b"userProperties", k::kdict_from(users, pairs));
        n += 1;
    }
    if subs > 0 {
        let ids = p.subscription_identifiers().map(i64::from);
        out[n] = (b"subscriptionIds", k::kjs_from(subs, ids));
        n += 1;
    }
    k::kdict_from(n, out.into_iter())
}

/// Why a message failed, for `msgfail`: the MQTT 5 reason code's name and value (the broker's, or the one
/// the broker would have used for a limit the client enforced), then the broker's Reason String or the
/// codec's words.
pub fn failure_reason(e: &DeliveryError) -> String {
    let mut s = String::new();
    let _ = match e {
        DeliveryError::Refused { code, reason } => match reason {
            Some(r) => write!(s, "{code}: {r}"),
            None => write!(s, "{code}"),
        },
        DeliveryError::TooLarge { size, max } => write!(
            s,
            "{}: {size} bytes, the broker's maximum is {max}",
            ReasonCode::PacketTooLarge
        ),
        DeliveryError::QoSNotSupported { qos, max } => write!(
            s,
            "{}: QoS {}, the broker's maximum is {}",
            ReasonCode::QoSNotSupported,
            *qos as u8,
            *max as u8
        ),
        DeliveryError::RetainNotSupported => write!(s, "{}", ReasonCode::RetainNotSupported),
        DeliveryError::Invalid(c) => write!(s, "{}: {c}", ReasonCode::ImplementationSpecificError),
    };
    s
}
