//! Automatic degradation: the decision a tenant's [`AutoRule`] takes at each look at its
//! watched calls. Pure (figures and time in, action out), so it is tested without a clock.

use std::time::{Duration, Instant};

use crate::{config::AutoRule, front_door::WindowStats};

/// Where a rule stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleState {
    /// The rule has its switch off.
    pub active: bool,
    /// Since when the watched calls are under the thresholds again (while active).
    pub calm_since: Option<Instant>,
}

/// What a rule asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum RuleAction {
    /// Switch the rule's tiers off, for this reason.
    TurnOff(String),
    /// Calm long enough: switch them back on.
    TurnOn,
    /// Nothing to change.
    Nothing,
}

/// Why `stats` trip `rule`, if they do.
pub fn trips(rule: &AutoRule, stats: &WindowStats) -> Option<String> {
    if stats.calls < rule.min_calls.max(1) {
        return None;
    }
    let watched = format!(
        "tier<={} calls over {} s ({} calls)",
        rule.watch_tier, rule.window_secs, stats.calls
    );
    if let Some(limit) = rule.p99_ms_above
        && stats.p99 > Duration::from_millis(limit.into())
    {
        return Some(format!(
            "p99 {} ms of {watched} > {limit} ms",
            stats.p99.as_millis()
        ));
    }
    if let Some(limit) = rule.error_rate_above
        && stats.error_rate > limit
    {
        return Some(format!(
            "error rate {:.1}% of {watched} > {:.1}%",
            stats.error_rate * 100.0,
            limit * 100.0
        ));
    }
    None
}

/// One look at the rule's watched calls.
pub fn step(
    rule: &AutoRule,
    stats: &WindowStats,
    state: &mut RuleState,
    now: Instant,
) -> RuleAction {
    let tripped = trips(rule, stats);
    if !state.active {
        return match tripped {
            Some(reason) => {
                *state = RuleState {
                    active: true,
                    calm_since: None,
                };
                RuleAction::TurnOff(reason)
            }
            None => RuleAction::Nothing,
        };
    }
    if tripped.is_some() {
        state.calm_since = None;
        return RuleAction::Nothing;
    }
    let calm_since = *state.calm_since.get_or_insert(now);
    if now.duration_since(calm_since) >= Duration::from_secs(rule.calm_secs.into()) {
        *state = RuleState::default();
        RuleAction::TurnOn
    } else {
        RuleAction::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> AutoRule {
        AutoRule {
            name: "protect-core".into(),
            watch_tier: 1,
            p99_ms_above: Some(200),
            error_rate_above: Some(0.1),
            switch_off_tiers_from: 2,
            window_secs: 5,
            calm_secs: 10,
            min_calls: 20,
        }
    }

    fn stats(calls: u32, p99_ms: u64, error_rate: f64) -> WindowStats {
        WindowStats {
            calls,
            p99: Duration::from_millis(p99_ms),
            error_rate,
        }
    }

    #[test]
    fn slow_or_failing_calls_trip_the_rule_but_too_few_calls_never_do() {
        let rule = rule();
        assert_eq!(trips(&rule, &stats(19, 5_000, 1.0)), None, "19 < min_calls");
        assert_eq!(trips(&rule, &stats(100, 200, 0.1)), None, "at the limits");
        let slow = trips(&rule, &stats(100, 350, 0.0)).unwrap();
        assert!(
            slow.contains("p99 350 ms") && slow.contains("> 200 ms"),
            "{slow}"
        );
        let failing = trips(&rule, &stats(100, 10, 0.25)).unwrap();
        assert!(failing.contains("error rate 25.0%"), "{failing}");
    }

    #[test]
    fn a_tripped_rule_restores_only_after_an_unbroken_calm() {
        let rule = rule();
        let mut state = RuleState::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let (bad, good) = (stats(50, 900, 0.0), stats(50, 20, 0.0));

        assert!(matches!(
            step(&rule, &bad, &mut state, at(0)),
            RuleAction::TurnOff(_)
        ));
        assert_eq!(
            step(&rule, &bad, &mut state, at(1)),
            RuleAction::Nothing,
            "already off"
        );
        assert_eq!(
            step(&rule, &good, &mut state, at(2)),
            RuleAction::Nothing,
            "calm starts"
        );
        assert_eq!(
            step(&rule, &bad, &mut state, at(8)),
            RuleAction::Nothing,
            "relapse"
        );
        assert_eq!(
            step(&rule, &good, &mut state, at(9)),
            RuleAction::Nothing,
            "calm restarts"
        );
        assert_eq!(
            step(&rule, &good, &mut state, at(18)),
            RuleAction::Nothing,
            "9 s calm"
        );
        assert_eq!(
            step(&rule, &good, &mut state, at(19)),
            RuleAction::TurnOn,
            "10 s calm"
        );
        assert_eq!(state, RuleState::default());
        assert_eq!(step(&rule, &good, &mut state, at(20)), RuleAction::Nothing);
    }
}
