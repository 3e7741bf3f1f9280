//! The standard library: `.rkd` modules compiled into the binary.

/// Every stdlib module: (name after `std::`, source).
pub const MODULES: &[(&str, &str)] = &[
    ("bert", include_str!("../../stdlib/bert.rkd")),
    ("vit", include_str!("../../stdlib/vit.rkd")),
    ("strategies", include_str!("../../stdlib/strategies.rkd")),
];

/// The source of `std::<name>`.
pub fn source(name: &str) -> Option<&'static str> {
    MODULES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}
