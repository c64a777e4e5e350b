//! The interval policy of DESIGN.md as pure functions: how long to wait
//! after each kind of outcome, with backoff, full-jitter error backoff,
//! jitter, cron schedules and the server's hints. No clock is read here;
//! callers pass `now` and a random source, so every rule is unit-tested.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use polld_config::{Policy, Schedule};
use rand::Rng;

/// What a poll's outcome means for the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// New content: back to the base interval.
    Changed,
    /// 304 or the same body: stretch the interval by `backoff`.
    Unchanged,
    /// Connect error, timeout, 5xx, 4xx, 410...: exponential backoff with
    /// full jitter, never sooner than an interval watch's healthy wait.
    Failed,
    /// 429/503: wait at least what the server asked, else like an error.
    RateLimited,
    /// An async job still running: the cadence stays as it is; the job's
    /// `Retry-After` is the floor of the next delay.
    Pending,
}

/// The per-watch scheduling state that survives restarts (kept in the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// The current adaptive interval.
    pub interval: Duration,
    /// How many times the interval was stretched since the last change.
    pub backoff_level: u32,
    /// Failed (or rate-limited) polls in a row.
    pub consecutive_errors: u32,
}

impl Cadence {
    /// The cadence of a watch that has never been polled.
    pub fn initial(policy: &Policy) -> Self {
        Cadence {
            interval: policy.interval,
            backoff_level: 0,
            consecutive_errors: 0,
        }
    }
}

/// Delays the server asked for, parsed by the agent (already split by kind
/// so that each gets its own cap).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerDelay {
    /// `Retry-After`, `X-Poll-Interval`, `RateLimit` / `X-RateLimit-Reset`:
    /// explicit requests, capped by `max_retry_after`.
    pub requested: Option<Duration>,
    /// Freshness (`max-age`, `Expires`): the content will not change before
    /// then; capped by `max_interval`.
    pub fresh_for: Option<Duration>,
}

/// The next delay and cadence after an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// How long to wait before the next poll.
    pub delay: Duration,
    /// The cadence to store.
    pub cadence: Cadence,
    /// Which rule set the delay (for logs and `polld await --verbose`).
    pub reason: &'static str,
    /// The server's own floor (capped, without jitter), also when the
    /// policy's delay was longer: nothing may bring the next poll before it.
    pub server_floor: Option<Duration>,
}

/// Decides the delay before the next poll after `verdict`.
///
/// The policy's own delay gets `jitter`; a server-requested delay is a floor
/// that jitter and backoff only add to, never shorten.
pub fn decide(
    policy: &Policy,
    schedule: &Schedule,
    cadence: Cadence,
    verdict: Verdict,
    server: ServerDelay,
    now: SystemTime,
    rng: &mut impl Rng,
) -> Decision {
    let mut next = cadence;
    let (own, reason) = match verdict {
        Verdict::Changed => {
            next.interval = policy.interval;
            next.backoff_level = 0;
            next.consecutive_errors = 0;
            (
                scheduled(policy, schedule, next.interval, now, rng),
                "interval",
            )
        }
        Verdict::Unchanged => {
            next.consecutive_errors = 0;
            if cadence.interval < policy.max_interval {
                next.backoff_level = cadence.backoff_level.saturating_add(1);
            }
            next.interval = stretch(cadence.interval, policy.backoff, policy.max_interval);
            (
                scheduled(policy, schedule, next.interval, now, rng),
                "backoff",
            )
        }
        Verdict::Pending => {
            next.consecutive_errors = 0;
            (
                scheduled(policy, schedule, next.interval, now, rng),
                "job pending",
            )
        }
        Verdict::Failed | Verdict::RateLimited => {
            next.consecutive_errors = cadence.consecutive_errors.saturating_add(1);
            let backoff = error_backoff(policy, next.consecutive_errors, rng);
            // An interval watch waits at least what a healthy poll would
            // (its cadence, jittered as usual): full jitter alone would poll
            // a failing server more often than a healthy one, down to
            // `min_interval`. A cron watch keeps the plain backoff: its
            // cadence interval is not what it waits between fires.
            let delay = match schedule {
                Schedule::Interval => backoff.max(jittered(cadence.interval, policy.jitter, rng)),
                Schedule::Cron { .. } => backoff,
            };
            (delay, "error backoff")
        }
    };
    let own = own.max(policy.min_interval);

    let requested = server.requested.map(|d| d.min(policy.max_retry_after));
    let fresh = server.fresh_for.map(|d| d.min(policy.max_interval));
    let (floor, floor_reason) = match (requested, fresh) {
        (Some(r), Some(f)) if f > r => (Some(f), "freshness"),
        (Some(r), _) => (Some(r), "server-requested delay"),
        (None, Some(f)) => (Some(f), "freshness"),
        (None, None) => (None, ""),
    };
    match floor {
        Some(floor) if floor > own => Decision {
            // Jitter only ever adds to what the server asked for.
            delay: floor + floor.mul_f64(policy.jitter * rng.random::<f64>()),
            cadence: next,
            reason: floor_reason,
            server_floor: Some(floor),
        },
        _ => Decision {
            delay: own,
            cadence: next,
            reason,
            server_floor: floor,
        },
    }
}

/// `interval * backoff`, at most `max`.
fn stretch(interval: Duration, backoff: f64, max: Duration) -> Duration {
    let secs = interval.as_secs_f64() * backoff;
    if !secs.is_finite() || secs >= max.as_secs_f64() {
        max
    } else {
        Duration::from_secs_f64(secs)
    }
}

/// The delay of the schedule itself: the (jittered) interval, or the time
/// until the next cron fire (jittered only forward, by at most `jitter` of
/// the gap, so that cron watches still fire at or after their time).
fn scheduled(
    policy: &Policy,
    schedule: &Schedule,
    interval: Duration,
    now: SystemTime,
    rng: &mut impl Rng,
) -> Duration {
    match schedule {
        Schedule::Interval => jittered(interval, policy.jitter, rng),
        Schedule::Cron { schedule, .. } => {
            let gap = until_next_fire(schedule, now).unwrap_or(policy.max_interval);
            gap + cron_jitter_cap(policy, gap).mul_f64(rng.random::<f64>())
        }
    }
}

/// The most a cron fire `gap` ahead is delayed by jitter: `jitter` of the
/// gap, at most a minute.
fn cron_jitter_cap(policy: &Policy, gap: Duration) -> Duration {
    gap.mul_f64(policy.jitter).min(Duration::from_secs(60))
}

/// `delay` moved by a uniform factor in `[1 - jitter, 1 + jitter]`.
pub fn jittered(delay: Duration, jitter: f64, rng: &mut impl Rng) -> Duration {
    if jitter <= 0.0 {
        return delay;
    }
    let factor = 1.0 + jitter * (2.0 * rng.random::<f64>() - 1.0);
    delay.mul_f64(factor)
}

/// Exponential backoff with full jitter: uniform in `[0, min(max_interval,
/// interval * 2^errors)]` (the caller floors it at the jittered current
/// interval of an interval watch).
fn error_backoff(policy: &Policy, errors: u32, rng: &mut impl Rng) -> Duration {
    let factor = 2f64.powi(errors.min(62) as i32);
    let cap = stretch(policy.interval, factor, policy.max_interval);
    cap.mul_f64(rng.random::<f64>())
}

/// Time from `now` to the next fire of a cron schedule.
pub fn until_next_fire(schedule: &cron::Schedule, now: SystemTime) -> Option<Duration> {
    let now: DateTime<Utc> = now.into();
    let next = schedule.after(&now).next()?;
    (next - now).to_std().ok()
}

/// The first delay of a watch: spread uniformly over its first interval (or
/// until its first cron fire), so that a new list does not start as a herd.
pub fn first_delay(
    policy: &Policy,
    schedule: &Schedule,
    now: SystemTime,
    rng: &mut impl Rng,
) -> Duration {
    match schedule {
        Schedule::Interval => policy.interval.mul_f64(rng.random::<f64>()),
        Schedule::Cron { schedule, .. } => {
            until_next_fire(schedule, now).unwrap_or(policy.max_interval)
        }
    }
}

/// The delay of a watch after a restart: its stored due time if it is still
/// ahead, else (it is late) a uniform spread over `min(interval, window)`.
pub fn resume_delay(
    policy: &Policy,
    schedule: &Schedule,
    due: SystemTime,
    now: SystemTime,
    window: Duration,
    rng: &mut impl Rng,
) -> Duration {
    // The longest delay a decision can make: a server's delay up to
    // `max_retry_after`, or the policy's up to `max_interval`, plus jitter
    // on top; for a cron watch also its next fire (a daily one is further
    // than `max_interval`), plus its forward jitter. A stored due time
    // beyond that is from an older, looser list.
    let mut longest = policy
        .max_interval
        .max(policy.max_retry_after)
        .mul_f64(1.0 + policy.jitter);
    if let Schedule::Cron { schedule, .. } = schedule
        && let Some(gap) = until_next_fire(schedule, now)
    {
        longest = longest.max(gap + cron_jitter_cap(policy, gap));
    }
    match due.duration_since(now) {
        Ok(ahead) => ahead.min(longest),
        Err(_) => policy.interval.min(window).mul_f64(rng.random::<f64>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::str::FromStr;

    fn policy() -> Policy {
        Policy {
            interval: Duration::from_secs(60),
            min_interval: Duration::from_secs(30),
            max_interval: Duration::from_secs(600),
            backoff: 2.0,
            jitter: 0.1,
            ..Policy::default()
        }
    }

    fn run(cadence: Cadence, verdict: Verdict, server: ServerDelay, rng: &mut StdRng) -> Decision {
        decide(
            &policy(),
            &Schedule::Interval,
            cadence,
            verdict,
            server,
            SystemTime::UNIX_EPOCH,
            rng,
        )
    }

    #[test]
    fn unchanged_polls_back_off_to_max_and_a_change_resets() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut cadence = Cadence::initial(&policy());
        let mut intervals = Vec::new();
        for _ in 0..6 {
            let d = run(
                cadence,
                Verdict::Unchanged,
                ServerDelay::default(),
                &mut rng,
            );
            cadence = d.cadence;
            intervals.push(cadence.interval.as_secs());
            let (lo, hi) = (cadence.interval.mul_f64(0.9), cadence.interval.mul_f64(1.1));
            assert!(
                d.delay >= lo && d.delay <= hi,
                "{:?} within jitter of {:?}",
                d.delay,
                cadence.interval
            );
        }
        assert_eq!(intervals, [120, 240, 480, 600, 600, 600]);
        assert_eq!(cadence.backoff_level, 4);
        let d = run(cadence, Verdict::Changed, ServerDelay::default(), &mut rng);
        assert_eq!(d.cadence, Cadence::initial(&policy()));
    }

    #[test]
    fn errors_back_off_with_full_jitter_and_reset_on_success() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut cadence = Cadence::initial(&policy());
        let mut max_seen = Duration::ZERO;
        for n in 1..=8u32 {
            let d = run(cadence, Verdict::Failed, ServerDelay::default(), &mut rng);
            cadence = d.cadence;
            assert_eq!(cadence.consecutive_errors, n);
            let cap = Duration::from_secs((60 * 2u64.pow(n)).min(600));
            // Never sooner than the healthy wait (60 s ± 10 %), though
            // min_interval is 30 s.
            assert!(
                d.delay >= Duration::from_secs(54) && d.delay <= cap,
                "{n}: {:?}",
                d.delay
            );
            max_seen = max_seen.max(d.delay);
        }
        // A watch backed off to 10 min is not polled sooner for failing
        // than its healthy wait (10 min less the policy's 10 % jitter at
        // most), and the waits stay spread: watches of one failing host do
        // not retry in lockstep.
        let backed_off = Cadence {
            interval: Duration::from_secs(600),
            backoff_level: 5,
            consecutive_errors: 0,
        };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let d = run(
                backed_off,
                Verdict::Failed,
                ServerDelay::default(),
                &mut rng,
            );
            assert!(d.delay >= Duration::from_secs(540), "{:?}", d.delay);
            seen.insert(d.delay);
        }
        assert!(seen.len() > 40, "spread, not one instant: {seen:?}");
        assert!(
            max_seen > Duration::from_secs(120),
            "full jitter reaches the upper range"
        );
        let d = run(
            cadence,
            Verdict::Unchanged,
            ServerDelay::default(),
            &mut rng,
        );
        assert_eq!(d.cadence.consecutive_errors, 0);
    }

    #[test]
    fn jitter_stays_within_bounds_and_is_spread() {
        let mut rng = StdRng::seed_from_u64(3);
        let delays: Vec<Duration> = (0..1000)
            .map(|_| jittered(Duration::from_secs(100), 0.1, &mut rng))
            .collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_secs(90) && *d <= Duration::from_secs(110))
        );
        assert!(delays.iter().any(|d| *d < Duration::from_secs(92)));
        assert!(delays.iter().any(|d| *d > Duration::from_secs(108)));
    }

    #[test]
    fn server_delay_is_a_floor_that_jitter_only_extends() {
        let mut rng = StdRng::seed_from_u64(4);
        for _ in 0..200 {
            let server = ServerDelay {
                requested: Some(Duration::from_secs(300)),
                fresh_for: None,
            };
            let d = run(
                Cadence::initial(&policy()),
                Verdict::RateLimited,
                server,
                &mut rng,
            );
            assert!(
                d.delay >= Duration::from_secs(300) && d.delay <= Duration::from_secs(330),
                "{:?}",
                d.delay
            );
            assert_eq!(d.reason, "server-requested delay");
        }
        // Capped by max_retry_after (6h default here is above; use a small cap).
        let mut capped = policy();
        capped.max_retry_after = Duration::from_secs(100);
        let server = ServerDelay {
            requested: Some(Duration::from_secs(99_999)),
            fresh_for: None,
        };
        let d = decide(
            &capped,
            &Schedule::Interval,
            Cadence::initial(&capped),
            Verdict::RateLimited,
            server,
            SystemTime::UNIX_EPOCH,
            &mut rng,
        );
        // The server's floor is capped at 100 s; the delay is at most that
        // plus its jitter, or the policy's own backoff after one error
        // (up to 120 s), whichever is longer.
        assert_eq!(d.server_floor, Some(Duration::from_secs(100)));
        assert!(d.delay <= Duration::from_secs(120), "{:?}", d.delay);
        // A short server delay does not shorten the policy's own delay.
        let server = ServerDelay {
            requested: Some(Duration::from_secs(1)),
            fresh_for: None,
        };
        let d = run(
            Cadence::initial(&policy()),
            Verdict::Unchanged,
            server,
            &mut rng,
        );
        assert!(d.delay >= Duration::from_secs(108));
        // Freshness is capped by max_interval.
        let server = ServerDelay {
            requested: None,
            fresh_for: Some(Duration::from_secs(86_400)),
        };
        let d = run(
            Cadence::initial(&policy()),
            Verdict::Unchanged,
            server,
            &mut rng,
        );
        assert!(d.delay >= Duration::from_secs(600) && d.delay <= Duration::from_secs(660));
    }

    #[test]
    fn every_verdict_waits_at_least_the_request_and_at_most_its_cap() {
        let mut rng = StdRng::seed_from_u64(8);
        let mut p = policy();
        p.max_retry_after = Duration::from_secs(3600);
        let verdicts = [
            Verdict::Changed,
            Verdict::Unchanged,
            Verdict::Pending,
            Verdict::Failed,
            Verdict::RateLimited,
        ];
        for verdict in verdicts {
            for (requested, fresh_for, lo, hi) in [
                // Beyond every cap (a saturated header): capped, no overflow.
                (Some(Duration::MAX), None, 3600, 3960),
                (None, Some(Duration::MAX), 600, 660),
                (Some(Duration::MAX), Some(Duration::MAX), 3600, 3960),
                // Within the caps: never sooner than asked.
                (Some(Duration::from_secs(900)), None, 900, 990),
                (
                    Some(Duration::from_secs(900)),
                    Some(Duration::from_secs(300)),
                    900,
                    990,
                ),
                // Zero asks for nothing: the policy's own delay.
                (Some(Duration::ZERO), Some(Duration::ZERO), 30, 660),
            ] {
                for _ in 0..50 {
                    let d = decide(
                        &p,
                        &Schedule::Interval,
                        Cadence::initial(&p),
                        verdict,
                        ServerDelay {
                            requested,
                            fresh_for,
                        },
                        SystemTime::UNIX_EPOCH,
                        &mut rng,
                    );
                    assert!(
                        d.delay >= Duration::from_secs(lo) && d.delay <= Duration::from_secs(hi),
                        "{verdict:?} {requested:?} {fresh_for:?}: {:?}",
                        d.delay
                    );
                }
            }
        }
    }

    #[test]
    fn never_below_min_interval() {
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..500 {
            let d = run(
                Cadence::initial(&policy()),
                Verdict::Failed,
                ServerDelay::default(),
                &mut rng,
            );
            assert!(d.delay >= Duration::from_secs(30));
        }
    }

    #[test]
    fn cron_waits_for_the_next_fire() {
        let schedule = Schedule::Cron {
            expr: "0 */10 * * * *".into(),
            schedule: Box::new(cron::Schedule::from_str("0 */10 * * * *").unwrap()),
        };
        // 00:03:00 -> next fire 00:10:00.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(180);
        let mut rng = StdRng::seed_from_u64(6);
        let mut p = policy();
        p.min_interval = Duration::from_secs(1);
        for _ in 0..50 {
            let d = decide(
                &p,
                &schedule,
                Cadence::initial(&p),
                Verdict::Unchanged,
                ServerDelay::default(),
                now,
                &mut rng,
            );
            assert!(
                d.delay >= Duration::from_secs(420) && d.delay <= Duration::from_secs(480),
                "{:?}",
                d.delay
            );
        }
        assert_eq!(
            first_delay(&p, &schedule, now, &mut rng),
            Duration::from_secs(420)
        );
        // Unchanged polls stretch a cron watch's cadence interval too (to
        // max_interval, 10 min here), which it does not wait by: one error
        // then backs off from the base interval, as before, not from it.
        let mut p = policy();
        p.max_interval = Duration::from_secs(6 * 3600);
        let stretched = Cadence {
            interval: p.max_interval,
            backoff_level: 20,
            consecutive_errors: 0,
        };
        for _ in 0..50 {
            let d = decide(
                &p,
                &schedule,
                stretched,
                Verdict::Failed,
                ServerDelay::default(),
                now,
                &mut rng,
            );
            assert!(d.delay <= Duration::from_secs(120), "{:?}", d.delay);
        }
    }

    #[test]
    fn daily_cron_fires_are_spread_over_their_jitter_not_stacked_at_its_cap() {
        let daily = Schedule::Cron {
            expr: "0 0 0 * * *".into(),
            schedule: Box::new(cron::Schedule::from_str("0 0 0 * * *").unwrap()),
        };
        // 00:10 UTC: the next fire is 23 h 50 min ahead; 10 % of that is
        // far above the one-minute cap.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(600);
        let gap = Duration::from_secs(86_400 - 600);
        let mut rng = StdRng::seed_from_u64(9);
        let delays: Vec<Duration> = (0..200)
            .map(|_| {
                decide(
                    &policy(),
                    &daily,
                    Cadence::initial(&policy()),
                    Verdict::Unchanged,
                    ServerDelay::default(),
                    now,
                    &mut rng,
                )
                .delay
            })
            .collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= gap && *d <= gap + Duration::from_secs(60))
        );
        let at_cap = delays
            .iter()
            .filter(|d| **d == gap + Duration::from_secs(60))
            .count();
        assert!(at_cap < 10, "{at_cap} of 200 fires stacked at the cap");
        assert!(delays.iter().any(|d| *d < gap + Duration::from_secs(30)));
        // A restart keeps its stored due time, the fire, though it is
        // beyond max_interval (10 min here).
        let due = now + gap + Duration::from_secs(30);
        assert_eq!(
            resume_delay(
                &policy(),
                &daily,
                due,
                now,
                Duration::from_secs(20),
                &mut rng
            ),
            gap + Duration::from_secs(30)
        );
    }

    #[test]
    fn first_start_spreads_and_restart_resumes() {
        let mut rng = StdRng::seed_from_u64(7);
        let p = policy();
        let firsts: Vec<Duration> = (0..1000)
            .map(|_| first_delay(&p, &Schedule::Interval, SystemTime::UNIX_EPOCH, &mut rng))
            .collect();
        assert!(firsts.iter().all(|d| *d <= p.interval));
        assert!(
            firsts
                .iter()
                .filter(|d| **d < Duration::from_secs(30))
                .count()
                > 300
        );
        assert!(
            firsts
                .iter()
                .filter(|d| **d >= Duration::from_secs(30))
                .count()
                > 300
        );

        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let ahead = now + Duration::from_secs(45);
        assert_eq!(
            resume_delay(
                &p,
                &Schedule::Interval,
                ahead,
                now,
                Duration::from_secs(20),
                &mut rng
            ),
            Duration::from_secs(45)
        );
        // A server's Retry-After beyond max_interval survives a restart
        // (capped by max_retry_after plus jitter, not by max_interval).
        let asked = now + Duration::from_secs(3 * 3600);
        let mut p2 = p.clone();
        p2.max_retry_after = Duration::from_secs(6 * 3600);
        assert_eq!(
            resume_delay(
                &p2,
                &Schedule::Interval,
                asked,
                now,
                Duration::from_secs(20),
                &mut rng
            ),
            Duration::from_secs(3 * 3600)
        );
        let absurd = now + Duration::from_secs(100 * 3600);
        assert_eq!(
            resume_delay(
                &p2,
                &Schedule::Interval,
                absurd,
                now,
                Duration::from_secs(20),
                &mut rng
            ),
            Duration::from_secs(6 * 3600).mul_f64(1.0 + p2.jitter)
        );
        let late = now - Duration::from_secs(500);
        let spread: Vec<Duration> = (0..200)
            .map(|_| {
                resume_delay(
                    &p,
                    &Schedule::Interval,
                    late,
                    now,
                    Duration::from_secs(20),
                    &mut rng,
                )
            })
            .collect();
        assert!(spread.iter().all(|d| *d < Duration::from_secs(20)));
        assert!(
            spread.iter().any(|d| *d > Duration::from_secs(10)),
            "late watches are spread, not fired at once"
        );
    }
}
