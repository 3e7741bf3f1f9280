//! Enums whose values are written as words in `.rkd` files (`method: "l1_global"`), declared
//! once with [`keywords!`](crate::keywords): the words the checker accepts, `rkd ops` lists and
//! the op receives as a typed value all come from that one declaration.

/// An enum whose values are written as words.
pub trait Keyword: Sized + Copy + PartialEq + 'static {
    /// Every value with its word, in documentation order.
    const ALL: &'static [(&'static str, Self)];
    /// The words, in documentation order.
    const WORDS: &'static [&'static str];

    /// The word for this value.
    fn word(self) -> &'static str;

    /// The value written as `word`, if there is one.
    fn from_word(word: &str) -> Option<Self> {
        Self::ALL.iter().find(|(w, _)| *w == word).map(|(_, v)| *v)
    }
}

/// Declares an enum whose values are written as words, and its [`Keyword`] impl:
///
/// ```
/// rkd::keywords! {
///     /// How weights are chosen.
///     pub enum Method {
///         /// Per tensor.
///         PerTensor = "per_tensor",
///         /// One threshold.
///         Global = "global",
///     }
/// }
/// use rkd::keyword::Keyword;
/// assert_eq!(Method::from_word("global"), Some(Method::Global));
/// assert_eq!(Method::WORDS, &["per_tensor", "global"]);
/// assert_eq!(Method::PerTensor.word(), "per_tensor");
/// ```
#[macro_export]
macro_rules! keywords {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $word:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $crate::keyword::Keyword for $name {
            const ALL: &'static [(&'static str, Self)] = &[$( ($word, $name::$variant), )+];
            const WORDS: &'static [&'static str] = &[$( $word, )+];

            fn word(self) -> &'static str {
                match self {
                    $( $name::$variant => $word, )+
                }
            }
        }
    };
}
