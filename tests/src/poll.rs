//! Waiting for a condition with a deadline, instead of sleeping for a guessed time: a fixed
//! sleep races whatever it waits for (a refresh period, a connection, a restart) and fails on
//! a loaded machine, or passes without checking anything on a fast one.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// How often [`until`] checks.
pub const EVERY: Duration = Duration::from_millis(20);

/// Calls `check` every [`EVERY`] until it returns `Ok(Some(v))`, and returns `v`. Fails when
/// `check` fails, or after `timeout` naming `what` ([`until_state`] also names the last state).
pub fn until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    until_state(what, timeout, || {
        Ok(match check()? {
            Some(v) => Ok(v),
            None => Err(String::new()),
        })
    })
}

/// Like [`until`] with a yes/no condition.
pub fn until_true(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    until(what, timeout, || Ok(check()?.then_some(())))
}

/// Like [`until`], where `check` returns `Ok(Err(state))` while the condition does not hold;
/// the last `state` goes into the timeout error.
pub fn until_state<T>(
    what: &str,
    timeout: Duration,
    check: impl FnMut() -> Result<std::result::Result<T, String>>,
) -> Result<T> {
    until_state_every(what, timeout, EVERY, check)
}

/// Like [`until_state`], checking every `every` (for checks that cost something, such as
/// reading a sink's whole output file while the test measures the machine).
pub fn until_state_every<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<std::result::Result<T, String>>,
) -> Result<T> {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        let state = match check()? {
            Ok(v) => return Ok(v),
            Err(state) => state,
        };
        if Instant::now() >= deadline {
            if state.is_empty() {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            bail!("timed out after {timeout:?} waiting for {what}; last: {state}");
        }
        std::thread::sleep(every.min(deadline.saturating_duration_since(Instant::now())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_the_condition_holds_and_times_out_otherwise() {
        let mut n = 0;
        let v = until("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            Ok((n >= 3).then_some(n))
        });
        assert_eq!(v.ok(), Some(3));
        let e = until_state("never", Duration::from_millis(50), || {
            Ok(Err::<(), _>("still no".to_string()))
        })
        .expect_err("times out");
        assert!(e.to_string().contains("never; last: still no"), "{e}");
    }
}
