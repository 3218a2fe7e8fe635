//! Exit codes a script can act on (README "Exit codes"): each failure the CLI can tell apart
//! has its own, and under `--json` the error is a JSON object on stdout as well.

use crate::api::ApiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Any other failure.
    Failure,
    /// A command line clap refused (clap exits with it itself).
    Usage,
    /// No daemon at the socket, or no permission to reach it.
    Unreachable,
    /// The daemon refused the request (bad input, wrong state, invalid config).
    Refused,
    /// `promote --wait`: the candidate was rejected by its validation (or aborted).
    Rejected,
    /// `promote --wait`: the watch after the flip rolled it back.
    RolledBack,
    /// No answer in time.
    Timeout,
}

impl Exit {
    pub const fn code(self) -> u8 {
        match self {
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::Unreachable => 3,
            Exit::Refused => 4,
            Exit::Rejected => 5,
            Exit::RolledBack => 6,
            Exit::Timeout => 7,
        }
    }

    /// The name under `--json`.
    pub const fn kind(self) -> &'static str {
        match self {
            Exit::Failure => "failure",
            Exit::Usage => "usage",
            Exit::Unreachable => "unreachable",
            Exit::Refused => "refused",
            Exit::Rejected => "rejected",
            Exit::RolledBack => "rolled_back",
            Exit::Timeout => "timeout",
        }
    }
}

/// What a command the daemon accepted ended in, when a script must not take it for success.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Outcome {
    pub exit: Exit,
    pub message: String,
}

/// The exit code an error calls for.
pub fn classify(e: &anyhow::Error) -> Exit {
    if let Some(o) = e.downcast_ref::<Outcome>() {
        return o.exit;
    }
    match e.downcast_ref::<ApiError>() {
        Some(ApiError::Unreachable(_)) => Exit::Unreachable,
        Some(ApiError::Refused(_)) => Exit::Refused,
        Some(ApiError::Timeout(_)) => Exit::Timeout,
        None => Exit::Failure,
    }
}

/// The error as `--json` prints it.
pub fn json(e: &anyhow::Error) -> serde_json::Value {
    let exit = classify(e);
    serde_json::json!({ "error": format!("{e:#}"), "exit": exit.code(), "kind": exit.kind() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn each_failure_has_its_code_through_context() {
        let refused: anyhow::Error = ApiError::Refused("no deployment".into()).into();
        let refused = Err::<(), _>(refused)
            .context("aborting")
            .expect_err("an error");
        assert_eq!(classify(&refused), Exit::Refused);
        let gone: anyhow::Error = ApiError::Unreachable("no socket".into()).into();
        assert_eq!(classify(&gone), Exit::Unreachable);
        let slow: anyhow::Error = ApiError::Timeout(std::time::Duration::from_secs(1)).into();
        assert_eq!(classify(&slow), Exit::Timeout);
        let back: anyhow::Error = Outcome {
            exit: Exit::RolledBack,
            message: "rolled back".into(),
        }
        .into();
        assert_eq!(classify(&back), Exit::RolledBack);
        assert_eq!(classify(&anyhow::anyhow!("anything else")), Exit::Failure);
        let j = json(&refused);
        assert_eq!(
            (j["exit"].as_u64(), j["kind"].as_str()),
            (Some(4), Some("refused"))
        );
        assert!(j["error"].as_str().unwrap_or("").contains("no deployment"));
        // Every code is distinct.
        let all = [
            Exit::Failure,
            Exit::Usage,
            Exit::Unreachable,
            Exit::Refused,
            Exit::Rejected,
            Exit::RolledBack,
            Exit::Timeout,
        ];
        let mut codes: Vec<u8> = all.iter().map(|e| e.code()).collect();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }
}
