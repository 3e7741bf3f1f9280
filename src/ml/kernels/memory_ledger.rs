//! Memory reserved by the stages running side by side in this process (`rkd run -j N`), so that
//! their memory checks do not each count the same free memory.
//!
//! A check that passes reserves what it checked ([`reserve`]); the reservation lasts as long as
//! the need does (a model's weights: until they are built; training's gradients and moments
//! until the first update has written the moments, then the gradients, made again at every
//! step, and the activations' bound: until training ends) and every later check counts it as
//! taken. A check that
//! fails while another stage is still running does not fail its stage: it waits until memory is
//! released (a reservation dropped, a stage ended) and looks again, saying so on the stage's
//! progress line (or stderr). Only when no other stage could release anything (none runs, or all of them
//! are waiting too) does it fail, so stages never wait for each other in a circle.
//!
//! Other rkd processes of the same user on the machine (another `rkd run`) say what they
//! reserved through [`super::memory_peers`]: their reservations count as taken too (against the
//! figures they share: the machine's, a control group's both are in), and a check short of
//! memory waits for one of them that could release some, as for a stage beside it — never for
//! one whose stages all wait themselves. Other programs are seen only through the system's
//! figure.

use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::host_memory::{self, SKIP_VAR};
use super::memory_peers::{Locked, Peer, Peers};

/// The reservations and stages of a process (tests make their own).
pub struct Ledger {
    state: Mutex<State>,
    /// Signalled whenever memory may have been released.
    released: Condvar,
    /// Bytes the process may still allocate, if the system says, less what the given other
    /// processes reserved.
    available: fn(&[Peer]) -> Option<u64>,
    /// Where the other processes' reservations are found (`None`: nowhere), made on first use.
    find_peers: fn() -> Option<Peers>,
    peers: OnceLock<Option<Peers>>,
}

/// What a [`Ledger`] counts.
struct State {
    /// Bytes reserved by passed checks and not yet released.
    reserved: u64,
    /// Stages running ([`StageRunning`] guards alive).
    stages: usize,
    /// Checks now waiting for memory.
    waiting: usize,
}

/// This process's ledger.
static PROCESS: Ledger = Ledger::new(host_memory::available_beside, Peers::for_this_process);

/// How often a waiting check looks again even when nothing in this process signalled (memory
/// freed by other processes counts too).
const RECHECK: Duration = Duration::from_secs(2);

thread_local! {
    /// Where a check on this thread says that it waits (the stage's progress line).
    static NOTICE: RefCell<Option<Notice>> = const { RefCell::new(None) };
    /// The log of the stage running on this thread, where waits are written down too.
    static LOG: RefCell<Option<File>> = const { RefCell::new(None) };
}

/// Says what a waiting check waits for.
pub type Notice = Box<dyn Fn(&str)>;

/// Registers a stage running on this thread in this process's ledger; `notice` is told when one
/// of its checks waits.
pub fn stage_running(notice: Notice) -> StageRunning {
    PROCESS.stage_running(notice)
}

/// Reserves `needed` bytes in this process's ledger when they fit in what the process has left
/// ([`host_memory::available_bytes`]) less what the stages beside it reserved; otherwise waits
/// while another stage runs that could release memory, and then fails with a message naming
/// `what`, the figures, and `remedy` first among the ways out ("use a smaller model"). Nothing is
/// checked (nor reserved) where the system does not say what is free, or with
/// `RKD_NO_MEMORY_CHECK` set.
pub fn reserve(needed: u64, what: &str, remedy: &str) -> Result<Reservation, String> {
    if std::env::var_os(SKIP_VAR).is_some() {
        return Ok(Reservation {
            bytes: 0,
            ledger: &PROCESS,
        });
    }
    PROCESS.reserve(needed, what, remedy)
}

/// Writes the waits of the checks on this thread into `log` (the stage's `log.txt`) as well,
/// while the returned guard lives.
pub fn log_waits(log: File) -> LogWaits {
    LOG.with(|l| *l.borrow_mut() = Some(log));
    LogWaits {
        _thread: std::marker::PhantomData,
    }
}

/// Ends [`log_waits`] when dropped.
pub struct LogWaits {
    /// Not `Send`: the log belongs to the thread that set it.
    _thread: std::marker::PhantomData<*const ()>,
}

impl Drop for LogWaits {
    fn drop(&mut self) {
        LOG.with(|l| l.borrow_mut().take());
    }
}

/// Tells the stage on this thread (its progress line and its log) that a check waits or waited.
fn tell(line: &str) {
    NOTICE.with(|n| n.borrow().as_ref().map(|f| f(line)));
    LOG.with(|l| l.borrow_mut().as_mut().map(|f| writeln!(f, "{line}")));
}

/// A stage running on this thread: while it lives, a check of another stage that is short of
/// memory waits for this one to release some instead of failing. Dropping it releases the wait.
pub struct StageRunning {
    ledger: &'static Ledger,
    /// Not `Send`: the notice belongs to the thread that made it.
    _thread: std::marker::PhantomData<*const ()>,
}

impl Drop for StageRunning {
    fn drop(&mut self) {
        NOTICE.with(|n| n.borrow_mut().take());
        // What the stage freed goes back to the system, where other processes can use it.
        host_memory::release_free_heap();
        let mut s = self.ledger.state();
        s.stages = s.stages.saturating_sub(1);
        self.ledger.publish(&s);
        drop(s);
        self.ledger.released.notify_all();
    }
}

/// Memory a passed check reserved; released when dropped.
#[must_use = "the memory is reserved only while this lives"]
pub struct Reservation {
    bytes: u64,
    ledger: &'static Ledger,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reservation({} bytes)", self.bytes)
    }
}

impl Reservation {
    /// Bytes reserved.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Reserves `extra` bytes more, checked as [`reserve`] checks.
    pub fn grow(&mut self, extra: u64, what: &str, remedy: &str) -> Result<(), String> {
        if std::env::var_os(SKIP_VAR).is_some() {
            return Ok(());
        }
        let mut more = self.ledger.reserve(extra, what, remedy)?;
        self.bytes = self.bytes.saturating_add(std::mem::take(&mut more.bytes));
        Ok(())
    }

    /// Releases what is reserved beyond `bytes` (that memory is now in use, and the system
    /// counts it).
    pub fn shrink_to(&mut self, bytes: u64) {
        if bytes >= self.bytes {
            return;
        }
        let mut s = self.ledger.state();
        s.reserved = s.reserved.saturating_sub(self.bytes - bytes);
        self.ledger.publish(&s);
        drop(s);
        self.bytes = bytes;
        self.ledger.released.notify_all();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.shrink_to(0);
    }
}

impl Ledger {
    /// An empty ledger over the `available` figure, beside the processes that `find_peers` finds.
    pub const fn new(available: fn(&[Peer]) -> Option<u64>, find_peers: fn() -> Option<Peers>) -> Ledger {
        Ledger {
            state: Mutex::new(State {
                reserved: 0,
                stages: 0,
                waiting: 0,
            }),
            released: Condvar::new(),
            available,
            find_peers,
            peers: OnceLock::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn peers(&self) -> Option<&Peers> {
        self.peers.get_or_init(self.find_peers).as_ref()
    }

    /// Tells the other processes what this one now reserves, and whether all its stages wait.
    fn publish(&self, s: &State) {
        if let Some(peers) = self.peers() {
            peers.publish(s.reserved, s.stages, s.waiting > 0 && s.waiting >= s.stages);
        }
    }

    /// [`stage_running`] in this ledger.
    pub fn stage_running(&'static self, notice: Notice) -> StageRunning {
        let mut s = self.state();
        s.stages += 1;
        self.publish(&s);
        drop(s);
        NOTICE.with(|n| *n.borrow_mut() = Some(notice));
        StageRunning {
            ledger: self,
            _thread: std::marker::PhantomData,
        }
    }

    /// [`reserve`] in this ledger (`RKD_NO_MEMORY_CHECK` aside).
    pub fn reserve(&'static self, needed: u64, what: &str, remedy: &str) -> Result<Reservation, String> {
        let mut s = self.state();
        let mut waiting_since: Option<Instant> = None;
        loop {
            // The other processes' reservations, read under their folder's lock: no other
            // process's check passes on the same memory until this one has said what it took.
            let locked = self.peers().and_then(|p| p.lock().ok());
            let others = locked.as_ref().map(Locked::others).unwrap_or_default();
            // What is left for a new reservation: the process's figure less what is reserved.
            // Before calling it short, the heap's free memory (an earlier stage's model, kept for
            // reuse) goes back to the system and the figure is read again.
            let reserved = s.reserved;
            let left = || (self.available)(&others).map(|a| a.saturating_sub(reserved));
            let Some(mut left_now) = left() else {
                return Ok(Reservation { bytes: 0, ledger: self });
            };
            if needed > left_now {
                host_memory::release_free_heap();
                left_now = left().unwrap_or(left_now);
            }
            if needed <= left_now {
                s.reserved = s.reserved.saturating_add(needed);
                self.publish(&s);
                drop((locked, s));
                if let Some(since) = waiting_since {
                    tell(&format!(
                        "after waiting {}, memory enough for {what}: going on",
                        waited(since)
                    ));
                }
                return Ok(Reservation {
                    bytes: needed,
                    ledger: self,
                });
            }
            // The caller works for a stage when any runs; the others could still release memory
            // unless every one of them waits too. So could another process competing for the
            // same memory, unless all its stages wait.
            let here = s.stages.saturating_sub(1).saturating_sub(s.waiting);
            let competing = self.competing(&others, needed);
            if here == 0 && !competing.iter().any(|p| p.could_release()) {
                self.publish(&s);
                let mut error = host_memory::too_large(needed, left_now, what, remedy);
                if let Some(since) = waiting_since {
                    error = format!("after waiting {} for the stages beside it: {error}", waited(since));
                }
                error.push_str(&others_note(&competing));
                return Err(error);
            }
            if waiting_since.is_none() {
                waiting_since = Some(Instant::now());
                tell(&format!(
                    "waiting for memory: {what} would take at least {}, and {} is left while other stages run",
                    host_memory::size(needed),
                    host_memory::size(left_now)
                ));
            }
            s.waiting += 1;
            self.publish(&s);
            drop(locked);
            s = self
                .released
                .wait_timeout(s, RECHECK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            s.waiting -= 1;
        }
    }

    /// The other processes competing for the memory this one is short of: `needed` bytes more
    /// reserved by one of them would lower this one's figure (they share the figure that binds
    /// it: the machine's, or a control group's both are in).
    fn competing<'p>(&self, others: &'p [Peer], needed: u64) -> Vec<&'p Peer> {
        let alone = (self.available)(&[]);
        others
            .iter()
            .filter(|p| {
                let more = Peer {
                    reserved: p.reserved.saturating_add(needed),
                    ..(*p).clone()
                };
                (self.available)(std::slice::from_ref(&more)) < alone
            })
            .collect()
    }
}

/// What a failed check adds when other processes' reservations took part of the memory (they
/// wait for memory themselves, or it would have waited for them): nothing when none did.
fn others_note(competing: &[&Peer]) -> String {
    let holding: Vec<&&Peer> = competing.iter().filter(|p| p.reserved > 0).collect();
    if holding.is_empty() {
        return String::new();
    }
    let pids: Vec<String> = holding.iter().map(|p| p.pid.to_string()).collect();
    let bytes: u64 = holding.iter().map(|p| p.reserved).sum();
    format!(
        ". Of the memory free, {} more is reserved by other rkd processes of yours here (pid {}), \
         whose stages all wait for memory themselves; run this one when they are done",
        host_memory::size(bytes),
        pids.join(", ")
    )
}

/// How long since `since`, to the second ("42s", "3m 5s").
fn waited(since: Instant) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(since.elapsed().as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex as StdMutex};

    const GIB: u64 = 1 << 30;

    /// 10 GiB, less what the other processes reserved.
    fn ten_gib(peers: &[Peer]) -> Option<u64> {
        Some((10 * GIB).saturating_sub(peers.iter().map(|p| p.reserved).sum()))
    }

    fn no_peers() -> Option<Peers> {
        None
    }

    /// A stage beside, on its own thread: the lines its notice got, its log, where the outcome of
    /// its reservation arrives, and the sender that ends it.
    struct Beside {
        lines: Arc<StdMutex<Vec<String>>>,
        log: tempfile::NamedTempFile,
        result: mpsc::Receiver<Result<u64, String>>,
        end: mpsc::Sender<()>,
    }

    /// Starts a stage on a new thread that reserves `bytes` in `ledger` and keeps the
    /// reservation until told.
    fn stage_beside(ledger: &'static Ledger, bytes: u64) -> Beside {
        let lines = Arc::new(StdMutex::new(Vec::new()));
        let log = tempfile::NamedTempFile::new().unwrap();
        let log_file = log.reopen().unwrap();
        let (result_tx, result) = mpsc::channel();
        let (end, end_rx) = mpsc::channel::<()>();
        let told = lines.clone();
        std::thread::spawn(move || {
            let _stage = ledger.stage_running(Box::new(move |l| told.lock().unwrap().push(l.to_string())));
            let _log = log_waits(log_file);
            let r = ledger.reserve(bytes, "the model `b`", "use a smaller model");
            let _ = result_tx.send(r.as_ref().map(Reservation::bytes).map_err(Clone::clone));
            let _ = end_rx.recv_timeout(Duration::from_secs(30));
        });
        Beside {
            lines,
            log,
            result,
            end,
        }
    }

    /// Waits (at most 10 s) until the stage beside says it waits.
    fn until_waiting(lines: &StdMutex<Vec<String>>) -> String {
        for _ in 0..1000 {
            if let Some(l) = lines.lock().unwrap().first() {
                return l.clone();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the stage beside never said it waits");
    }

    #[test]
    fn a_reservation_counts_as_taken_until_it_is_dropped() {
        static LEDGER: Ledger = Ledger::new(ten_gib, no_peers);
        let first = LEDGER.reserve(6 * GIB, "the model `a`", "use a smaller model").unwrap();
        assert_eq!(first.bytes(), 6 * GIB);
        // No stage runs that could release memory: the second fails at once, with the figures.
        let err = LEDGER
            .reserve(6 * GIB, "the model `b`", "use a smaller model")
            .unwrap_err();
        assert!(
            err.starts_with("the model `b` would take at least 6.0 GiB of memory, and this process has 4.0 GiB left"),
            "{err}"
        );
        drop(first);
        let mut shrunk = LEDGER.reserve(9 * GIB, "the model `b`", "").unwrap();
        shrunk.shrink_to(GIB);
        assert_eq!(shrunk.bytes(), GIB);
        drop(shrunk);
        let mut again = LEDGER.reserve(6 * GIB, "the model `b`", "").unwrap();
        again.grow(3 * GIB, "activations", "").unwrap();
        assert_eq!(again.bytes(), 9 * GIB);
        assert!(again.grow(2 * GIB, "activations", "").is_err());
    }

    /// A stage on this thread holding 8 of `ledger`'s 10 GiB, and one beside it waiting for 4:
    /// this one's guard and reservation, and the other's outcome and end.
    fn one_waiting_beside(ledger: &'static Ledger) -> (StageRunning, Reservation, Beside) {
        let a = ledger.stage_running(Box::new(|_| {}));
        let weights = ledger.reserve(8 * GIB, "the model `a`", "").unwrap();
        let beside = stage_beside(ledger, 4 * GIB);
        assert_eq!(until_waiting(&beside.lines), WAITING);
        assert!(beside.result.try_recv().is_err(), "it went on without the memory");
        (a, weights, beside)
    }

    const WAITING: &str =
        "waiting for memory: the model `b` would take at least 4.0 GiB, and 2.0 GiB is left while other stages run";

    #[test]
    fn a_stage_short_of_memory_waits_until_another_releases_it() {
        static LEDGER: Ledger = Ledger::new(ten_gib, no_peers);
        let (_a, weights, beside) = one_waiting_beside(&LEDGER);
        drop(weights);
        assert_eq!(beside.result.recv_timeout(Duration::from_secs(10)), Ok(Ok(4 * GIB)));
        // The progress line and the stage's log say that it waited, how long, and that it went on.
        let lines = beside.lines.lock().unwrap().clone();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0], WAITING);
        let going_on = &lines[1];
        assert!(going_on.starts_with("after waiting "), "{going_on}");
        assert!(
            going_on.ends_with("s, memory enough for the model `b`: going on"),
            "{going_on}"
        );
        let log = std::fs::read_to_string(beside.log.path()).unwrap();
        assert_eq!(log, format!("{WAITING}\n{going_on}\n"));
        beside.end.send(()).unwrap();
    }

    #[test]
    fn stages_never_wait_for_each_other_in_a_circle() {
        static LEDGER: Ledger = Ledger::new(ten_gib, no_peers);
        let (a, weights, beside) = one_waiting_beside(&LEDGER);
        // The stage beside waits for this one: this one, short too, fails instead of waiting...
        let err = LEDGER
            .reserve(4 * GIB, "activations", "use a smaller `batch_size`")
            .unwrap_err();
        assert!(err.contains("use a smaller `batch_size`"), "{err}");
        // ...and when it ends, the other goes on.
        drop(weights);
        drop(a);
        assert_eq!(beside.result.recv_timeout(Duration::from_secs(10)), Ok(Ok(4 * GIB)));
        beside.end.send(()).unwrap();
    }

    #[test]
    fn a_stage_that_ends_wakes_the_one_waiting_for_it() {
        static LEDGER: Ledger = Ledger::new(ten_gib, no_peers);
        let (a, held, beside) = one_waiting_beside(&LEDGER);
        // The other stage ends (its memory is still reserved here, as if another process held
        // it): nothing can release memory any more, so the waiting check fails.
        drop(a);
        let err = beside
            .result
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .unwrap_err();
        assert!(
            err.starts_with("after waiting ")
                && err.contains("s for the stages beside it: the model `b` would take at least 4.0 GiB"),
            "{err}"
        );
        assert!(err.contains("2.0 GiB left"), "{err}");
        drop(held);
        beside.end.send(()).unwrap();
    }

    /// A folder of this test process's own, where its ledgers `a` and `b` stand for two processes.
    fn peers_dir() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("rkd-ledger-test-{}", std::process::id()))
    }

    fn peer(tag: &str) -> Option<Peers> {
        let pid = std::process::id();
        let started = crate::process::start_time(pid)?;
        Some(Peers::at(
            peers_dir(),
            format!("{pid}-{started}-{tag}"),
            vec!["0::/".into()],
        ))
    }

    #[test]
    fn processes_count_each_others_reservations_and_never_wait_for_each_other_in_a_circle() {
        fn a() -> Option<Peers> {
            peer("a")
        }
        fn b() -> Option<Peers> {
            peer("b")
        }
        if a().is_none() {
            return; // no /proc: processes cannot be told apart, and nothing is shared
        }
        static A: Ledger = Ledger::new(ten_gib, a);
        static B: Ledger = Ledger::new(ten_gib, b);
        let held_a = A.reserve(6 * GIB, "the model `a`", "").unwrap();
        let held_b = B.reserve(3 * GIB, "the model `b`", "").unwrap();
        // `a` needs 2 GiB more, and 1 is left: `b` could release its 3, so `a` waits...
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let r = A.reserve(2 * GIB, "the activations of `a`", "use a smaller `batch_size`");
            let _ = tx.send(r.map(|r| r.bytes()));
        });
        let waiting = |dir: &std::path::Path| {
            std::fs::read_dir(dir)
                .unwrap()
                .flatten()
                .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("waiting 1")))
        };
        for _ in 0..1000 {
            if waiting(&peers_dir()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(rx.try_recv().is_err(), "`a` went on without the memory");
        // ...and `b`, short too, fails instead of waiting for `a`, saying who holds what.
        let err = B.reserve(2 * GIB, "the activations of `b`", "").unwrap_err();
        assert!(err.contains("this process has 1.0 GiB left"), "{err}");
        assert!(
            err.contains(&format!(
                "6.0 GiB more is reserved by other rkd processes of yours here (pid {})",
                std::process::id()
            )),
            "{err}"
        );
        // When `b` releases its memory, `a` finds it at its next look (other processes do not
        // signal: at most 2 s).
        drop(held_b);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(Ok(2 * GIB)));
        drop(held_a);
        let left: Vec<_> = std::fs::read_dir(peers_dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["lock"], "a process that holds nothing keeps no file");
        let _ = std::fs::remove_dir_all(peers_dir());
    }
}
