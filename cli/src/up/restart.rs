//! When `sandbar up` starts a service that exited again, and when it gives up. Pure: the supervisor tells it how
//! each run ended and waits the delay it answers.
//!
//! Every exit it did not ask for is a crash (a signal, a non-zero status, or zero). The delay doubles with each
//! crash in a row, and a run that stayed up `stable_after` starts the count again. The stack stops only when a
//! service fails to *start* (no ready line) `max_failed_starts` times in a row: a service that ran and then
//! crashed is always started again, so one bad moment never takes down the services that are fine.

use std::time::Duration;

use sandbar_support::backoff::Backoff;

/// How one run of a service ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// It exited, or was killed for being late, before its ready line.
    FailedStart,
    /// It was ready for this long, then exited.
    Ran(Duration),
}

/// What to do after a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after [`Policy::delay`]`(attempt)`; `attempt` counts the restarts since it last ran stably.
    Restart { attempt: u32, failed_starts: u32 },
    /// It failed to start this many times in a row: stop the stack.
    GiveUp { failed_starts: u32 },
}

/// The knobs of the restart policy.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Delays between restarts: 0.5 s doubling to 30 s, with jitter.
    pub backoff: Backoff,
    /// Failed starts in a row that stop the stack: 5.
    pub max_failed_starts: u32,
    /// A run this long (60 s) was a good one: the next crash is restarted as quickly as the first.
    pub stable_after: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            max_failed_starts: 5,
            stable_after: Duration::from_secs(60),
        }
    }
}

impl Policy {
    /// The wait before restart number `attempt` (1 for the first): between half and all of its ceiling.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.backoff.delay(attempt.saturating_sub(1))
    }
}

/// One service's restart history: all the state the policy needs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Restarts {
    /// Exits since the last stable run.
    crashes: u32,
    /// Exits before the ready line since the last ready line.
    failed_starts: u32,
}

impl Restarts {
    /// Records how a run ended and decides what follows.
    pub fn on_exit(&mut self, policy: &Policy, run: Run) -> Decision {
        match run {
            Run::Ran(up) if up >= policy.stable_after => *self = Self::default(),
            Run::Ran(_) => self.failed_starts = 0,
            Run::FailedStart => self.failed_starts = self.failed_starts.saturating_add(1),
        }
        if self.failed_starts >= policy.max_failed_starts {
            return Decision::GiveUp { failed_starts: self.failed_starts };
        }
        self.crashes = self.crashes.saturating_add(1);
        Decision::Restart { attempt: self.crashes, failed_starts: self.failed_starts }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One run in seconds since the stack started: when it became ready (never: `None`) and when it exited.
    fn run(ready_at: Option<f64>, exited_at: f64) -> Run {
        match ready_at {
            Some(r) => Run::Ran(Duration::from_secs_f64(exited_at - r)),
            None => Run::FailedStart,
        }
    }

    /// The longest wait before restart number `attempt`.
    fn ceiling(p: &Policy, attempt: u32) -> Duration {
        p.backoff.ceiling(attempt - 1)
    }

    fn decide(runs: &[Run]) -> Vec<Decision> {
        let policy = Policy::default();
        let mut r = Restarts::default();
        runs.iter().map(|run| r.on_exit(&policy, *run)).collect()
    }

    #[test]
    fn delays_double_from_half_a_second_to_thirty() {
        let p = Policy::default();
        let ceilings: Vec<_> = (1..=9).map(|a| ceiling(&p, a).as_millis()).collect();
        assert_eq!(ceilings, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        for attempt in 1..=9 {
            let d = p.delay(attempt);
            assert!(d >= ceiling(&p, attempt) / 2 && d <= ceiling(&p, attempt), "{attempt}: {d:?}");
        }
    }

    #[test]
    fn five_failed_starts_in_a_row_give_up() {
        let d = decide(&[run(None, 1.0), run(None, 2.0), run(None, 4.0), run(None, 7.0), run(None, 12.0)]);
        assert_eq!(d[3], Decision::Restart { attempt: 4, failed_starts: 4 });
        assert_eq!(d[4], Decision::GiveUp { failed_starts: 5 });
    }

    #[test]
    fn a_ready_line_breaks_a_row_of_failed_starts() {
        let mut runs = vec![run(None, 1.0); 4];
        runs.push(run(Some(10.0), 12.0));
        runs.extend([run(None, 20.0); 4]);
        let d = decide(&runs);
        assert_eq!(d[4], Decision::Restart { attempt: 5, failed_starts: 0 });
        // Crashes since the last stable run keep counting, so the delay keeps growing.
        assert_eq!(d[8], Decision::Restart { attempt: 9, failed_starts: 4 });
    }

    #[test]
    fn crashes_after_running_are_restarted_forever_with_capped_delays() {
        let runs: Vec<_> = (0..50).map(|i| run(Some(f64::from(i) * 40.0), f64::from(i) * 40.0 + 5.0)).collect();
        let d = decide(&runs);
        assert!(d.iter().all(|d| matches!(d, Decision::Restart { failed_starts: 0, .. })), "{d:?}");
        assert_eq!(d[49], Decision::Restart { attempt: 50, failed_starts: 0 });
        assert_eq!(ceiling(&Policy::default(), 50), Duration::from_secs(30));
    }

    #[test]
    fn a_stable_run_resets_the_counts() {
        let mut runs = vec![run(None, 1.0); 3];
        runs.push(run(Some(5.0), 65.0));
        runs.extend([run(None, 70.0); 4]);
        let d = decide(&runs);
        assert_eq!(d[2], Decision::Restart { attempt: 3, failed_starts: 3 });
        assert_eq!(d[3], Decision::Restart { attempt: 1, failed_starts: 0 });
        assert_eq!(d[7], Decision::Restart { attempt: 5, failed_starts: 4 });
        // Just under a minute up is not stable yet.
        assert_eq!(
            decide(&[run(None, 1.0), run(Some(2.0), 61.9)])[1],
            Decision::Restart { attempt: 2, failed_starts: 0 }
        );
    }
}
