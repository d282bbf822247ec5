//! A small, validating reader for the Python pickles CIFAR-100 ships in.
//!
//! It runs the pickle virtual machine for the binary opcodes of protocols 2–5 (what
//! Python 2's `cPickle` and Python 3's `pickle` write for dicts, lists, strings, bytes,
//! ints and numpy arrays) and builds a [`Value`] tree. It never executes anything: a
//! `GLOBAL` + `REDUCE` pair becomes an [`Value::Object`] node that [`ndarray_u8`] knows
//! how to read when it is a numpy array.
//!
//! Every malformed input is an `Err` naming the byte offset: truncation, unknown opcodes,
//! stack underflow, bad memo references. Resources are bounded: lengths are checked
//! against the bytes left before anything is allocated, nesting is capped at
//! [`MAX_DEPTH`], and memo copies share their byte buffers.

use std::collections::HashMap;
use std::rc::Rc;

use anyhow::{bail, Result};

/// Deepest container nesting accepted (CIFAR needs 4).
pub const MAX_DEPTH: u32 = 64;

/// A decoded pickle value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A float.
    Float(f64),
    /// A text string (Python 3 `str`).
    Str(Rc<str>),
    /// A byte string (Python 3 `bytes`, Python 2 `str`, `bytearray`).
    Bytes(Rc<[u8]>),
    /// A reference to `module.name` (a class or function), never resolved.
    Global(Rc<str>, Rc<str>),
    /// A list.
    List(Container),
    /// A tuple.
    Tuple(Container),
    /// A dict, as alternating keys and values.
    Dict(Container),
    /// `callable(*args)` with an optional `__setstate__` argument: items are
    /// `[callable, args]` or `[callable, args, state]`.
    Object(Container),
}

/// The items of a list, tuple, dict or object, with the nesting depth below it.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    /// The items.
    pub items: Vec<Value>,
    depth: u32,
}

impl Container {
    fn new(items: Vec<Value>) -> Result<Self> {
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            bail!("values nested deeper than {MAX_DEPTH} levels");
        }
        Ok(Container { items, depth })
    }

    fn push(&mut self, v: Value) -> Result<()> {
        let depth = self.depth.max(1 + v.depth());
        if depth > MAX_DEPTH {
            bail!("values nested deeper than {MAX_DEPTH} levels");
        }
        self.depth = depth;
        self.items.push(v);
        Ok(())
    }
}

impl Value {
    fn depth(&self) -> u32 {
        match self {
            Value::List(c) | Value::Tuple(c) | Value::Dict(c) | Value::Object(c) => c.depth,
            _ => 0,
        }
    }

    /// Number of nodes, the cost of copying this value out of the memo.
    fn size(&self) -> usize {
        match self {
            Value::List(c) | Value::Tuple(c) | Value::Dict(c) | Value::Object(c) => {
                1 + c.items.iter().map(Value::size).sum::<usize>()
            }
            _ => 1,
        }
    }

    /// The bytes of a `str` or `bytes` value (Python 2 strings are bytes).
    pub fn as_text(&self) -> Option<&[u8]> {
        match self {
            Value::Str(s) => Some(s.as_bytes()),
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// A `str`/`bytes` value as a Rust string (bytes read as Latin-1, as Python 2
    /// strings are read by torchvision).
    pub fn to_string_lossless(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.to_string()),
            Value::Bytes(b) => Some(b.iter().map(|&c| c as char).collect()),
            _ => None,
        }
    }

    /// The value stored under the text key `key`, when `self` is a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let Value::Dict(c) = self else { return None };
        c.items
            .chunks_exact(2)
            .find(|kv| kv[0].as_text() == Some(key.as_bytes()))
            .map(|kv| &kv[1])
    }

    /// The items of a list or tuple.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::List(c) | Value::Tuple(c) => Some(&c.items),
            _ => None,
        }
    }
}

/// Byte cursor with offset-naming truncation errors.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let left = self.buf.len() - self.pos;
        if n > left {
            bail!(
                "truncated at byte {}: needs {n} more bytes, {left} left",
                self.pos
            );
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn len64(&mut self) -> Result<usize> {
        let n = self.u64()?;
        usize::try_from(n).or_else(|_| bail!("length {n} at byte {} too large", self.pos))
    }
    fn line(&mut self) -> Result<&'a [u8]> {
        let rest = &self.buf[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(n) => {
                self.pos += n + 1;
                Ok(&rest[..n])
            }
            None => bail!("truncated at byte {}: unterminated line", self.pos),
        }
    }
}

fn utf8(bytes: &[u8], at: usize) -> Result<Rc<str>> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(Rc::from(s)),
        Err(_) => bail!("invalid UTF-8 string ending at byte {at}"),
    }
}

fn int_le(bytes: &[u8], at: usize) -> Result<i64> {
    if bytes.len() > 8 {
        bail!(
            "integer of {} bytes at byte {at} does not fit in 64 bits",
            bytes.len()
        );
    }
    if bytes.is_empty() {
        return Ok(0);
    }
    let mut b = [0u8; 8];
    b[..bytes.len()].copy_from_slice(bytes);
    if bytes[bytes.len() - 1] & 0x80 != 0 {
        for x in b.iter_mut().skip(bytes.len()) {
            *x = 0xff;
        }
    }
    Ok(i64::from_le_bytes(b))
}

/// Parses a whole pickle and returns the value it builds.
pub fn parse(buf: &[u8]) -> Result<Value> {
    let mut r = Reader { buf, pos: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: HashMap<u64, Value> = HashMap::new();
    // Memo copies are deep; bound their total size so that no input can blow up memory.
    let mut copy_budget: usize = 4 * buf.len() + 1_000_000;

    macro_rules! pop {
        ($at:expr) => {
            match stack.pop() {
                Some(v) => v,
                None => bail!("stack underflow at byte {}", $at),
            }
        };
    }
    macro_rules! pop_mark {
        ($at:expr) => {{
            let m = match marks.pop() {
                Some(m) if m <= stack.len() => m,
                _ => bail!("missing MARK for opcode at byte {}", $at),
            };
            stack.split_off(m)
        }};
    }

    loop {
        let at = r.pos;
        let op = match r.u8() {
            Ok(op) => op,
            Err(_) => bail!("truncated at byte {at}: no STOP opcode"),
        };
        match op {
            0x80 => {
                let proto = r.u8()?;
                if proto > 5 {
                    bail!("unsupported pickle protocol {proto} at byte {at}");
                }
            }
            0x95 => {
                r.u64()?; // FRAME: length hint only
            }
            b'.' => {
                let v = pop!(at);
                return Ok(v);
            }
            b'(' => marks.push(stack.len()),
            b'0' => {
                pop!(at);
            }
            b'1' => {
                let _ = pop_mark!(at);
            }
            b'2' => {
                let v = stack.last().cloned();
                match v {
                    Some(v) => {
                        copy_budget = copy_budget
                            .checked_sub(v.size())
                            .ok_or_else(|| anyhow::anyhow!("too many copies (DUP) at byte {at}"))?;
                        stack.push(v)
                    }
                    None => bail!("stack underflow at byte {at}"),
                }
            }
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'J' => {
                let v = r.u32()? as i32;
                stack.push(Value::Int(v as i64));
            }
            b'K' => {
                let v = r.u8()?;
                stack.push(Value::Int(v as i64));
            }
            b'M' => {
                let v = r.u16()?;
                stack.push(Value::Int(v as i64));
            }
            0x8a => {
                let n = r.u8()? as usize;
                let v = int_le(r.take(n)?, at)?;
                stack.push(Value::Int(v));
            }
            0x8b => {
                let n = r.u32()? as usize;
                let v = int_le(r.take(n)?, at)?;
                stack.push(Value::Int(v));
            }
            b'G' => {
                let v = f64::from_be_bytes(r.take(8)?.try_into().unwrap());
                stack.push(Value::Float(v));
            }
            b'X' => {
                let n = r.u32()? as usize;
                let s = utf8(r.take(n)?, r.pos)?;
                stack.push(Value::Str(s));
            }
            0x8c => {
                let n = r.u8()? as usize;
                let s = utf8(r.take(n)?, r.pos)?;
                stack.push(Value::Str(s));
            }
            0x8d => {
                let n = r.len64()?;
                let s = utf8(r.take(n)?, r.pos)?;
                stack.push(Value::Str(s));
            }
            b'T' => {
                let n = r.u32()? as i32;
                if n < 0 {
                    bail!("negative BINSTRING length at byte {at}");
                }
                stack.push(Value::Bytes(Rc::from(r.take(n as usize)?)));
            }
            b'U' | b'C' => {
                let n = r.u8()? as usize;
                stack.push(Value::Bytes(Rc::from(r.take(n)?)));
            }
            b'B' => {
                let n = r.u32()? as usize;
                stack.push(Value::Bytes(Rc::from(r.take(n)?)));
            }
            0x8e | 0x96 => {
                let n = r.len64()?;
                stack.push(Value::Bytes(Rc::from(r.take(n)?)));
            }
            0x98 => {} // READONLY_BUFFER: no-op for in-band buffers
            b'}' => stack.push(Value::Dict(Container::new(Vec::new())?)),
            b']' => stack.push(Value::List(Container::new(Vec::new())?)),
            b')' => stack.push(Value::Tuple(Container::new(Vec::new())?)),
            b'l' => {
                let items = pop_mark!(at);
                stack.push(Value::List(Container::new(items)?));
            }
            b't' => {
                let items = pop_mark!(at);
                stack.push(Value::Tuple(Container::new(items)?));
            }
            b'd' => {
                let items = pop_mark!(at);
                if items.len() % 2 != 0 {
                    bail!("DICT with an odd number of items at byte {at}");
                }
                stack.push(Value::Dict(Container::new(items)?));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    bail!("stack underflow at byte {at}");
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(Container::new(items)?));
            }
            b'a' => {
                let v = pop!(at);
                match stack.last_mut() {
                    Some(Value::List(c)) => c.push(v)?,
                    _ => bail!("APPEND to a non-list at byte {at}"),
                }
            }
            b'e' => {
                let items = pop_mark!(at);
                match stack.last_mut() {
                    Some(Value::List(c)) => {
                        for v in items {
                            c.push(v)?;
                        }
                    }
                    _ => bail!("APPENDS to a non-list at byte {at}"),
                }
            }
            b's' => {
                let v = pop!(at);
                let k = pop!(at);
                match stack.last_mut() {
                    Some(Value::Dict(c)) => {
                        c.push(k)?;
                        c.push(v)?;
                    }
                    _ => bail!("SETITEM on a non-dict at byte {at}"),
                }
            }
            b'u' => {
                let items = pop_mark!(at);
                if items.len() % 2 != 0 {
                    bail!("SETITEMS with an odd number of items at byte {at}");
                }
                match stack.last_mut() {
                    Some(Value::Dict(c)) => {
                        for v in items {
                            c.push(v)?;
                        }
                    }
                    _ => bail!("SETITEMS on a non-dict at byte {at}"),
                }
            }
            b'c' => {
                let module = utf8(r.line()?, r.pos)?;
                let name = utf8(r.line()?, r.pos)?;
                stack.push(Value::Global(module, name));
            }
            0x93 => {
                let name = pop!(at);
                let module = pop!(at);
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(m, n)),
                    _ => bail!("STACK_GLOBAL needs two strings at byte {at}"),
                }
            }
            b'R' | 0x81 => {
                let args = pop!(at);
                let callable = pop!(at);
                stack.push(Value::Object(Container::new(vec![callable, args])?));
            }
            b'b' => {
                let state = pop!(at);
                match stack.last_mut() {
                    Some(Value::Object(c)) if c.items.len() == 2 => c.push(state)?,
                    _ => bail!("BUILD on a value that is not a fresh object at byte {at}"),
                }
            }
            0x94 | b'q' | b'r' | b'p' => {
                let key = match op {
                    0x94 => memo.len() as u64,
                    b'q' => r.u8()? as u64,
                    b'r' => r.u32()? as u64,
                    _ => {
                        let line = r.line()?;
                        match std::str::from_utf8(line).ok().and_then(|s| s.parse().ok()) {
                            Some(k) => k,
                            None => bail!("bad PUT index at byte {at}"),
                        }
                    }
                };
                let v = match stack.last() {
                    Some(v) => v.clone(),
                    None => bail!("memo store from an empty stack at byte {at}"),
                };
                copy_budget = copy_budget
                    .checked_sub(v.size())
                    .ok_or_else(|| anyhow::anyhow!("too many memo copies at byte {at}"))?;
                memo.insert(key, v);
            }
            b'h' | b'j' | b'g' => {
                let key = match op {
                    b'h' => r.u8()? as u64,
                    b'j' => r.u32()? as u64,
                    _ => {
                        let line = r.line()?;
                        match std::str::from_utf8(line).ok().and_then(|s| s.parse().ok()) {
                            Some(k) => k,
                            None => bail!("bad GET index at byte {at}"),
                        }
                    }
                };
                let v = match memo.get(&key) {
                    Some(v) => v.clone(),
                    None => bail!("memo entry {key} not defined (byte {at})"),
                };
                copy_budget = copy_budget
                    .checked_sub(v.size())
                    .ok_or_else(|| anyhow::anyhow!("too many memo copies at byte {at}"))?;
                stack.push(v);
            }
            _ => bail!("unsupported pickle opcode 0x{op:02x} at byte {at}"),
        }
    }
}

/// A numpy `uint8` array read out of a pickled `ndarray`: its shape and its bytes.
#[derive(Debug, Clone)]
pub struct U8Array {
    /// Dimensions, C order.
    pub shape: Vec<usize>,
    /// `product(shape)` bytes.
    pub data: Rc<[u8]>,
}

fn is_global(v: &Value, module_suffix: &str, name: &str) -> bool {
    matches!(v, Value::Global(m, n) if m.ends_with(module_suffix) && &**n == name)
}

fn dtype_is_u8(dtype: &Value) -> Result<()> {
    let Value::Object(c) = dtype else {
        bail!("array dtype is not a numpy dtype")
    };
    if !is_global(&c.items[0], "numpy", "dtype") {
        bail!("array dtype is not a numpy dtype");
    }
    let name = c.items[1]
        .as_seq()
        .and_then(|a| a.first())
        .and_then(Value::to_string_lossless);
    match name.as_deref() {
        Some("u1") | Some("uint8") | Some("|u1") => Ok(()),
        Some(other) => bail!("array dtype is {other}, expected uint8"),
        None => bail!("array dtype is unreadable"),
    }
}

fn shape_of(v: &Value) -> Result<Vec<usize>> {
    let dims = v
        .as_seq()
        .ok_or_else(|| anyhow::anyhow!("array shape is not a tuple"))?;
    dims.iter()
        .map(|d| match d {
            Value::Int(n) if *n >= 0 => Ok(*n as usize),
            _ => bail!("array shape has a non-integer dimension"),
        })
        .collect()
}

/// The bytes of an array's raw data: `bytes` (Python 3, or a Python 2 `str`), a `str` of
/// Latin-1 code points, or `_codecs.encode(str, "latin1")` (how Python 3 writes bytes at
/// protocol 2).
fn latin1_bytes(v: &Value) -> Result<Rc<[u8]>> {
    let from_str = |s: &str| -> Result<Rc<[u8]>> {
        let mut out = Vec::with_capacity(s.len());
        for ch in s.chars() {
            let c = ch as u32;
            if c > 255 {
                bail!("numpy array data string is not Latin-1");
            }
            out.push(c as u8);
        }
        Ok(Rc::from(out))
    };
    match v {
        Value::Bytes(b) => Ok(b.clone()),
        Value::Str(s) => from_str(s),
        Value::Object(c) if is_global(&c.items[0], "_codecs", "encode") => match c.items[1].as_seq() {
            Some([Value::Str(s), enc]) if enc.as_text() == Some(b"latin1") => from_str(s),
            _ => bail!("numpy array data: unsupported _codecs.encode arguments"),
        },
        _ => bail!("numpy array data is not a byte string"),
    }
}

/// Reads a pickled numpy `uint8` array (`numpy.core.multiarray._reconstruct` with a
/// `__setstate__` tuple, as protocols 2–4 write it, or `numpy.core.numeric._frombuffer`
/// with in-band data, as protocol 5 writes it) and checks its byte count against its shape.
pub fn ndarray_u8(v: &Value) -> Result<U8Array> {
    let Value::Object(c) = v else {
        bail!("expected a numpy array, found {}", kind(v))
    };
    let (shape, data) = if is_global(&c.items[0], "multiarray", "_reconstruct") {
        let state = c
            .items
            .get(2)
            .and_then(Value::as_seq)
            .ok_or_else(|| anyhow::anyhow!("numpy array without state"))?;
        if state.len() != 5 {
            bail!("numpy array state has {} fields, expected 5", state.len());
        }
        dtype_is_u8(&state[2])?;
        if state[3] == Value::Bool(true) {
            bail!("Fortran-ordered arrays are not supported");
        }
        let data = latin1_bytes(&state[4])?;
        (shape_of(&state[1])?, data)
    } else if is_global(&c.items[0], "numeric", "_frombuffer") {
        let args = c.items[1]
            .as_seq()
            .ok_or_else(|| anyhow::anyhow!("_frombuffer without arguments"))?;
        if args.len() != 4 {
            bail!("_frombuffer has {} arguments, expected 4", args.len());
        }
        dtype_is_u8(&args[1])?;
        if args[3].as_text() == Some(b"F") {
            bail!("Fortran-ordered arrays are not supported");
        }
        let Value::Bytes(b) = &args[0] else {
            bail!("numpy array data is not in-band bytes");
        };
        (shape_of(&args[2])?, b.clone())
    } else {
        bail!("expected a numpy array, found another object");
    };
    let expect = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| anyhow::anyhow!("array shape {shape:?} overflows"))?;
    if expect != data.len() {
        bail!(
            "array of shape {shape:?} needs {expect} bytes, the pickle holds {}",
            data.len()
        );
    }
    Ok(U8Array { shape, data })
}

/// A short description of a value's kind, for error messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::Int(_) => "an int",
        Value::Float(_) => "a float",
        Value::Str(_) => "a str",
        Value::Bytes(_) => "bytes",
        Value::Global(..) => "a class reference",
        Value::List(_) => "a list",
        Value::Tuple(_) => "a tuple",
        Value::Dict(_) => "a dict",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
pub(crate) mod writer {
    //! A minimal pickle writer for tests: emits the opcodes Python 2's cPickle (protocol 2)
    //! and Python 3's pickle (protocol 4) use for the CIFAR files.

    /// Protocol 2 / 4 flavours of string and bytes opcodes.
    #[derive(Clone, Copy, PartialEq)]
    pub enum Flavour {
        /// Python 2 cPickle: strings are `SHORT_BINSTRING`/`BINSTRING`.
        Py2,
        /// Python 3 protocol 4: `SHORT_BINUNICODE`, `BINBYTES`, `MEMOIZE`, `FRAME`.
        Py3,
    }

    /// Writes one dict value.
    pub type Entry<'a> = (&'a str, Box<dyn Fn(&mut W) + 'a>);

    /// Builds pickle bytes.
    pub struct W {
        pub out: Vec<u8>,
        pub flavour: Flavour,
        memo: u32,
    }

    impl W {
        pub fn new(flavour: Flavour) -> Self {
            let mut out = vec![0x80, if flavour == Flavour::Py2 { 2 } else { 4 }];
            if flavour == Flavour::Py3 {
                out.push(0x95);
                out.extend_from_slice(&0u64.to_le_bytes());
            }
            W {
                out,
                flavour,
                memo: 0,
            }
        }
        pub fn memo(&mut self) {
            match self.flavour {
                Flavour::Py2 => {
                    self.memo += 1;
                    self.out.push(b'q');
                    self.out.push(self.memo as u8);
                }
                Flavour::Py3 => self.out.push(0x94),
            }
        }
        pub fn text(&mut self, s: &str) {
            match self.flavour {
                Flavour::Py2 => self.bytes(s.as_bytes()),
                Flavour::Py3 => {
                    self.out.push(0x8c);
                    self.out.push(s.len() as u8);
                    self.out.extend_from_slice(s.as_bytes());
                }
            }
            self.memo();
        }
        pub fn bytes(&mut self, b: &[u8]) {
            let (short, long) = match self.flavour {
                Flavour::Py2 => (b'U', b'T'),
                Flavour::Py3 => (b'C', b'B'),
            };
            if b.len() < 256 {
                self.out.push(short);
                self.out.push(b.len() as u8);
            } else {
                self.out.push(long);
                self.out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            }
            self.out.extend_from_slice(b);
        }
        pub fn int(&mut self, v: i64) {
            if (0..256).contains(&v) {
                self.out.push(b'K');
                self.out.push(v as u8);
            } else if (0..65536).contains(&v) {
                self.out.push(b'M');
                self.out.extend_from_slice(&(v as u16).to_le_bytes());
            } else {
                self.out.push(b'J');
                self.out.extend_from_slice(&(v as i32).to_le_bytes());
            }
        }
        pub fn global(&mut self, module: &str, name: &str) {
            self.out.push(b'c');
            self.out
                .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
            self.memo();
        }
        pub fn list_of<T>(&mut self, items: &[T], mut each: impl FnMut(&mut Self, &T)) {
            self.out.push(b']');
            self.memo();
            for chunk in items.chunks(1000) {
                self.out.push(b'(');
                for it in chunk {
                    each(self, it);
                }
                self.out.push(b'e');
            }
        }
        /// A numpy uint8 array as `ndarray.__reduce__` pickles it (protocols 2–4).
        pub fn ndarray_u8(&mut self, shape: &[usize], data: &[u8]) {
            self.global("numpy.core.multiarray", "_reconstruct");
            self.global("numpy", "ndarray");
            self.int(0);
            self.out.push(0x85);
            self.bytes(b"b");
            self.out.push(0x87);
            self.out.push(b'R');
            self.memo();
            self.out.push(b'(');
            self.int(1);
            self.out.push(b'(');
            for &d in shape {
                self.int(d as i64);
            }
            self.out.push(b't');
            self.global("numpy", "dtype");
            self.text("u1");
            self.out.push(0x89);
            self.out.push(0x88);
            self.out.push(0x87);
            self.out.push(b'R');
            self.memo();
            self.out.push(b'(');
            self.int(3);
            self.text("|");
            self.out.extend_from_slice(b"NNN");
            self.out.push(b'J');
            self.out.extend_from_slice(&(-1i32).to_le_bytes());
            self.out.push(b'J');
            self.out.extend_from_slice(&(-1i32).to_le_bytes());
            self.int(0);
            self.out.push(b't');
            self.out.push(b'b');
            self.out.push(0x89);
            self.bytes(data);
            self.out.push(b't');
            self.out.push(b'b');
        }
        /// A dict of `(key, writer)` entries, then STOP.
        pub fn dict(&mut self, entries: Vec<Entry<'_>>) {
            self.out.push(b'}');
            self.memo();
            self.out.push(b'(');
            for (k, f) in entries {
                self.text(k);
                f(self);
            }
            self.out.push(b'u');
        }
        pub fn finish(mut self) -> Vec<u8> {
            self.out.push(b'.');
            self.out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::writer::{Flavour, W};
    use super::*;

    fn sample(flavour: Flavour) -> Vec<u8> {
        let mut w = W::new(flavour);
        let data: Vec<u8> = (0..12).collect();
        w.dict(vec![
            (
                "labels",
                Box::new(|w: &mut W| w.list_of(&[3i64, 300, 70000], |w, &v| w.int(v))),
            ),
            ("data", Box::new(move |w: &mut W| w.ndarray_u8(&[2, 6], &data))),
            (
                "names",
                Box::new(|w: &mut W| w.list_of(&["a_b", "c"], |w, s| w.text(s))),
            ),
        ]);
        w.finish()
    }

    #[test]
    fn reads_both_flavours() {
        for flavour in [Flavour::Py2, Flavour::Py3] {
            let v = parse(&sample(flavour)).unwrap();
            let labels: Vec<i64> = v
                .get("labels")
                .unwrap()
                .as_seq()
                .unwrap()
                .iter()
                .map(|x| match x {
                    Value::Int(i) => *i,
                    _ => panic!(),
                })
                .collect();
            assert_eq!(labels, vec![3, 300, 70000]);
            let arr = ndarray_u8(v.get("data").unwrap()).unwrap();
            assert_eq!(arr.shape, vec![2, 6]);
            assert_eq!(&arr.data[..], &(0..12).collect::<Vec<u8>>()[..]);
            let names: Vec<String> = v
                .get("names")
                .unwrap()
                .as_seq()
                .unwrap()
                .iter()
                .map(|s| s.to_string_lossless().unwrap())
                .collect();
            assert_eq!(names, vec!["a_b", "c"]);
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn reads_pickles_written_by_python_and_numpy() {
        // pickle.dumps({'data': np.arange(6, dtype=np.uint8).reshape(2, 3) * 40,
        //   'fine_labels': [1, 99], 'names': ['apple', 'aquarium_fish']}, protocol=p)
        // with Python 3 and numpy 2.4, for p = 2, 4, 5.
        let cases = [
            "80027d7100285804000000646174617101636e756d70792e5f636f72652e6d756c746961727261790a5f7265636f6e7374727563740a7102636e756d70790a6e6461727261790a71034b00857104635f636f646563730a656e636f64650a7105580100000062710658060000006c6174696e31710786710852710987710a52710b284b014b024b0386710c636e756d70790a64747970650a710d58020000007531710e898887710f527110284b0358010000007c71114e4e4e4affffffff4affffffff4b0074711262896805580800000000285078c2a0c3887113680786711452711574711662580b00000066696e655f6c6162656c7371175d7118284b014b636558050000006e616d657371195d711a2858050000006170706c65711b580d000000617175617269756d5f66697368711c65752e",
            "800495d6000000000000007d94288c0464617461948c166e756d70792e5f636f72652e6d756c74696172726179948c0c5f7265636f6e7374727563749493948c056e756d7079948c076e6461727261799493944b0085944301629487945294284b014b024b03869468058c0564747970659493948c02753194898887945294284b038c017c944e4e4e4affffffff4affffffff4b0074946289430600285078a0c8947494628c0b66696e655f6c6162656c73945d94284b014b63658c056e616d6573945d94288c056170706c65948c0d617175617269756d5f666973689465752e",
            "800595c1000000000000007d94288c0464617461948c136e756d70792e5f636f72652e6e756d65726963948c0b5f66726f6d6275666665729493942896060000000000000000285078a0c8948c056e756d7079948c0564747970659493948c02753194898887945294284b038c017c944e4e4e4affffffff4affffffff4b007494624b024b0386948c014394749452948c0b66696e655f6c6162656c73945d94284b014b63658c056e616d6573945d94288c056170706c65948c0d617175617269756d5f666973689465752e",
        ];
        for (p, h) in cases.iter().enumerate() {
            let v = parse(&hex(h)).unwrap_or_else(|e| panic!("case {p}: {e:#}"));
            let arr = ndarray_u8(v.get("data").unwrap()).unwrap_or_else(|e| panic!("case {p}: {e:#}"));
            assert_eq!(arr.shape, vec![2, 3], "case {p}");
            assert_eq!(&arr.data[..], &[0, 40, 80, 120, 160, 200], "case {p}");
            assert_eq!(v.get("fine_labels").unwrap().as_seq().unwrap()[1], Value::Int(99));
            assert_eq!(
                v.get("names").unwrap().as_seq().unwrap()[1]
                    .to_string_lossless()
                    .unwrap(),
                "aquarium_fish"
            );
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let full = sample(Flavour::Py3);
        for n in 0..full.len() {
            assert!(parse(&full[..n]).is_err(), "prefix of {n} bytes parsed");
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut b = vec![0x80, 2];
        b.extend(std::iter::repeat_n(b']', 10_000));
        b.extend(std::iter::repeat_n(b'a', 9_999));
        b.push(b'.');
        let err = parse(&b).unwrap_err().to_string();
        assert!(err.contains("nested"), "{err}");
    }

    #[test]
    fn memo_bombs_are_bounded() {
        // A list memoized and fetched over and over doubles in size each time.
        let mut b = vec![0x80, 2, b']', b'K', 1, b'a'];
        for _ in 0..64 {
            b.extend_from_slice(&[b'q', 0, b'h', 0, b'a']);
        }
        b.push(b'.');
        assert!(parse(&b).is_err());
    }
}
