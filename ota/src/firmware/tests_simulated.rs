//! The simulated board's state machine, step by step and with power lost before every
//! write of an update and of the boots after it; then the agent's whole protocol
//! ([`FirmwareState`] plus the board) with power lost before every write of either, twice.

use std::path::{Path, PathBuf};

use super::*;
use crate::firmware::VerifiedOrder;
use crate::firmware::state::{FirmwareState, Resume};
use crate::receipt::Verdict;

const V1: &str = "1.3.2";
const V2: &str = "1.4.0";
const V3: &str = "1.5.0";
const MAX: u32 = 3;

/// Image files the board's updater accepts (and one it does not).
struct Images {
    _dir: tempfile::TempDir,
    v2: PathBuf,
    v3: PathBuf,
    unsigned: PathBuf,
    sign: Vec<(String, String)>,
}

fn images() -> Images {
    let dir = tempfile::tempdir().unwrap();
    let mut sign = Vec::new();
    let mut file = |name: &str, version: Option<&str>| {
        let p = dir.path().join(name);
        let body = format!("rootfs of {name}\n").repeat(64);
        std::fs::write(&p, &body).unwrap();
        if let Some(v) = version {
            sign.push((crate::sha256_hex(body.as_bytes()), v.to_string()));
        }
        p
    };
    let v2 = file("v2.swu", Some(V2));
    let v3 = file("v3.swu", Some(V3));
    let unsigned = file("unsigned.swu", None);
    Images {
        _dir: dir,
        v2,
        v3,
        unsigned,
        sign,
    }
}

/// A flashed board running V1 on slot A, confirmed.
fn board(img: &Images) -> SimulatedBoard {
    let mut b = SimulatedBoard::flashed(V1, MAX);
    for (sha, v) in &img.sign {
        b.sign(sha, v);
    }
    assert_eq!(b.power_on().unwrap(), Boot::Slot(Slot::A));
    b.mark_good().unwrap();
    b
}

fn slot_boots(b: &SimulatedBoard, s: Slot) -> usize {
    b.boots().iter().filter(|x| **x == Boot::Slot(s)).count()
}

#[test]
fn a_good_update_boots_the_new_slot_on_trial_and_mark_good_keeps_it() {
    let img = images();
    let mut b = board(&img);
    let slot = b.install(&img.v2).unwrap();
    assert_eq!(slot, Slot::B);
    // Installing changes nothing about what boots.
    let s = b.state().unwrap();
    assert_eq!((s.current, s.next), (Slot::A, Slot::A));
    assert!(!s.unconfirmed());
    b.switch(slot).unwrap();
    assert_eq!(b.state().unwrap().next, Slot::B);
    assert_eq!(b.reboot().unwrap(), Boot::Slot(Slot::B));
    assert_eq!(b.running_version().as_deref(), Some(V2));
    let s = b.state().unwrap();
    assert!(s.unconfirmed());
    assert_eq!(s.slot(Slot::B).attempts_left, MAX - 1);
    b.mark_good().unwrap();
    assert!(!b.state().unwrap().unconfirmed());
    // Confirmed on every boot, it stays, over warm and cold boots.
    for i in 0..6 {
        let boot = if i % 2 == 0 {
            b.reboot().unwrap()
        } else {
            b.set_power_budget(Some(0));
            assert_eq!(b.mark_good(), Err(UpdaterError::PowerLost));
            b.set_power_budget(None);
            b.power_on().unwrap()
        };
        assert_eq!(boot, Boot::Slot(Slot::B));
        b.mark_good().unwrap();
    }
}

#[test]
fn an_image_the_updater_does_not_accept_writes_nothing() {
    let img = images();
    let mut b = board(&img);
    let (nv, writes) = (b.nv().clone(), b.writes());
    let e = b.install(&img.unsigned).unwrap_err();
    assert!(matches!(e, UpdaterError::Refused(_)), "{e}");
    assert!(e.to_string().contains("not an image signed"), "{e}");
    let e = b.install(Path::new("/nonexistent/image.swu")).unwrap_err();
    assert!(matches!(e, UpdaterError::Tool { .. }), "{e}");
    assert_eq!((b.nv(), b.writes()), (&nv, writes));
}

#[test]
fn a_new_slot_never_marked_good_is_left_after_its_attempts() {
    let img = images();
    let mut b = board(&img);
    let slot = b.install(&img.v2).unwrap();
    b.switch(slot).unwrap();
    // The new firmware never gets healthy: every boot of B ends in a reset.
    let mut guard = 0;
    while b.reboot().unwrap() == Boot::Slot(Slot::B) {
        guard += 1;
        assert!(guard <= MAX, "B booted more than {MAX} times");
    }
    assert_eq!(slot_boots(&b, Slot::B), MAX as usize);
    assert_eq!(b.running(), Some(Boot::Slot(Slot::A)));
    assert_eq!(b.running_version().as_deref(), Some(V1));
    let s = b.state().unwrap();
    assert_eq!(s.next, Slot::A);
    assert!(!s.slot(Slot::B).bootable);
    b.mark_good().unwrap();
    // B stays out until a switch gives it its attempts back.
    for _ in 0..4 {
        assert_eq!(b.reboot().unwrap(), Boot::Slot(Slot::A));
        b.mark_good().unwrap();
    }
    // A cold boot during a trial gives the slot its attempts again (the retry counts live
    // in a scratch register): the fallback still comes, MAX boots after the last cold one.
    let slot = b.install(&img.v3).unwrap();
    b.switch(slot).unwrap();
    assert_eq!(b.reboot().unwrap(), Boot::Slot(Slot::B));
    b.set_power_budget(Some(0));
    assert_eq!(b.reboot(), Err(UpdaterError::PowerLost));
    b.set_power_budget(None);
    let before = slot_boots(&b, Slot::B);
    assert_eq!(b.power_on().unwrap(), Boot::Slot(Slot::B));
    while b.reboot().unwrap() == Boot::Slot(Slot::B) {}
    assert_eq!(slot_boots(&b, Slot::B) - before, MAX as usize);
}

#[test]
fn switch_and_mark_good_refuse_what_does_not_fit() {
    let img = images();
    let mut b = board(&img);
    let e = b.switch(Slot::A).unwrap_err();
    assert!(e.to_string().contains("slot A runs"), "{e}");
    // An interrupted install leaves B incomplete: it cannot be switched to.
    b.set_power_budget(Some(1));
    assert_eq!(b.install(&img.v2), Err(UpdaterError::PowerLost));
    b.set_power_budget(None);
    assert_eq!(b.nv().contents[1], Content::Partial);
    assert_eq!(b.power_on().unwrap(), Boot::Slot(Slot::A));
    let e = b.switch(Slot::B).unwrap_err();
    assert!(e.to_string().contains("no complete image"), "{e}");
    // Off: nothing to do.
    b.set_power_budget(Some(0));
    let _ = b.reboot();
    assert!(b.state().is_err() && b.mark_good().is_err() && b.install(&img.v2).is_err());
}

#[test]
fn an_install_over_a_pending_switch_points_the_next_boot_back_first() {
    let img = images();
    let mut b = board(&img);
    let slot = b.install(&img.v2).unwrap();
    b.switch(slot).unwrap();
    // A second order arrives before the reboot: B is written again. Power fails in the
    // middle of that write: the next boot must not start the half-written B.
    b.set_power_budget(Some(2));
    assert_eq!(b.install(&img.v3), Err(UpdaterError::PowerLost));
    b.set_power_budget(None);
    assert_eq!(b.nv().contents[1], Content::Partial);
    assert_eq!(b.power_on().unwrap(), Boot::Slot(Slot::A));
}

/// The agent on the simulated board: on each boot it confirms the slot when healthy;
/// firmware `broken` is never healthy (no confirm, the watchdog resets).
fn settle(b: &mut SimulatedBoard, broken: &str) -> Result<(), UpdaterError> {
    for _ in 0..4 * (MAX + 2) {
        if b.running().is_none() {
            b.power_on()?;
        }
        match b.running_version() {
            Some(v) if v == broken => {
                b.reboot()?;
            }
            Some(_) => return b.mark_good(),
            None => panic!("no slot runs: {:?} {:?}", b.running(), b.nv()),
        }
    }
    panic!("never settled: {:?}", b.nv());
}

fn update(b: &mut SimulatedBoard, image: &Path, broken: &str) -> Result<(), UpdaterError> {
    let slot = b.install(image)?;
    b.switch(slot)?;
    b.reboot()?;
    settle(b, broken)
}

/// After everything settled: a complete image runs, confirmed, and stays over reboots;
/// another update still works from there.
fn check_settled(mut b: SimulatedBoard, img: &Images, expect: &str, what: &str) {
    assert_eq!(
        b.running_version().as_deref(),
        Some(expect),
        "{what}: {:?}",
        b.nv()
    );
    let s = b.state().unwrap();
    assert!(!s.unconfirmed(), "{what}");
    for _ in 0..3 {
        let boot = b.reboot().unwrap();
        assert_eq!(Boot::Slot(s.current), boot, "{what}");
        b.mark_good().unwrap();
    }
    let image = if expect == V3 { &img.v2 } else { &img.v3 };
    update(&mut b, image, "none").unwrap();
    assert_ne!(
        b.running_version().as_deref(),
        Some(expect),
        "{what}: update after"
    );
}

#[test]
fn power_loss_before_every_write_of_an_update_and_of_the_boots_after_it() {
    let img = images();
    for broken in [false, true] {
        let bad = if broken { V2 } else { "none" };
        // The uninterrupted run: its writes, and the write after which the switch is done.
        let mut b = board(&img);
        let start = b.writes();
        let slot = b.install(&img.v2).unwrap();
        b.switch(slot).unwrap();
        let switched_at = b.writes() - start;
        b.reboot().unwrap();
        settle(&mut b, bad).unwrap();
        let total = b.writes() - start;
        if broken {
            assert_eq!(slot_boots(&b, Slot::B), MAX as usize);
        }
        let mut runs = 0;
        for k1 in 0..=total {
            let mut b = board(&img);
            b.set_power_budget(Some(k1));
            let first = update(&mut b, &img.v2, bad);
            assert_eq!(first.is_err(), k1 < total, "k1 {k1}");
            // How many writes the recovery takes without a second loss.
            let mut dry = b.clone();
            dry.set_power_budget(None);
            let w0 = dry.writes();
            settle(&mut dry, bad).unwrap();
            let recovery = dry.writes() - w0;
            for k2 in 0..=recovery {
                let mut c = b.clone();
                c.set_power_budget(Some(k2));
                let lost = settle(&mut c, bad).is_err();
                assert_eq!(lost, k2 < recovery, "k1 {k1} k2 {k2}");
                c.set_power_budget(None);
                if lost {
                    settle(&mut c, bad).unwrap();
                }
                let expect = if !broken && k1 >= switched_at { V2 } else { V1 };
                let what = format!("broken {broken} k1 {k1} k2 {k2}");
                if broken && k1 >= switched_at {
                    assert!(!c.nv().bootable[1], "{what}: B not marked unbootable");
                }
                check_settled(c, &img, expect, &what);
                runs += 1;
            }
        }
        assert!(runs > 2 * total, "{runs} runs");
    }
}

/// The device side of one order, as the agent will run it: the record in `dir`, the
/// board's updater, a receipt into `outbox` before the record forgets the order. Power may
/// fail before any write of the board or of the record (each record write is one).
struct Device<'a> {
    board: SimulatedBoard,
    dir: &'a Path,
    outbox: Vec<Verdict>,
    broken: &'a str,
}

impl Device<'_> {
    fn record(
        &mut self,
        f: impl FnOnce(&mut FirmwareState) -> Result<(), super::super::state::FirmwareStateError>,
    ) -> Result<(), UpdaterError> {
        self.board.external_write()?;
        let mut st = FirmwareState::open(self.dir).unwrap();
        f(&mut st).unwrap();
        Ok(())
    }

    fn answer(&mut self, verdict: Verdict) -> Result<(), UpdaterError> {
        self.outbox.push(verdict);
        self.record(|st| st.finish().map(|_| ()))
    }

    /// What the agent does at every start, until nothing is left to do.
    fn start(&mut self) -> Result<(), UpdaterError> {
        if self.board.running().is_none() {
            self.board.power_on()?;
        }
        for _ in 0..8 * (MAX + 2) {
            let st = FirmwareState::open(self.dir).unwrap();
            let boot = self.board.state()?;
            let running = self.board.running_version().unwrap();
            let healthy = running != self.broken;
            match st.resume(&boot, &running) {
                None => {
                    // No trial: the image's own verifier confirms an ordinary boot.
                    if boot.unconfirmed() && healthy {
                        self.board.mark_good()?;
                    }
                    return Ok(());
                }
                Some(Resume::Abandon) => self.answer(Verdict::RolledBack)?,
                Some(Resume::Switch(s)) => {
                    self.board.switch(s)?;
                    self.record(|st| st.switched())?;
                    self.board.reboot()?;
                }
                Some(Resume::Reboot) => {
                    self.board.reboot()?;
                }
                Some(Resume::Trial(_)) if healthy => self.board.mark_good()?,
                Some(Resume::Trial(_)) => {
                    // Unhealthy: no confirm; the watchdog (or the agent) resets.
                    self.board.reboot()?;
                }
                Some(Resume::Applied(_)) => self.answer(Verdict::Applied)?,
                Some(Resume::FellBack { .. }) => self.answer(Verdict::RolledBack)?,
                Some(r @ Resume::WrongVersion { .. }) => panic!("{r:?}"),
            }
        }
        panic!("the agent never got done: {:?}", self.board.nv());
    }

    /// The (retained) order arrives: accepted unless answered or another is under way.
    /// `killed_after`: the agent's process dies after that many of its steps (the board
    /// keeps running; the next start is not a boot).
    fn order(
        &mut self,
        v: &VerifiedOrder,
        image: &Path,
        killed_after: Option<usize>,
    ) -> Result<(), UpdaterError> {
        let st = FirmwareState::open(self.dir).unwrap();
        if st.answered(&v.digest) || st.pending().is_some() {
            return Ok(());
        }
        let running = self.board.running_version().unwrap();
        let mut slot = Slot::A;
        for step in 0..ORDER_STEPS {
            if killed_after == Some(step) {
                return Ok(());
            }
            match step {
                0 => self.record(|st| st.begin(v, &running))?,
                1 => slot = self.board.install(image)?,
                2 => self.record(|st| st.installed(slot))?,
                3 => self.board.switch(slot)?,
                4 => self.record(|st| st.switched())?,
                _ => {
                    self.board.reboot()?;
                }
            }
        }
        Ok(())
    }

    /// Starts, takes the order, starts again after its reboot: the whole life of one order.
    fn run(&mut self, v: &VerifiedOrder, image: &Path) -> Result<(), UpdaterError> {
        self.start()?;
        self.order(v, image, None)?;
        self.start()
    }

    /// Once it is all over: one verdict — sent again only when power failed between the
    /// outbox and the record (at least once, never zero times) — that says what runs and
    /// keeps running over later boots, nothing pending, nothing unconfirmed.
    fn check_done(&mut self, v: &VerifiedOrder, losses: usize, what: &str) {
        let what = format!("{what}: {:?}", self.outbox);
        let running = self.board.running_version().unwrap();
        assert!(!self.outbox.is_empty(), "{what}");
        assert!(self.outbox.len() <= losses + 1, "{what}");
        assert!(self.outbox.iter().all(|x| *x == self.outbox[0]), "{what}");
        match self.outbox[0] {
            Verdict::Applied => assert_eq!(running, V2, "{what}"),
            _ => assert_eq!(running, V1, "{what}"),
        }
        if self.broken == V2 {
            assert_eq!(self.outbox[0], Verdict::RolledBack, "{what}");
        }
        let st = FirmwareState::open(self.dir).unwrap();
        assert!(st.pending().is_none() && st.answered(&v.digest), "{what}");
        assert!(!self.board.state().unwrap().unconfirmed(), "{what}");
        let answered = self.outbox.len();
        self.board.set_power_budget(None);
        for _ in 0..3 {
            self.board.reboot().unwrap();
            self.start().unwrap();
            assert_eq!(self.board.running_version().unwrap(), running, "{what}");
        }
        assert_eq!(self.outbox.len(), answered, "{what}");
    }
}

/// The agent's steps for one order: begin, install, installed, switch, switched, reboot.
const ORDER_STEPS: usize = 6;

/// A device on a freshly flashed board with an empty record in `dir`.
fn device<'a>(img: &Images, dir: &'a Path, broken: &'a str) -> Device<'a> {
    let _ = std::fs::remove_dir_all(dir);
    Device {
        board: board(img),
        dir,
        outbox: Vec::new(),
        broken,
    }
}

fn verified_order() -> VerifiedOrder {
    let key = crate::sign::SecretKey::generate().unwrap();
    let order = crate::firmware::FirmwareOrder {
        kind_tag: crate::firmware::ORDER_TYPE.into(),
        image: "aegis-image".into(),
        version: V2.into(),
        downgrade: false,
        board: "sim".into(),
        updater: "swupdate".into(),
        sha256: "ab".repeat(32),
        size: 1,
        url: "https://u.example/i.swu".into(),
        issuer: "gw-1".into(),
        target: crate::maml::Target {
            devices: vec!["dev".into()],
            groups: vec![],
        },
        issued_at: "2026-12-04T09:00:00Z".into(),
        expires_at: "2026-12-11T09:00:00Z".into(),
        sequence: 1,
    };
    order.validate().unwrap();
    let digest = crate::sha256_hex(&order.to_json());
    VerifiedOrder {
        replay_key: crate::firmware::replay_key(key.public().id(), &order.target),
        signer: key.public().clone(),
        digest,
        order,
    }
}

#[test]
fn the_agent_protocol_answers_each_order_once_whatever_power_does() {
    let img = images();
    let v = verified_order();
    for broken in [false, true] {
        let bad = if broken { V2 } else { "none" };
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fw");
        let fresh = |dir| device(&img, dir, bad);
        let mut d = fresh(&dir);
        let start = d.board.writes();
        d.run(&v, &img.v2).unwrap();
        let total = d.board.writes() - start;
        let want = if broken {
            Verdict::RolledBack
        } else {
            Verdict::Applied
        };
        assert_eq!(d.outbox, vec![want], "uninterrupted, broken {broken}");
        for k1 in 0..=total {
            // The first loss at write k1; after each power-on the agent starts and the
            // retained order is delivered again, and power fails once more at write k2
            // of that recovery (k2 beyond its writes: no second loss).
            for k2 in [0, 1, 2, 3, 5, 8, usize::MAX] {
                let mut d = fresh(&dir);
                d.board.set_power_budget(Some(k1));
                let mut budget = Some(k2);
                let mut losses = 0;
                while d.run(&v, &img.v2).is_err() {
                    losses += 1;
                    d.board
                        .set_power_budget(budget.take().filter(|k| *k != usize::MAX));
                }
                d.check_done(&v, losses, &format!("broken {broken} k1 {k1} k2 {k2}"));
            }
        }
    }
}

#[test]
fn the_agent_protocol_survives_the_agent_killed_after_every_step() {
    let img = images();
    let v = verified_order();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fw");
    for bad in ["none", V2] {
        for killed in 0..ORDER_STEPS {
            let mut d = device(&img, &dir, bad);
            d.start().unwrap();
            d.order(&v, &img.v2, Some(killed)).unwrap();
            // The agent restarts (the board did not reboot) and the order comes again.
            d.run(&v, &img.v2).unwrap();
            d.check_done(&v, 0, &format!("broken {bad} killed after step {killed}"));
        }
    }
}
