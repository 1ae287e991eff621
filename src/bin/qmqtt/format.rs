//! `qmqtt sub -F FORMAT`: mosquitto_sub's output format, so that a script reading mosquitto_sub's output
//! reads ours. `%t` topic, `%p` payload, `%q` QoS, `%r` retain, `%l` payload length, `%x`/`%X` payload in
//! hex, and the MQTT 5 properties: `%E` message expiry, `%C` content type, `%D` correlation data, `%F`
//! payload format indicator, `%R` response topic, `%P` user properties (`name:value`, space-separated),
//! `%S` subscription identifiers, `%A` topic alias (never: the engine resolves aliases); `%%` a `%`.
//! Escapes `\n \t \r \0 \a \e \v \\`. A property that is absent prints nothing.
use std::io::{self, Write};

use qmqtt::codec::Properties;
use qmqtt::QoS;

/// One received message, as the format sees it.
pub struct Message<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: QoS,
    pub retain: bool,
    pub properties: Properties<'a>,
}

/// Check a format before any message arrives: unknown `%` codes and `\` escapes are usage errors.
pub fn check(fmt: &str) -> Result<(), String> {
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        match c {
            '%' => match it.next() {
                Some(
                    '%' | 't' | 'p' | 'q' | 'r' | 'l' | 'x' | 'X' | 'E' | 'C' | 'D' | 'F' | 'R'
                    | 'P' | 'S' | 'A',
                ) => {}
                Some(o) => return Err(format!("unknown format code %{o}")),
                None => return Err("a '%' at the end (use %% for a '%')".into()),
            },
            '\\' => match it.next() {
                Some('n' | 't' | 'r' | '0' | 'a' | 'e' | 'v' | '\\') => {}
                Some(o) => return Err(format!("unknown escape \\{o}")),
                None => return Err("a '\\' at the end (use \\\\ for a '\\')".into()),
            },
            _ => {}
        }
    }
    Ok(())
}

fn hex(out: &mut impl Write, b: &[u8], upper: bool) -> io::Result<()> {
    for x in b {
        if upper {
            write!(out, "{x:02X}")?;
        } else {
            write!(out, "{x:02x}")?;
        }
    }
    Ok(())
}

/// Write `m` as `fmt` says (a format [`check`] accepted; anything else is written as it is).
pub fn write(out: &mut impl Write, fmt: &[u8], m: &Message<'_>) -> io::Result<()> {
    let p = &m.properties;
    let mut i = 0;
    while i < fmt.len() {
        let (c, next) = (fmt[i], fmt.get(i + 1).copied());
        i += 1;
        match (c, next) {
            (b'%', Some(code)) => {
                i += 1;
                match code {
                    b'%' => out.write_all(b"%")?,
                    b't' => out.write_all(m.topic.as_bytes())?,
                    b'p' => out.write_all(m.payload)?,
                    b'q' => write!(out, "{}", m.qos as u8)?,
                    b'r' => write!(out, "{}", m.retain as u8)?,
                    b'l' => write!(out, "{}", m.payload.len())?,
                    b'x' => hex(out, m.payload, false)?,
                    b'X' => hex(out, m.payload, true)?,
                    b'E' => {
                        if let Some(s) = p.message_expiry_interval() {
                            write!(out, "{s}")?
                        }
                    }
                    b'C' => out.write_all(p.content_type().unwrap_or_default().as_bytes())?,
                    b'D' => out.write_all(p.correlation_data().unwrap_or_default())?,
                    b'F' => {
                        if let Some(f) = p.payload_format_indicator() {
                            write!(out, "{}", f as u8)?
                        }
                    }
                    b'R' => out.write_all(p.response_topic().unwrap_or_default().as_bytes())?,
                    b'P' => {
                        for (n, (k, v)) in p.user_properties().enumerate() {
                            if n > 0 {
                                out.write_all(b" ")?;
                            }
                            write!(out, "{k}:{v}")?;
                        }
                    }
                    b'S' => {
                        for (n, id) in p.subscription_identifiers().enumerate() {
                            if n > 0 {
                                out.write_all(b" ")?;
                            }
                            write!(out, "{id}")?;
                        }
                    }
                    b'A' => {}
                    o => out.write_all(&[b'%', o])?,
                }
            }
            (b'\\', Some(e)) => {
                i += 1;
                let b = match e {
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'r' => b'\r',
                    b'0' => 0,
                    b'a' => 7,
                    b'e' => 27,
                    b'v' => 11,
                    b'\\' => b'\\',
                    o => {
                        out.write_all(&[b'\\', o])?;
                        continue;
                    }
                };
                out.write_all(&[b])?
            }
            (c, _) => out.write_all(&[c])?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use qmqtt::codec::{PropertiesBuf, Property};

    #[test]
    fn codes_and_escapes() {
        let mut b = PropertiesBuf::new();
        b.push(Property::MessageExpiryInterval(60)).unwrap();
        b.push(Property::ContentType("text/plain")).unwrap();
        b.push(Property::UserProperty("unit", "C")).unwrap();
        b.push(Property::UserProperty("id", "t1")).unwrap();
        let m = Message {
            topic: "a/b",
            payload: b"hi",
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: b.properties(),
        };
        let mut out = Vec::new();
        write(&mut out, br"%t %p %q %r %l %x|%E|%C|%F|%R|%P|%%\t.", &m).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a/b hi 1 1 2 6869|60|text/plain|||unit:C id:t1|%\t."
        );
        assert!(check("%t %p %E\\n").is_ok());
        assert_eq!(check("%k").unwrap_err(), "unknown format code %k");
        assert!(check("x%").is_err() && check("\\q").is_err());
    }
}
