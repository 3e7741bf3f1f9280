//! The modules being loaded, outermost first: a `use` of one of them closes an import cycle.

use super::ModKey;
use std::collections::HashMap;

/// The stack of modules being loaded, with each one's place in it, so that finding a cycle
/// costs one lookup rather than a walk of the stack (a chain of n files was O(n²)).
#[derive(Default)]
pub(super) struct Loading {
    stack: Vec<ModKey>,
    at: HashMap<ModKey, usize>,
}

impl Loading {
    /// `key` starts loading, inside the modules already on the stack.
    pub fn push(&mut self, key: ModKey) {
        self.at.insert(key.clone(), self.stack.len());
        self.stack.push(key);
    }

    /// The innermost module is loaded.
    pub fn pop(&mut self) {
        if let Some(key) = self.stack.pop() {
            self.at.remove(&key);
        }
    }

    /// The cycle a `use` of `key` would close, from `key`'s load to the innermost one; `None`
    /// when `key` is not being loaded.
    pub fn cycle(&self, key: &ModKey) -> Option<&[ModKey]> {
        self.at.get(key).map(|&i| &self.stack[i..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_runs_from_the_key_to_the_innermost_module() {
        let key = |n: &str| ModKey::Std(n.into());
        let mut l = Loading::default();
        for n in ["a", "b", "c"] {
            l.push(key(n));
        }
        assert_eq!(l.cycle(&key("b")), Some(&[key("b"), key("c")][..]));
        assert_eq!(l.cycle(&key("d")), None);
        l.pop();
        assert_eq!(l.cycle(&key("c")), None);
        assert_eq!(l.cycle(&key("a")).map(<[_]>::len), Some(2));
    }
}
