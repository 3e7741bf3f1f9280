//! Stage keys. The store owns them ([`crate::store::key`]: the type, its hex form and the
//! encoding); this re-export keeps `plan::key` paths working.

pub use crate::store::key::*;
