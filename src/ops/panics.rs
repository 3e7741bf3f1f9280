//! A panic inside a stage is a bug of rkd's, not a reason to crash the run: [`catch`] turns it
//! into an error that fails the one stage (the run goes on as for any failure and writes its
//! record), and while it is caught the panic prints no backtrace.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

/// How many [`catch`] calls are running, on any thread.
static CATCHING: AtomicUsize = AtomicUsize::new(0);

/// Panics of other threads (the compute pool's) while a catch runs: message and location, for
/// the catching thread to find by message (the pool passes the payload on, not the location).
static ELSEWHERE: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

thread_local! {
    /// Whether this thread runs inside [`catch`].
    static CATCHES: Cell<bool> = const { Cell::new(false) };
    /// Where this thread's last caught panic happened.
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The text of a panic payload.
pub fn message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Where the panic hook sends a panic.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// Kept for the [`catch`] running on this thread.
    Here,
    /// Kept for a [`catch`] on another thread: a compute-pool worker's panic travels to the
    /// thread waiting for its work, which catches it there.
    Elsewhere,
    /// Printed as usual (the previous hook).
    Print,
}

/// The route of a panic on a thread inside a catch or not (`in_catch`), while some catch runs
/// anywhere or none (`catching`), on a rayon worker or not (`on_pool`). Only pool workers' panics
/// are held for another thread's catch: a panic on any other thread (the main thread, the
/// scheduler, a test) is nobody's stage's and prints.
fn route(in_catch: bool, catching: bool, on_pool: bool) -> Route {
    if in_catch {
        Route::Here
    } else if catching && on_pool {
        Route::Elsewhere
    } else {
        Route::Print
    }
}

fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let catching = CATCHING.load(Ordering::SeqCst) > 0;
            let on_pool = rayon::current_thread_index().is_some();
            match route(CATCHES.with(Cell::get), catching, on_pool) {
                Route::Here => LOCATION.with(|l| *l.borrow_mut() = Some(location)),
                Route::Elsewhere => {
                    let mut seen = ELSEWHERE.lock().unwrap_or_else(|e| e.into_inner());
                    if seen.len() >= 16 {
                        seen.remove(0);
                    }
                    seen.push((message(info.payload()), location));
                }
                Route::Print => previous(info),
            }
        }));
    });
}

/// Runs `f`; a panic inside it (or inside the parallel work it waits for) comes back as
/// `Err("MESSAGE (at FILE:LINE)")` instead of unwinding further, with nothing printed.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    let outer = CATCHES.with(|c| c.replace(true));
    CATCHING.fetch_add(1, Ordering::SeqCst);
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.fetch_sub(1, Ordering::SeqCst);
    CATCHES.with(|c| c.set(outer));
    result.map_err(|payload| {
        let text = message(payload.as_ref());
        let here = LOCATION.with(|l| l.borrow_mut().take());
        let location = here.or_else(|| {
            let mut seen = ELSEWHERE.lock().unwrap_or_else(|e| e.into_inner());
            let at = seen.iter().rposition(|(m, _)| *m == text)?;
            Some(seen.remove(at).1)
        });
        match location {
            Some(at) if !at.is_empty() => format!("{text} (at {at})"),
            _ => text,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_comes_back_as_its_message_and_where_it_happened() {
        let err = catch(|| -> usize { Vec::<u64>::with_capacity(usize::MAX).len() }).unwrap_err();
        assert!(err.starts_with("capacity overflow (at "), "{err}");
        assert_eq!(catch(|| 7), Ok(7));
    }

    #[test]
    fn only_a_pool_workers_panic_is_held_for_another_threads_catch() {
        assert_eq!(route(true, true, false), Route::Here);
        assert_eq!(route(true, true, true), Route::Here);
        assert_eq!(route(false, true, true), Route::Elsewhere);
        assert_eq!(
            route(false, true, false),
            Route::Print,
            "the main thread's panic prints"
        );
        assert_eq!(
            route(false, false, true),
            Route::Print,
            "no catch runs: nothing to hold it for"
        );
        assert_eq!(route(false, false, false), Route::Print);
    }

    #[test]
    fn a_panic_on_the_compute_pool_is_caught_by_the_stage_that_waits_for_it() {
        use rayon::prelude::*;
        let err = catch(|| {
            (0..64).into_par_iter().for_each(|i| {
                if i == 63 {
                    panic!("worker {i} gave up");
                }
            })
        })
        .unwrap_err();
        assert!(err.starts_with("worker 63 gave up"), "{err}");
    }
}
