//! Rules over video metadata and sensor state ("person track in zone while door = open for
//! more than 5 s", "moderation alert while speed > 0"). Each rule fires once per episode:
//! when its condition has held continuously for `for_s`, then again only after it stopped
//! holding. Conditions are evaluated on every frame a stream delivers, with the sensor
//! state at that frame's time.

use std::collections::HashMap;

use aegis_config::{Comparison, Condition, RuleConfig};

/// An object visible in a frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seen<'a> {
    /// Its label.
    pub label: &'a str,
    /// Bottom centre of its box, as image fractions (0 to 1).
    pub foot: (f64, f64),
}

/// What a frame and the sensors say at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The stream.
    pub stream: &'a str,
    /// Tracked objects in the frame.
    pub objects: &'a [Seen<'a>],
    /// The frame carries a moderation verdict.
    pub moderation: bool,
    /// IoT sensor values by name (latest).
    pub sensors: &'a HashMap<String, f64>,
    /// Fused speed, m/s (None: no fix yet).
    pub speed: Option<f64>,
}

/// A rule that fired.
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    /// The rule's name.
    pub rule: String,
    /// Seconds its condition had held.
    pub held_s: f64,
}

fn compare(c: &Comparison, v: f64) -> bool {
    c.eq.is_none_or(|x| (v - x).abs() < 1e-9)
        && c.gt.is_none_or(|x| v > x)
        && c.lt.is_none_or(|x| v < x)
        && c.ge.is_none_or(|x| v >= x)
        && c.le.is_none_or(|x| v <= x)
}

/// Point in polygon (even-odd rule).
pub fn inside(p: (f64, f64), poly: &[[f64; 2]]) -> bool {
    let mut c = false;
    let n = poly.len();
    for i in 0..n {
        let (a, b) = (poly[i], poly[(i + n - 1) % n]);
        if (a[1] > p.1) != (b[1] > p.1) && p.0 < (b[0] - a[0]) * (p.1 - a[1]) / (b[1] - a[1]) + a[0]
        {
            c = !c;
        }
    }
    c
}

/// Whether `c` holds for `f`. A sensor that has not reported yet makes its comparison
/// false (unknown is not "open").
pub fn holds(c: &Condition, f: &Facts<'_>) -> bool {
    match c {
        Condition::All(v) => v.iter().all(|c| holds(c, f)),
        Condition::Any(v) => v.iter().any(|c| holds(c, f)),
        Condition::Not(c) => !holds(c, f),
        Condition::Track(t) => {
            t.stream.as_deref().is_none_or(|s| s == f.stream)
                && f.objects.iter().any(|o| {
                    o.label == t.label && t.zone.as_deref().is_none_or(|z| inside(o.foot, z))
                })
        }
        Condition::Moderation(m) => {
            m.stream.as_deref().is_none_or(|s| s == f.stream) && f.moderation
        }
        Condition::Sensor(s) => f
            .sensors
            .get(&s.name)
            .is_some_and(|v| compare(&s.compare, *v)),
        Condition::Speed(c) => f.speed.is_some_and(|v| compare(c, v)),
    }
}

/// The rules of one stream, with their episode state.
#[derive(Debug, Clone)]
pub struct RuleEngine {
    rules: Vec<RuleConfig>,
    since: Vec<Option<f64>>,
    fired: Vec<bool>,
}

impl RuleEngine {
    /// The engine over `rules` (validated by the config).
    pub fn new(rules: Vec<RuleConfig>) -> RuleEngine {
        let n = rules.len();
        RuleEngine {
            rules,
            since: vec![None; n],
            fired: vec![false; n],
        }
    }

    /// True when there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Evaluates every rule at time `t` (seconds); returns those that fire now.
    pub fn evaluate(&mut self, t: f64, f: &Facts<'_>) -> Vec<Fired> {
        let mut out = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            if holds(&r.when, f) {
                let start = *self.since[i].get_or_insert(t);
                if !self.fired[i] && t - start >= r.for_s {
                    self.fired[i] = true;
                    out.push(Fired {
                        rule: r.name.clone(),
                        held_s: t - start,
                    });
                }
            } else {
                self.since[i] = None;
                self.fired[i] = false;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aegis_config::{ModerationCondition, SensorCondition, TrackCondition};

    fn door(eq: f64) -> Condition {
        Condition::Sensor(SensorCondition {
            name: "door".into(),
            compare: Comparison {
                eq: Some(eq),
                ..Default::default()
            },
        })
    }

    fn person_in_left_half() -> Condition {
        Condition::Track(TrackCondition {
            label: "person".into(),
            zone: Some(vec![[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]),
            stream: None,
        })
    }

    #[test]
    fn truth_table_of_person_in_zone_while_door_open() {
        let rule = Condition::All(vec![person_in_left_half(), door(1.0)]);
        let left = [Seen {
            label: "person",
            foot: (0.2, 0.9),
        }];
        let right = [Seen {
            label: "person",
            foot: (0.8, 0.9),
        }];
        let car = [Seen {
            label: "car",
            foot: (0.2, 0.9),
        }];
        // (objects, door value, expected)
        let cases: [(&[Seen<'_>], Option<f64>, bool); 7] = [
            (&left, Some(1.0), true),
            (&left, Some(0.0), false),
            (&left, None, false),
            (&right, Some(1.0), false),
            (&car, Some(1.0), false),
            (&[], Some(1.0), false),
            (&[], None, false),
        ];
        for (objects, d, want) in cases {
            let mut sensors = HashMap::new();
            if let Some(v) = d {
                sensors.insert("door".to_string(), v);
            }
            let f = Facts {
                stream: "cam0",
                objects,
                moderation: false,
                sensors: &sensors,
                speed: None,
            };
            assert_eq!(holds(&rule, &f), want, "{objects:?} door {d:?}");
        }
    }

    #[test]
    fn truth_table_of_moderation_while_moving_and_the_combinators() {
        let moving = Condition::Speed(Comparison {
            gt: Some(0.0),
            ..Default::default()
        });
        let rule = Condition::All(vec![
            Condition::Moderation(ModerationCondition::default()),
            moving.clone(),
        ]);
        let sensors = HashMap::new();
        for (moderation, speed, want) in [
            (true, Some(3.0), true),
            (true, Some(0.0), false),
            (true, None, false),
            (false, Some(3.0), false),
        ] {
            let f = Facts {
                stream: "cam0",
                objects: &[],
                moderation,
                sensors: &sensors,
                speed,
            };
            assert_eq!(holds(&rule, &f), want, "{moderation} {speed:?}");
            assert_eq!(holds(&Condition::Not(Box::new(rule.clone())), &f), !want);
            assert_eq!(
                holds(
                    &Condition::Any(vec![
                        Condition::Moderation(ModerationCondition::default()),
                        moving.clone()
                    ]),
                    &f
                ),
                moderation || speed.is_some_and(|s| s > 0.0)
            );
        }
        // Stream filters.
        let only_cam1 = Condition::Moderation(ModerationCondition {
            stream: Some("cam1".into()),
        });
        let f = Facts {
            stream: "cam0",
            objects: &[],
            moderation: true,
            sensors: &sensors,
            speed: None,
        };
        assert!(!holds(&only_cam1, &f));
    }

    #[test]
    fn a_rule_fires_once_after_holding_for_its_duration_and_rearms() {
        let mut e = RuleEngine::new(vec![RuleConfig {
            name: "door_open_long".into(),
            when: door(1.0),
            for_s: 5.0,
        }]);
        let mut sensors = HashMap::from([("door".to_string(), 1.0)]);
        let mut fired = Vec::new();
        let mut t = 0.0;
        while t <= 12.0 {
            if (8.0..9.0).contains(&t) {
                sensors.insert("door".into(), 0.0);
            } else {
                sensors.insert("door".into(), 1.0);
            }
            let f = Facts {
                stream: "cam0",
                objects: &[],
                moderation: false,
                sensors: &sensors,
                speed: None,
            };
            for x in e.evaluate(t, &f) {
                fired.push((t, x.held_s));
            }
            t += 0.5;
        }
        // Open 0–8 s: fires at 5 s; closed 8–9 s: re-arms; open from 9 s: fires at 14 s
        // (beyond the run), so exactly one firing.
        assert_eq!(fired, vec![(5.0, 5.0)]);
    }

    #[test]
    fn zone_edges_and_concave_polygons() {
        let l_shape = [
            [0.0, 0.0],
            [1.0, 0.0],
            [1.0, 0.2],
            [0.2, 0.2],
            [0.2, 1.0],
            [0.0, 1.0],
        ];
        assert!(inside((0.1, 0.9), &l_shape));
        assert!(inside((0.9, 0.1), &l_shape));
        assert!(!inside((0.6, 0.6), &l_shape));
        assert!(!inside((1.5, 0.1), &l_shape));
    }
}
