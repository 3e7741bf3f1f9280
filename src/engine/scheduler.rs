//! Runs a DAG of jobs on N worker threads: ready jobs start as soon as a worker is free (and, for
//! a job that needs GPUs, as soon as enough GPU slots are free: each running job holds its own);
//! a failure skips the failed job's descendants and, unless told to keep going, stops new starts.
//! A job that panics has failed.

use super::cancel::Cancel;
use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::Mutex;

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobEnd {
    /// It succeeded.
    Done,
    /// It failed.
    Failed,
    /// It never started: an upstream job failed, or the run stopped.
    Skipped,
}

/// GPU slots: the GPUs a run may use, and how many each job needs.
#[derive(Clone, Debug, Default)]
pub struct Gpus {
    /// The GPUs (ordinals) jobs may hold; none: GPUs are not scheduled.
    pub slots: Vec<usize>,
    /// GPUs each job needs (0 for most); at most all the slots.
    pub need: Vec<usize>,
}

impl Gpus {
    fn need(&self, job: usize) -> usize {
        match self.need.get(job) {
            Some(&n) if !self.slots.is_empty() => n.min(self.slots.len()),
            _ => 0,
        }
    }
}

/// Runs `n` jobs where `deps[i]` lists the jobs `i` needs (indices < n). `run(i, gpus)` runs job
/// `i` holding those GPU slots (see [`Gpus`]) and returns whether it succeeded. `on_end(i, end)` is
/// called on the scheduling thread as each job ends or is skipped. Returns every job's end.
#[allow(clippy::too_many_arguments)]
pub fn schedule<R, E>(
    n: usize,
    deps: &[Vec<usize>],
    workers: usize,
    gpus: &Gpus,
    keep_going: bool,
    cancel: &Cancel,
    run: R,
    mut on_end: E,
) -> Vec<JobEnd>
where
    R: Fn(usize, &[usize]) -> bool + Sync,
    E: FnMut(usize, &JobEnd),
{
    let mut ends: Vec<Option<JobEnd>> = vec![None; n];
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut ready: VecDeque<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let (job_tx, job_rx) = mpsc::channel::<(usize, Vec<usize>)>();
    let mut free_gpus: Vec<usize> = gpus.slots.clone();
    let mut held: Vec<Vec<usize>> = vec![Vec::new(); n];
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = mpsc::channel::<(usize, bool)>();
    let workers = workers.clamp(1, n.max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let done_tx = done_tx.clone();
            let job_rx = &job_rx;
            let run = &run;
            scope.spawn(move || loop {
                let job = job_rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                let Ok((i, slots)) = job else { break };
                // A panic while running a job (a bug) fails that job, never the whole run; it
                // must not leave the scheduling thread waiting for an answer that never comes.
                let ok = crate::ops::panics::catch(|| run(i, &slots)).unwrap_or_else(|panic| {
                    crate::say!("rkd: internal error while running a stage: {panic}");
                    false
                });
                if done_tx.send((i, ok)).is_err() {
                    break;
                }
            });
        }
        drop(done_tx);
        let mut running = 0usize;
        let mut finished = 0usize;
        while finished < n {
            while !cancel.is_cancelled() && running < workers {
                // The first ready job whose GPUs are free (a CPU job passes a waiting GPU job).
                let Some(at) = ready.iter().position(|&i| gpus.need(i) <= free_gpus.len()) else {
                    break;
                };
                let i = ready.remove(at).expect("found");
                let slots: Vec<usize> = free_gpus.drain(..gpus.need(i)).collect();
                held[i] = slots.clone();
                running += 1;
                if job_tx.send((i, slots)).is_err() {
                    break;
                }
            }
            if running == 0 {
                // Nothing runs and nothing can start: the rest is skipped.
                for (i, end) in ends.iter_mut().enumerate() {
                    if end.is_none() {
                        *end = Some(JobEnd::Skipped);
                        on_end(i, &JobEnd::Skipped);
                    }
                }
                break;
            }
            let Ok((i, ok)) = done_rx.recv() else { break };
            running -= 1;
            free_gpus.append(&mut held[i]);
            free_gpus.sort_unstable();
            finished += 1;
            let end = if ok { JobEnd::Done } else { JobEnd::Failed };
            on_end(i, &end);
            ends[i] = Some(end);
            if ok {
                for &d in &dependents[i] {
                    waiting[d] -= 1;
                    if waiting[d] == 0 && ends[d].is_none() {
                        ready.push_back(d);
                    }
                }
            } else {
                if !keep_going {
                    cancel.stop_scheduling();
                }
                // Skip every descendant.
                let mut stack = dependents[i].clone();
                while let Some(d) = stack.pop() {
                    if ends[d].is_none() {
                        ends[d] = Some(JobEnd::Skipped);
                        on_end(d, &JobEnd::Skipped);
                        finished += 1;
                        ready.retain(|&r| r != d);
                        stack.extend(dependents[d].iter().copied());
                    }
                }
            }
        }
        drop(job_tx);
    });
    ends.into_iter().map(|e| e.unwrap_or(JobEnd::Skipped)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    // a → b → c, a → d; e independent. b fails.
    fn deps() -> Vec<Vec<usize>> {
        vec![vec![], vec![0], vec![1], vec![0], vec![]]
    }

    #[test]
    fn a_failure_skips_descendants_and_keep_going_runs_the_rest() {
        let ran = AtomicUsize::new(0);
        let ends = schedule(
            5,
            &deps(),
            2,
            &Gpus::default(),
            true,
            &Cancel::default(),
            |i, _| {
                ran.fetch_add(1, Ordering::SeqCst);
                i != 1
            },
            |_, _| {},
        );
        assert_eq!(
            ends,
            [
                JobEnd::Done,
                JobEnd::Failed,
                JobEnd::Skipped,
                JobEnd::Done,
                JobEnd::Done
            ]
        );
        assert_eq!(ran.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn a_job_left_running_alone_computes_on_every_thread_of_the_shared_pool() {
        // Two workers (`-j 2`); job 0 ends at once, job 1 does parallel work, as a stage's kernels
        // do: it runs on the process-wide pool, not on a share fixed when it started.
        let threads = Mutex::new(std::collections::BTreeSet::new());
        let pool = crate::ml::kernels::runtime::shared_threads();
        schedule(
            2,
            &[vec![], vec![]],
            2,
            &Gpus::default(),
            false,
            &Cancel::default(),
            |i, _| {
                if i == 1 {
                    use rayon::prelude::*;
                    (0..64 * pool).into_par_iter().for_each(|_| {
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        threads.lock().unwrap().insert(rayon::current_thread_index());
                    });
                }
                true
            },
            |_, _| {},
        );
        assert_eq!(
            threads.into_inner().unwrap().len(),
            pool,
            "every core worked on the lone job"
        );
    }

    #[test]
    fn a_job_that_panics_fails_alone_and_the_run_goes_on() {
        let ends = schedule(
            5,
            &deps(),
            2,
            &Gpus::default(),
            true,
            &Cancel::default(),
            |i, _| {
                if i == 1 {
                    let _ = Vec::<u64>::with_capacity(usize::MAX);
                }
                true
            },
            |_, _| {},
        );
        assert_eq!(
            ends,
            [
                JobEnd::Done,
                JobEnd::Failed,
                JobEnd::Skipped,
                JobEnd::Done,
                JobEnd::Done
            ]
        );
    }

    #[test]
    fn without_keep_going_nothing_new_starts_after_a_failure() {
        // One worker, so the order is deterministic: a, e, b (fails); d never starts.
        let ends = schedule(
            5,
            &deps(),
            1,
            &Gpus::default(),
            false,
            &Cancel::default(),
            |i, _| i != 1,
            |_, _| {},
        );
        assert_eq!(ends[1], JobEnd::Failed);
        assert_eq!(ends[2], JobEnd::Skipped);
        assert_eq!(ends[3], JobEnd::Skipped);
    }

    #[test]
    fn dependencies_finish_before_their_dependents_start() {
        let order = Mutex::new(Vec::new());
        let deps: Vec<Vec<usize>> = (0..50)
            .map(|i| if i == 0 { vec![] } else { vec![(i - 1) / 2] })
            .collect();
        let ends = schedule(
            50,
            &deps,
            4,
            &Gpus::default(),
            false,
            &Cancel::default(),
            |i, _| {
                order.lock().unwrap().push(i);
                true
            },
            |_, _| {},
        );
        assert!(ends.iter().all(|e| *e == JobEnd::Done));
        let order = order.into_inner().unwrap();
        let pos = |i: usize| order.iter().position(|&x| x == i).unwrap();
        for (i, ds) in deps.iter().enumerate() {
            for &d in ds {
                assert!(pos(d) < pos(i), "{d} must run before {i}");
            }
        }
    }

    #[test]
    fn each_running_gpu_job_holds_its_own_gpus_and_cpu_jobs_pass_waiting_ones() {
        // Six independent jobs on 4 workers and 2 GPUs: jobs 0–3 need one GPU, 4 and 5 none.
        let gpus = Gpus {
            slots: vec![0, 1],
            need: vec![1, 1, 1, 1, 0, 0],
        };
        let holding = Mutex::new(Vec::<(usize, usize)>::new());
        let most = AtomicUsize::new(0);
        let cpu_started = AtomicUsize::new(0);
        let ends = schedule(
            6,
            &vec![vec![]; 6],
            4,
            &gpus,
            false,
            &Cancel::default(),
            |i, slots| {
                if i >= 4 {
                    assert!(slots.is_empty());
                    cpu_started.fetch_add(1, Ordering::SeqCst);
                    return true;
                }
                assert_eq!(slots.len(), 1, "job {i}");
                {
                    let mut h = holding.lock().unwrap();
                    assert!(!h.iter().any(|&(_, g)| g == slots[0]), "GPU {} held twice", slots[0]);
                    h.push((i, slots[0]));
                    most.fetch_max(h.len(), Ordering::SeqCst);
                }
                std::thread::sleep(std::time::Duration::from_millis(30));
                holding.lock().unwrap().retain(|&(j, _)| j != i);
                true
            },
            |_, _| {},
        );
        assert!(ends.iter().all(|e| *e == JobEnd::Done));
        assert_eq!(most.load(Ordering::SeqCst), 2, "both GPUs used at once, never more");
        assert_eq!(cpu_started.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn without_slots_gpu_needs_are_ignored() {
        let gpus = Gpus {
            slots: Vec::new(),
            need: vec![1, 2],
        };
        let ends = schedule(
            2,
            &[vec![], vec![]],
            2,
            &gpus,
            false,
            &Cancel::default(),
            |_, s| s.is_empty(),
            |_, _| {},
        );
        assert_eq!(ends, [JobEnd::Done, JobEnd::Done]);
    }
}
