//! The syntax tree of a `.rkd` file. Every node carries its span.

use crate::source::Span;

/// An identifier with its location.
#[derive(Clone, Debug)]
pub struct Ident {
    /// The name.
    pub name: String,
    /// Where it is written.
    pub span: Span,
}

/// A parsed file: its items in order.
#[derive(Clone, Debug)]
pub struct Module {
    /// Top-level items.
    pub items: Vec<Item>,
}

/// A declaration or statement.
#[derive(Clone, Debug)]
pub enum Item {
    /// `use ...`
    Use(Use),
    /// `let NAME = EXPR`
    Let(Binding),
    /// `stage NAME = EXPR`
    Stage(Binding),
    /// `fn NAME(params) { items; EXPR }`
    Fn(FnDef),
    /// `sweep a in xs, b in ys { items }`
    Sweep(Sweep),
    /// `for x in xs { items }`
    For(For),
}

/// The import forms.
#[derive(Clone, Debug)]
pub enum Use {
    /// `use std::a::b` or `use std::a::{x, y}`.
    Std {
        /// The module path segments (`std`, `strategies`).
        path: Vec<Ident>,
        /// Names imported from the module, when braces are used.
        group: Option<Vec<Ident>>,
        /// The whole item.
        span: Span,
    },
    /// `use "file.rkd" as name`.
    File {
        /// The path as written.
        path: String,
        /// Where the path string is.
        path_span: Span,
        /// The module's local name.
        alias: Ident,
    },
}

/// `let` or `stage`: a name and its value.
#[derive(Clone, Debug)]
pub struct Binding {
    /// The declared name.
    pub name: Ident,
    /// Its value.
    pub value: Expr,
    /// The whole item.
    pub span: Span,
}

/// A function definition.
#[derive(Clone, Debug)]
pub struct FnDef {
    /// The function's name.
    pub name: Ident,
    /// Its parameters, in order.
    pub params: Vec<Param>,
    /// Name of the `..rest` parameter that collects other keyword arguments.
    pub rest: Option<Ident>,
    /// Body items.
    pub body: Vec<Item>,
    /// The result expression.
    pub result: Expr,
    /// The whole definition.
    pub span: Span,
}

/// A function parameter, with its default when it has one.
#[derive(Clone, Debug)]
pub struct Param {
    /// The parameter's name.
    pub name: Ident,
    /// The default value expression.
    pub default: Option<Expr>,
}

/// A `sweep` block.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// The swept variables and their value lists, outermost first.
    pub vars: Vec<(Ident, Expr)>,
    /// The body.
    pub body: Vec<Item>,
    /// The `sweep` keyword and variables (for messages).
    pub span: Span,
}

/// A `for` loop.
#[derive(Clone, Debug)]
pub struct For {
    /// The loop variable.
    pub var: Ident,
    /// The list iterated over.
    pub list: Expr,
    /// The body.
    pub body: Vec<Item>,
    /// The header (for messages).
    pub span: Span,
}

/// An expression with its span.
#[derive(Clone, Debug)]
pub struct Expr {
    /// What it is.
    pub kind: ExprKind,
    /// Where it is written.
    pub span: Span,
}

/// Binary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `+`: numbers, strings, list concatenation.
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
}

impl BinOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
        }
    }
}

/// The expression forms.
#[derive(Clone, Debug)]
pub enum ExprKind {
    /// An integer literal.
    Int(i64),
    /// An integer literal outside the 64-bit range (its digits, without `_`): an error where it
    /// is evaluated.
    BigInt(String),
    /// A float literal.
    Float(f64),
    /// A string literal (escapes resolved).
    Str(String),
    /// `true` / `false`.
    Bool(bool),
    /// A name or `module::name`.
    Path(Vec<Ident>),
    /// `[a, b]`
    List(Vec<Expr>),
    /// `{k: v}`
    Record(Vec<(Ident, Expr)>),
    /// `f(k: v, ..rest)`
    Call {
        /// The callee.
        callee: Vec<Ident>,
        /// Arguments in order.
        args: Vec<Arg>,
    },
    /// `a + b` and friends.
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `-a`
    Neg(Box<Expr>),
    /// `xs[i]`
    Index(Box<Expr>, Box<Expr>),
    /// `r.name`
    Field(Box<Expr>, Ident),
}

/// A call argument.
#[derive(Clone, Debug)]
pub enum Arg {
    /// `name: value`
    Named(Ident, Expr),
    /// A value without a name (always an error; kept for the message).
    Positional(Expr),
    /// `..record`: every field becomes a keyword argument.
    Spread(Expr),
}
