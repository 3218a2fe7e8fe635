//! What a starting daemon makes of the state an earlier one left: first the state is made to
//! agree with the maps ([`reconcile`]: the maps are what traffic saw, so they win), then every
//! deployment left open is resumed or explicitly closed ([`recover`]). Pure functions of the
//! saved state and what the datapath shows, so every crash case is tested on the host.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use anyhow::{anyhow, Result};
use switcher_common::ActiveWord;
use tracing::{info, warn};

use super::events::AUTO;
use crate::{
    config::Service,
    deploy::{Phase, Step},
    domain::{ms_after, Color},
    state::{ServiceState, Slot, State},
};

/// Makes `state` describe exactly `services` (the effective config) with the colour and
/// generation the datapath shows (`active`, by service name). A service new to the state
/// trusts the backends its config names. Services gone from the config keep their history
/// but no live state.
pub fn reconcile(
    state: &mut State,
    services: &[Service],
    active: &BTreeMap<String, ActiveWord>,
) -> Result<()> {
    let mut keep: BTreeMap<String, ServiceState> = BTreeMap::new();
    for s in services {
        let word = active
            .get(&s.name)
            .ok_or_else(|| anyhow!("{} is not in the datapath", s.name))?;
        let color = Color::from_index(word.color());
        let mut st = state
            .services
            .remove(&s.name)
            .unwrap_or_else(|| ServiceState {
                active: color,
                generation: word.generation(),
                blue: Slot {
                    members: s.blue.clone(),
                    deployed: false,
                    version: None,
                    trusted: !s.blue.is_empty(),
                },
                green: Slot {
                    members: s.green.clone(),
                    deployed: false,
                    version: None,
                    trusted: !s.green.is_empty(),
                },
                current: None,
            });
        if st.active != color {
            warn!(service = %s.name, state = %st.active, datapath = %color,
                "state and datapath disagree on the active colour; the datapath wins");
            st.active = color;
        }
        st.generation = word.generation();
        st.blue.members = s.blue.clone();
        st.green.members = s.green.clone();
        keep.insert(s.name.clone(), st);
    }
    for (name, st) in std::mem::take(&mut state.services) {
        if let Some(d) = st.current {
            info!(service = %name, "service removed from the config");
            state.archive(d);
        }
    }
    state.services = keep;
    Ok(())
}

/// Resumes or closes the deployments a previous daemon left open, after [`reconcile`]: a
/// validation cannot resume (its measurements are gone) and is aborted; a flip or rollback the
/// maps show but the state missed (a crash between the map write and the save) is recorded; a
/// promoted deployment's watch resumes with what is left of its window. Returns the services
/// whose watch must be restarted.
pub fn recover(
    state: &mut State,
    watch_windows: &BTreeMap<String, Duration>,
    now_ms: u64,
) -> Result<BTreeSet<String>> {
    let mut resume = BTreeSet::new();
    for (name, st) in state.services.iter_mut() {
        let active = st.active;
        let Some(d) = st.current.as_mut() else {
            continue;
        };
        let serving = d.color == active;
        match d.phase {
            Phase::Validating => {
                d.apply(
                    Step::Abort,
                    AUTO,
                    "the daemon restarted during validation; promote again to re-validate",
                    None,
                    now_ms,
                )?;
                warn!(service = %name, deployment = d.id, "interrupted validation marked aborted");
            }
            Phase::Deployed | Phase::Ready if serving => {
                d.apply(
                    Step::Flip { forced: true },
                    AUTO,
                    "the datapath shows this flip; the daemon stopped before recording it",
                    None,
                    now_ms,
                )?;
                let window = watch_windows.get(name).copied().unwrap_or_default();
                d.watch_until_ms = Some(ms_after(now_ms, window));
                resume.insert(name.clone());
            }
            Phase::Promoted | Phase::Stable if !serving => {
                d.apply(
                    Step::Rollback,
                    AUTO,
                    "the datapath shows a rollback; the daemon stopped before recording it",
                    None,
                    now_ms,
                )?;
                let candidate = d.color;
                st.slot_mut(candidate).trusted = false;
            }
            Phase::Promoted => {
                resume.insert(name.clone());
            }
            _ => {}
        }
    }
    state.archive_finished();
    Ok(resume)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, deploy::Deployment};

    const NOW: u64 = 1_000_000;

    fn services() -> Vec<Service> {
        let text = r#"
[daemon]
interfaces = ["lo"]
[[service]]
name = "a"
vip = "198.18.10.10"
port = 514
protocol = "udp"
blue = { backend = "198.18.1.2:514" }
green = { backend = "198.18.2.2:514" }
[[service]]
name = "b"
vip = "198.18.10.11"
port = 514
protocol = "udp"
active = "green"
green = { backend = "198.18.2.3:514" }
"#;
        match Config::parse(text) {
            Ok(c) => c.services,
            Err(e) => panic!("{e:?}"),
        }
    }

    fn words(a: Color, b: Color, generation: u32) -> BTreeMap<String, ActiveWord> {
        [
            ("a".to_string(), ActiveWord::new(a.index(), generation)),
            ("b".to_string(), ActiveWord::new(b.index(), 0)),
        ]
        .into()
    }

    /// State with deployment 1 of `a` (green candidate) in `phase`, blue active in the state.
    fn state_with(phase: Phase) -> State {
        let mut state = State::default();
        reconcile(
            &mut state,
            &services(),
            &words(Color::Blue, Color::Green, 0),
        )
        .expect("ok");
        let mut d = Deployment::new(
            1,
            "a",
            Color::Green,
            vec![crate::config::Member::new(
                "198.18.2.9:514".parse().expect("addr"),
            )],
            None,
            "cli",
            1,
        );
        let steps: &[Step] = match phase {
            Phase::Deployed => &[],
            Phase::Validating => &[Step::StartValidation],
            Phase::Ready => &[Step::StartValidation, Step::ValidationPassed],
            Phase::Promoted => &[
                Step::StartValidation,
                Step::ValidationPassed,
                Step::Flip { forced: false },
            ],
            Phase::Stable => &[
                Step::StartValidation,
                Step::ValidationPassed,
                Step::Flip { forced: false },
                Step::WatchPassed,
            ],
            other => panic!("no path to {other}"),
        };
        for s in steps {
            d.apply(*s, "t", "t", None, 2).expect("step");
        }
        if let Some(st) = state.services.get_mut("a") {
            st.green.trusted = phase != Phase::Deployed && phase != Phase::Validating;
            st.current = Some(d);
        }
        state
    }

    fn windows() -> BTreeMap<String, Duration> {
        [("a".to_string(), Duration::from_secs(30))].into()
    }

    #[test]
    fn reconcile_lets_the_datapath_win_and_trusts_configured_backends() {
        let mut state = State::default();
        reconcile(
            &mut state,
            &services(),
            &words(Color::Green, Color::Green, 7),
        )
        .expect("ok");
        let a = &state.services["a"];
        assert_eq!((a.active, a.generation), (Color::Green, 7));
        assert!(a.blue.trusted && a.green.trusted);
        let b = &state.services["b"];
        assert!(!b.blue.trusted && b.blue.members.is_empty());
        // A later start where the maps show blue again: the state follows the maps.
        reconcile(
            &mut state,
            &services(),
            &words(Color::Blue, Color::Green, 8),
        )
        .expect("ok");
        assert_eq!(state.services["a"].active, Color::Blue);
        assert_eq!(state.services["a"].generation, 8);
        let e = reconcile(&mut state, &services(), &BTreeMap::new()).expect_err("no maps");
        assert!(e.to_string().contains("not in the datapath"), "{e}");
    }

    #[test]
    fn a_service_gone_from_the_config_keeps_its_history_only() {
        let mut state = state_with(Phase::Deployed);
        let only_b: Vec<Service> = services().into_iter().filter(|s| s.name == "b").collect();
        reconcile(&mut state, &only_b, &words(Color::Blue, Color::Green, 0)).expect("ok");
        assert!(!state.services.contains_key("a"));
        assert_eq!(
            state.history["a"].len(),
            1,
            "its open deployment is archived"
        );
    }

    #[test]
    fn an_interrupted_validation_is_aborted_not_resumed() {
        let mut state = state_with(Phase::Validating);
        let resume = recover(&mut state, &windows(), NOW).expect("ok");
        assert!(resume.is_empty());
        assert!(state.services["a"].current.is_none(), "final: archived");
        let d = &state.history["a"][0];
        assert_eq!(d.phase, Phase::Aborted);
        assert_eq!(d.last().map(|t| t.actor.as_str()), Some(AUTO));
    }

    #[test]
    fn a_flip_the_state_missed_is_recorded_and_watched() {
        for phase in [Phase::Deployed, Phase::Ready] {
            let mut state = state_with(phase);
            // The maps show the candidate serving: the daemon died after the flip's write.
            state.services.get_mut("a").expect("a").active = Color::Green;
            let resume = recover(&mut state, &windows(), NOW).expect("ok");
            assert_eq!(resume, BTreeSet::from(["a".to_string()]), "{phase}");
            let d = state.services["a"].current.as_ref().expect("open");
            assert_eq!(d.phase, Phase::Promoted);
            assert_eq!(d.watch_until_ms, Some(NOW + 30_000));
        }
    }

    #[test]
    fn a_rollback_the_state_missed_is_recorded_and_the_candidate_distrusted() {
        for phase in [Phase::Promoted, Phase::Stable] {
            let mut state = state_with(phase);
            // Blue serves in the maps while the deployment says green was promoted.
            let resume = recover(&mut state, &windows(), NOW).expect("ok");
            assert!(resume.is_empty(), "{phase}");
            let a = &state.services["a"];
            assert!(a.current.is_none());
            assert!(
                !a.green.trusted,
                "a rolled-back candidate needs --force again"
            );
            assert_eq!(state.history["a"][0].phase, Phase::RolledBack);
        }
    }

    #[test]
    fn a_promoted_deployment_serving_resumes_its_watch_and_others_stay() {
        let mut state = state_with(Phase::Promoted);
        state.services.get_mut("a").expect("a").active = Color::Green;
        let resume = recover(&mut state, &windows(), NOW).expect("ok");
        assert_eq!(resume, BTreeSet::from(["a".to_string()]));
        assert_eq!(
            state.services["a"].current.as_ref().map(|d| d.phase),
            Some(Phase::Promoted)
        );
        for phase in [Phase::Deployed, Phase::Ready] {
            let mut state = state_with(phase);
            let before = state.clone();
            assert!(recover(&mut state, &windows(), NOW).expect("ok").is_empty());
            assert_eq!(state, before, "nothing to do for {phase}");
        }
    }
}
