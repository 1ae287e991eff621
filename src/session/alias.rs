//! MQTT 5 topic aliases of one connection: [`OutAliases`], the least-recently-used set of aliases this
//! client gives the topics it publishes to, and [`InAliases`], the broker's aliases towards it.
//!
//! Both are cleared at every CONNACK (an alias never outlives its connection) and keep their allocations:
//! once every topic of a stream has had its alias, publishing or receiving through them allocates nothing.
//! Memory is bounded by the alias maxima times the longest topic seen.
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// End of the LRU list.
const NIL: u16 = u16::MAX;

/// Passes a `u64` key (already a hash) through.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = self.0.rotate_left(8) ^ x as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// FNV-1a of a topic.
fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in s.as_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// How to send a topic under an alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alias {
    /// The broker knows this alias for the topic: send the alias alone (empty topic).
    Known(u16),
    /// Newly (re)assigned: send the topic with the alias, which sets it.
    New(u16),
}

/// The aliases this client assigns, least recently used first out. Alias `i + 1` is slot `i`.
#[derive(Default)]
pub struct OutAliases {
    topics: Vec<String>,
    prev: Vec<u16>,
    next: Vec<u16>,
    /// Most and least recently used slots.
    head: u16,
    tail: u16,
    /// Topic hash → slot.
    index: HashMap<u64, u16, BuildHasherDefault<Identity>>,
    /// Aliases usable on this connection (0: none).
    max: u16,
    /// Slots assigned so far on this connection.
    used: u16,
}

impl OutAliases {
    /// A new connection with `max` aliases (the broker's Topic Alias Maximum, capped by ours).
    pub fn reset(&mut self, max: u16) {
        self.max = max.min(NIL - 1);
        self.used = 0;
        self.head = NIL;
        self.tail = NIL;
        self.index.clear();
        self.index.reserve(self.max as usize);
    }

    /// The alias for `topic`, assigning one (the least recently used, once all are taken) if it has none.
    /// `None`: aliases are off on this connection (or two topics share a hash: that one goes without).
    pub fn get(&mut self, topic: &str) -> Option<Alias> {
        if self.max == 0 {
            return None;
        }
        let h = fnv(topic);
        if let Some(&i) = self.index.get(&h) {
            if self.topics[i as usize] != topic {
                return None;
            }
            self.unlink(i);
            self.push_front(i);
            return Some(Alias::Known(i + 1));
        }
        let i = if self.used < self.max {
            let i = self.used;
            self.used += 1;
            if self.topics.len() <= i as usize {
                self.topics.push(String::new());
                self.prev.push(NIL);
                self.next.push(NIL);
            }
            i
        } else {
            let i = self.tail;
            let old = fnv(&self.topics[i as usize]);
            if self.index.get(&old) == Some(&i) {
                self.index.remove(&old);
            }
            self.unlink(i);
            i
        };
        let t = &mut self.topics[i as usize];
        t.clear();
        t.push_str(topic);
        self.index.insert(h, i);
        self.push_front(i);
        Some(Alias::New(i + 1))
    }

    fn unlink(&mut self, i: u16) {
        let (p, n) = (self.prev[i as usize], self.next[i as usize]);
        match p {
            NIL => self.head = n,
            p => self.next[p as usize] = n,
        }
        match n {
            NIL => self.tail = p,
            n => self.prev[n as usize] = p,
        }
    }

    fn push_front(&mut self, i: u16) {
        self.prev[i as usize] = NIL;
        self.next[i as usize] = self.head;
        match self.head {
            NIL => self.tail = i,
            h => self.prev[h as usize] = i,
        }
        self.head = i;
    }
}

/// The broker's aliases towards this client: alias `i + 1` is `topics[i]` when `set[i]`.
#[derive(Default)]
pub struct InAliases {
    topics: Vec<String>,
    set: Vec<bool>,
    /// The longest topic set on this connection (what a PUBLISH under an alias may cost beyond its bytes).
    pub longest: usize,
}

impl InAliases {
    /// A new connection on which the broker may use aliases 1..=`max`.
    pub fn reset(&mut self, max: u16) {
        self.topics.resize_with(max as usize, String::new);
        self.set.clear();
        self.set.resize(max as usize, false);
        self.longest = 0;
    }

    /// Aliases the broker may use.
    pub fn max(&self) -> u16 {
        self.set.len() as u16
    }

    /// The broker set `alias` (in `1..=max`) to `topic`.
    pub fn set(&mut self, alias: u16, topic: &str) {
        let i = alias as usize - 1;
        let t = &mut self.topics[i];
        t.clear();
        t.push_str(topic);
        self.set[i] = true;
        self.longest = self.longest.max(topic.len());
    }

    /// The topic of `alias` (in `1..=max`), if the broker set it.
    pub fn get(&self, alias: u16) -> Option<&str> {
        let i = alias as usize - 1;
        self.set[i].then(|| self.topics[i].as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_assigns_reuses_and_evicts_the_least_recent() {
        let mut a = OutAliases::default();
        a.reset(2);
        assert_eq!(a.get("a"), Some(Alias::New(1)));
        assert_eq!(a.get("b"), Some(Alias::New(2)));
        assert_eq!(a.get("a"), Some(Alias::Known(1)));
        // "b" is the least recently used: "c" takes its alias.
        assert_eq!(a.get("c"), Some(Alias::New(2)));
        assert_eq!(a.get("a"), Some(Alias::Known(1)));
        assert_eq!(a.get("c"), Some(Alias::Known(2)));
        assert_eq!(a.get("b"), Some(Alias::New(1)));
        // A new connection forgets them all.
        a.reset(1);
        assert_eq!(a.get("c"), Some(Alias::New(1)));
        assert_eq!(a.get("b"), Some(Alias::New(1)));
        assert_eq!(a.get("b"), Some(Alias::Known(1)));
        a.reset(0);
        assert_eq!(a.get("b"), None);
    }

    #[test]
    fn lru_matches_a_model() {
        // A plain list (front = most recent) against the table, over a cycling pattern of 7 topics in 4.
        let mut a = OutAliases::default();
        a.reset(4);
        let mut model: Vec<(String, u16)> = Vec::new();
        let mut x = 12345u64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let t = format!("t/{}", x % 7);
            let got = a.get(&t).unwrap();
            let want = match model.iter().position(|(m, _)| *m == t) {
                Some(p) => {
                    let e = model.remove(p);
                    let al = e.1;
                    model.insert(0, e);
                    Alias::Known(al)
                }
                None => {
                    let al = if model.len() < 4 {
                        model.len() as u16 + 1
                    } else {
                        model.pop().unwrap().1
                    };
                    model.insert(0, (t.clone(), al));
                    Alias::New(al)
                }
            };
            assert_eq!(got, want, "{t}");
        }
    }

    #[test]
    fn incoming() {
        let mut a = InAliases::default();
        a.reset(3);
        assert_eq!(a.max(), 3);
        assert_eq!(a.get(2), None);
        a.set(2, "x/y");
        assert_eq!(a.get(2), Some("x/y"));
        a.set(2, "z");
        assert_eq!((a.get(2), a.longest), (Some("z"), 3));
        a.reset(3);
        assert_eq!((a.get(2), a.longest), (None, 0));
    }
}
