//! Checked access to q's K objects, and the few constructors the q layer needs.
//!
//! kdbplus supplies the `K` layout and the raw C natives; its "safe" helpers are not used (they dereference
//! nulls, assume UTF-8 and unwrap). Everything here checks the type byte, the length and null pointers before
//! reading, and never frees or keeps what q lends us: a [`KRef`] borrows an argument for the duration of one
//! call into the library.
use std::ffi::{c_char, CStr};
use std::marker::PhantomData;
use std::ptr::NonNull;

use kdbplus::api::{k0, native, K};

// q type bytes (k.h).
pub const KB: i8 = 1;
pub const KG: i8 = 4;
pub const KH: i8 = 5;
pub const KI: i8 = 6;
pub const KJ: i8 = 7;
pub const KC: i8 = 10;
pub const KS: i8 = 11;
pub const XD: i8 = 99;
/// `s#` dictionaries (step dictionaries) share the dictionary layout.
pub const XD_SORTED: i8 = 127;
pub const GENERIC_NULL: i8 = 101;
pub const ERROR: i8 = -128;

/// Integer nulls (`0Nh`, `0Ni`, `0Nj`).
const NH: i16 = i16::MIN;
const NI: i32 = i32::MIN;
const NJ: i64 = i64::MIN;

/// A K object borrowed from q for the length of one call. Never null.
#[derive(Clone, Copy)]
pub struct KRef<'a> {
    p: NonNull<k0>,
    _life: PhantomData<&'a k0>,
}

/// One element of a list as the option and batch parsers see it: atoms of a typed vector and the items of a
/// mixed list are presented alike.
#[derive(Clone, Copy)]
pub enum Val<'a> {
    /// boolean, byte, short, int or long (nulls excluded).
    Int(i64),
    /// `0Nh`, `0Ni`, `0Nj`.
    IntNull,
    /// Symbol atom (its bytes, without the NUL).
    Sym(&'a [u8]),
    /// Char vector (or a char atom, as one byte).
    Chars(&'a [u8]),
    /// Byte vector (or a byte atom).
    Bytes(&'a [u8]),
    /// A symbol vector.
    Syms(KRef<'a>),
    /// A dictionary.
    Dict(KRef<'a>),
    /// The generic null `(::)`.
    Nil,
    /// Anything else.
    Other,
}

impl<'a> KRef<'a> {
    /// # Safety
    /// `p` must be null or point at a valid K object that outlives `'a`.
    pub unsafe fn new(p: K) -> Option<KRef<'a>> {
        NonNull::new(p).map(|p| KRef {
            p,
            _life: PhantomData,
        })
    }

    fn raw(self) -> *mut k0 {
        self.p.as_ptr()
    }

    /// The type byte.
    pub fn t(self) -> i8 {
        // SAFETY: a KRef always points at a valid K header.
        unsafe { (*self.raw()).qtype }
    }

    /// The length of a vector (types 0..=19); `None` for atoms, dictionaries, tables, negative lengths.
    pub fn len(self) -> Option<usize> {
        let t = self.t();
        if !(0..=19).contains(&t) {
            return None;
        }
        // SAFETY: vectors carry their length in the list header.
        let n = unsafe { (*self.raw()).value.list.n };
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= isize::MAX as usize / 8)
    }

    fn data(self) -> *const u8 {
        // SAFETY: the address of the vector payload; only read after a type and length check.
        unsafe { std::ptr::addr_of!((*self.raw()).value.list.G0) as *const u8 }
    }

    /// The bytes of a char (10) or byte (4) vector, or of a char / byte atom.
    pub fn bytes(self) -> Option<&'a [u8]> {
        match self.t() {
            KC | KG => {
                let n = self.len()?;
                // SAFETY: a char/byte vector holds n bytes after its header.
                Some(unsafe { std::slice::from_raw_parts(self.data(), n) })
            }
            // SAFETY: a char / byte atom's value is its first union byte.
            -10 | -4 => Some(unsafe {
                std::slice::from_raw_parts(std::ptr::addr_of!((*self.raw()).value.byte), 1)
            }),
            _ => None,
        }
    }

    /// A symbol atom's text (without its NUL). `None` for other types or a null pointer.
    pub fn sym(self) -> Option<&'a [u8]> {
        if self.t() != -KS {
            return None;
        }
        // SAFETY: a symbol atom's value is a pointer to an interned NUL-terminated string.
        let s = unsafe { (*self.raw()).value.symbol };
        cstr_bytes(s)
    }

    /// An integral atom (boolean, byte, short, int, long) as i64; `Some(None)` for a null.
    pub fn int(self) -> Option<Option<i64>> {
        // SAFETY: each arm reads the union member that the type byte says is there.
        unsafe {
            let v = &(*self.raw()).value;
            match self.t() {
                -1 | -4 => Some(Some(v.byte as i64)),
                -5 => Some((v.short != NH).then_some(v.short as i64)),
                -6 => Some((v.int != NI).then_some(v.int as i64)),
                -7 => Some((v.long != NJ).then_some(v.long)),
                _ => None,
            }
        }
    }

    /// Keys and values of a dictionary.
    pub fn dict(self) -> Option<(KRef<'a>, KRef<'a>)> {
        if self.t() != XD && self.t() != XD_SORTED {
            return None;
        }
        // A dictionary is a two-item list: keys, values.
        // SAFETY: dictionaries hold exactly two K pointers in their payload.
        unsafe {
            let n = (*self.raw()).value.list.n;
            if n != 2 {
                return None;
            }
            let items = self.data() as *const K;
            Some((KRef::new(*items)?, KRef::new(*items.add(1))?))
        }
    }

    /// Item `i` of a vector or mixed list, presented as a [`Val`].
    pub fn item(self, i: usize) -> Option<Val<'a>> {
        let n = self.len()?;
        if i >= n {
            return None;
        }
        // SAFETY: i < n and each arm reads the element type the vector's type byte says it holds.
        unsafe {
            let d = self.data();
            Some(match self.t() {
                0 => {
                    let p = *(d as *const K).add(i);
                    KRef::new(p)?.val()
                }
                KB | KG => Val::Int(*d.add(i) as i64),
                KH => int_val(*(d as *const i16).add(i) as i64, NH as i64),
                KI => int_val(*(d as *const i32).add(i) as i64, NI as i64),
                KJ => int_val(*(d as *const i64).add(i), NJ),
                KS => match cstr_bytes(*(d as *const *mut c_char).add(i)) {
                    Some(s) => Val::Sym(s),
                    None => Val::Other,
                },
                KC => Val::Chars(std::slice::from_raw_parts(d.add(i), 1)),
                _ => Val::Other,
            })
        }
    }

    /// Item `i` of a mixed list (type 0) as a K object.
    pub fn child(self, i: usize) -> Option<KRef<'a>> {
        if self.t() != 0 || i >= self.len()? {
            return None;
        }
        // SAFETY: i < n and a mixed list holds n K pointers.
        unsafe { KRef::new(*(self.data() as *const K).add(i)) }
    }

    /// This object as a [`Val`].
    pub fn val(self) -> Val<'a> {
        if let Some(i) = self.int() {
            return match i {
                Some(v) => Val::Int(v),
                None => Val::IntNull,
            };
        }
        match self.t() {
            -11 => self.sym().map(Val::Sym).unwrap_or(Val::Other),
            KC | -10 => self.bytes().map(Val::Chars).unwrap_or(Val::Other),
            KG => self.bytes().map(Val::Bytes).unwrap_or(Val::Other),
            KS if self.len().is_some() => Val::Syms(self),
            XD | XD_SORTED => Val::Dict(self),
            GENERIC_NULL => Val::Nil,
            _ => Val::Other,
        }
    }
}

fn int_val(v: i64, null: i64) -> Val<'static> {
    if v == null {
        Val::IntNull
    } else {
        Val::Int(v)
    }
}

fn cstr_bytes<'a>(s: *const c_char) -> Option<&'a [u8]> {
    if s.is_null() {
        return None;
    }
    // SAFETY: q symbols are NUL-terminated interned strings that live as long as the process.
    Some(unsafe { CStr::from_ptr(s) }.to_bytes())
}

// ---- constructors (results handed to q; q owns them afterwards) ----

/// A long atom.
pub fn kj(v: i64) -> K {
    // SAFETY: plain constructor.
    unsafe { native::kj(v) }
}

/// A boolean atom.
pub fn kb(v: bool) -> K {
    // SAFETY: plain constructor.
    unsafe { native::kb(v as i32) }
}

/// A char (`byte == false`) or byte vector holding a copy of `data`.
pub fn kvec(data: &[u8], byte: bool) -> K {
    let Ok(n) = i64::try_from(data.len()) else {
        return std::ptr::null_mut();
    };
    // SAFETY: ktn allocates n bytes of payload; we fill exactly n.
    unsafe {
        let x = native::ktn(if byte { KG } else { KC } as i32, n);
        if x.is_null() {
            return x;
        }
        let d = std::ptr::addr_of_mut!((*x).value.list.G0) as *mut u8;
        std::ptr::copy_nonoverlapping(data.as_ptr(), d, data.len());
        x
    }
}

/// A long vector holding `v`.
pub fn kjs(v: &[u64]) -> K {
    let Ok(n) = i64::try_from(v.len()) else {
        return std::ptr::null_mut();
    };
    // SAFETY: ktn allocates n longs; we fill exactly n.
    unsafe {
        let x = native::ktn(KJ as i32, n);
        if x.is_null() {
            return x;
        }
        let d = std::ptr::addr_of_mut!((*x).value.list.G0) as *mut i64;
        for (i, t) in v.iter().enumerate() {
            *d.add(i) = *t as i64;
        }
        x
    }
}

/// An interned symbol atom.
pub fn ksym(s: &CStr) -> K {
    // SAFETY: ks copies / interns the NUL-terminated string.
    unsafe { native::ks(s.as_ptr() as *mut c_char) }
}

/// A dictionary from static symbol keys and owned values (ownership of each value passes to the dictionary).
pub fn kdict(keys: &[&CStr], vals: &[K]) -> K {
    debug_assert_eq!(keys.len(), vals.len());
    let n = keys.len().min(vals.len());
    // SAFETY: ktn allocates n slots of each list; each is filled exactly once; xD takes both lists.
    unsafe {
        let ks = native::ktn(KS as i32, n as i64);
        let vs = native::ktn(0, n as i64);
        if ks.is_null() || vs.is_null() {
            return std::ptr::null_mut();
        }
        let kd = std::ptr::addr_of_mut!((*ks).value.list.G0) as *mut *mut c_char;
        let vd = std::ptr::addr_of_mut!((*vs).value.list.G0) as *mut K;
        for i in 0..n {
            *kd.add(i) = native::ss(keys[i].as_ptr() as *mut c_char);
            *vd.add(i) = vals[i];
        }
        native::xD(ks, vs)
    }
}

/// Decrement the reference count of a K object q handed back to us (null-safe).
pub fn release(x: K) {
    if !x.is_null() {
        // SAFETY: x is a K we own a reference to.
        unsafe {
            native::r0(x);
        }
    }
}

/// If `x` is a q error object, its message.
pub fn error_text(x: K) -> Option<String> {
    // SAFETY: x is null or a valid K.
    let r = unsafe { KRef::new(x) }?;
    if r.t() != ERROR {
        return None;
    }
    // SAFETY: an error object's value is a pointer to its message.
    let s = unsafe { (*x).value.symbol };
    Some(
        cstr_bytes(s)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default(),
    )
}

/// A dictionary of the first `n` (symbol key as bytes, owned value) pairs of `items`: keys interned with `sn`
/// (MQTT strings hold no NUL), each value's ownership passes to the dictionary. No allocation besides q's.
pub fn kdict_from<'a>(n: usize, items: impl Iterator<Item = (&'a [u8], K)>) -> K {
    // SAFETY: ktn allocates n slots of each list; each is filled once (unused slots, should `items` run
    // short, become empty symbols and generic nulls); xD takes both lists.
    unsafe {
        let ks = native::ktn(KS as i32, n as i64);
        let vs = native::ktn(0, n as i64);
        if ks.is_null() || vs.is_null() {
            return std::ptr::null_mut();
        }
        let kd = std::ptr::addr_of_mut!((*ks).value.list.G0) as *mut *mut c_char;
        let vd = std::ptr::addr_of_mut!((*vs).value.list.G0) as *mut K;
        let mut items = items.take(n);
        for i in 0..n {
            let (key, v) = items
                .next()
                .unwrap_or((&b""[..], native::ka(GENERIC_NULL as i32)));
            let len = i32::try_from(key.len()).unwrap_or(0);
            *kd.add(i) = native::sn(key.as_ptr() as *mut c_char, len);
            *vd.add(i) = v;
        }
        native::xD(ks, vs)
    }
}

/// A long vector of the first `n` values of `v`.
pub fn kjs_from(n: usize, v: impl Iterator<Item = i64>) -> K {
    // SAFETY: ktn allocates n longs; each is written once (zeros should `v` run short).
    unsafe {
        let x = native::ktn(KJ as i32, n as i64);
        if x.is_null() {
            return x;
        }
        let d = std::ptr::addr_of_mut!((*x).value.list.G0) as *mut i64;
        let mut v = v.take(n);
        for i in 0..n {
            *d.add(i) = v.next().unwrap_or(0);
        }
        x
    }
}
