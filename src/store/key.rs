//! Stage keys, owned by the store (they are its content addresses): blake3 over a canonical,
//! versioned encoding of what determines a stage's result.
//!
//! # Encoding, version 1
//!
//! ```text
//! key      = blake3( "rkd-stage-key/1" 0x00 str(op name) u32(op version) record(params) )
//! str(s)   = u64(byte length of s) bytes(s, UTF-8)
//! u32, u64 = little-endian; i64 = two's complement little-endian
//! record   = u64(field count) { str(name) value }   -- fields sorted by name (byte order)
//! value    = 'i' i64                    integer
//!          | 'f' u64(f64 bits)          float; -0.0 is written as 0.0
//!          | 's' str                    string
//!          | 'b' u8 (0 or 1)            bool
//!          | 'l' u64(count) { value }   list, in order
//!          | 'r' record                 record
//!          | 'm' str(ctor) u32(version) record(params)   model or dataset spec
//!          | 'k' 32 bytes               an upstream stage: its key
//!          | 'p' 32 bytes               an input file or directory: its content fingerprint
//!                                       (a dataset's folder: over the files it reads)
//! ```
//!
//! Parameters are the checked arguments with defaults filled in, so writing a default explicitly
//! changes nothing. Names, comments, formatting and declaration order are not encoded, and a
//! path contributes only its content, so renaming, reformatting or moving data reruns nothing.
//! Upstream keys are encoded where the stage is referenced, so changing anything upstream changes
//! every descendant's key.

use crate::data::reads::Reads;
use crate::registry::OpSchema;
use crate::value::{Params, PathValue, Spec, StageId, Value};

/// Version tag of the encoding; bump it when the encoding changes.
pub const ENCODING: &str = "rkd-stage-key/1";

/// A stage key.
pub type Key = [u8; 32];

/// Supplies the hashes that stand for upstream stages and input paths.
pub trait Resolve {
    /// Why a path could not be fingerprinted.
    type Error;
    /// The key of an upstream stage.
    fn stage(&mut self, id: StageId) -> Result<Key, Self::Error>;
    /// The fingerprint of an input path; `reads` says what a dataset reads from it when it is a
    /// dataset's folder (its fingerprint covers those files only), `None` for any other path.
    fn path(&mut self, path: &PathValue, reads: Option<Reads>) -> Result<Key, Self::Error>;
}

/// Parameters that say where and how a stage runs, not what it computes: not part of its key.
pub const NOT_IN_KEY: &[&str] = &["resources", "retries", "checkpoint_every", "checkpoint_minutes"];

/// Parameters added after keys existed, with the value that computes what their absence did:
/// at that value they stay out of the key, so adding them changed no stored stage's key.
pub const IN_KEY_UNLESS: &[(&str, &str)] = &[("precision", "f32")];

/// Whether parameter `name` with `value` enters the key.
fn in_key(name: &str, value: &Value) -> bool {
    if NOT_IN_KEY.contains(&name) {
        return false;
    }
    !IN_KEY_UNLESS
        .iter()
        .any(|(n, neutral)| *n == name && matches!(value, Value::Str(s) if &**s == *neutral))
}

/// The key of a stage of `op` with `params` (all but [`NOT_IN_KEY`], and [`IN_KEY_UNLESS`] at their
/// neutral values).
pub fn stage_key<R: Resolve>(op: &OpSchema, params: &Params, resolve: &mut R) -> Result<Key, R::Error> {
    let mut h = blake3::Hasher::new();
    h.update(ENCODING.as_bytes());
    h.update(&[0]);
    str(&mut h, op.name);
    h.update(&op.version.to_le_bytes());
    let keyed = || params.iter().filter(|(k, v)| in_key(k, v));
    record(&mut h, keyed(), keyed().count(), resolve, None)?;
    Ok(*h.finalize().as_bytes())
}

fn str(h: &mut blake3::Hasher, s: &str) {
    h.update(&(s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

fn record<'a, R: Resolve>(
    h: &mut blake3::Hasher,
    fields: impl Iterator<Item = (&'a String, &'a Value)>,
    len: usize,
    resolve: &mut R,
    spec: Option<&Spec>,
) -> Result<(), R::Error> {
    h.update(&(len as u64).to_le_bytes());
    // BTreeMap iterates in byte order of the keys already.
    for (k, v) in fields {
        str(h, k);
        value(h, v, resolve, spec)?;
    }
    Ok(())
}

/// Encodes `v`; `spec` is the spec whose argument it is, if any.
fn value<R: Resolve>(h: &mut blake3::Hasher, v: &Value, resolve: &mut R, spec: Option<&Spec>) -> Result<(), R::Error> {
    match v {
        Value::Int(i) => {
            h.update(b"i");
            h.update(&i.to_le_bytes());
        }
        Value::Float(f) => {
            h.update(b"f");
            let f = if *f == 0.0 { 0.0 } else { *f };
            h.update(&f.to_bits().to_le_bytes());
        }
        Value::Str(s) => {
            h.update(b"s");
            str(h, s);
        }
        Value::Bool(b) => {
            h.update(b"b");
            h.update(&[*b as u8]);
        }
        Value::List(xs) => {
            h.update(b"l");
            h.update(&(xs.len() as u64).to_le_bytes());
            for x in xs.iter() {
                value(h, x, resolve, None)?;
            }
        }
        Value::Record(r) => {
            h.update(b"r");
            record(h, r.iter(), r.len(), resolve, None)?;
        }
        Value::Spec(s) => {
            h.update(b"m");
            str(h, s.ctor.name);
            h.update(&s.ctor.version.to_le_bytes());
            record(h, s.params.iter(), s.params.len(), resolve, Some(s))?;
        }
        Value::Stage(id) => {
            h.update(b"k");
            h.update(&resolve.stage(*id)?);
        }
        Value::Path(p) => {
            h.update(b"p");
            h.update(&resolve.path(p, spec.and_then(|s| Reads::of(s.ctor.name, &s.params)))?);
        }
        // Checked parameters never hold functions, modules or poison.
        Value::Fn(_) | Value::Builtin(_) | Value::Module(_) | Value::Poison => {
            unreachable!("unchecked value in stage parameters: {v:?}")
        }
    }
    Ok(())
}

/// A key as lowercase hex (an entry's directory name).
pub fn hex(key: &Key) -> String {
    blake3::Hash::from_bytes(*key).to_hex().to_string()
}

/// The key a hex string names (as [`hex`] writes it), if it is one.
pub fn parse(text: &str) -> Option<Key> {
    blake3::Hash::from_hex(text).ok().map(|h| *h.as_bytes())
}
