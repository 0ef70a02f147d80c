//! The SWUpdate driver against the real `swupdate` (Debian 12: 2022.12, built with CMS
//! signatures): bundles made here with test keys (`openssl req`/`openssl cms`, `cpio -H
//! crc`, as meta-swupdate makes them) in tegra-demo-distro's layout — one board section,
//! software set `system`, a mode per running slot — whose "partitions" are files in a
//! temporary directory, so nothing real is ever written. `nvbootctrl` is a script that
//! keeps the slots' state in a file (the real one exists only on a Jetson).
//!
//! A signed bundle is accepted and written into the slot that is not running; a bundle
//! with one image byte changed, a changed `sw-description`, another signer, no signature,
//! an image without a hash, or for another board is refused with swupdate's reason and
//! nothing is written to either slot; with `installed-directly` (how tegra-demo-distro
//! installs the root filesystem) swupdate alone writes a tampered image before it notices,
//! the driver does not.

// Only the tool check of the shared test helpers (the rest needs brokers and databases).
#[path = "common/tools.rs"]
#[allow(dead_code)]
mod tools;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use aegis_ota::firmware::swupdate::{Nvbootctrl, SwUpdate, SwUpdateConfig};
use aegis_ota::firmware::updater::{Slot, Updater, UpdaterError};

const SUITE: &str = "firmware_swupdate";
const BOARD: &str = "jetson-orin-nano-devkit";
const SWUPDATE: &str = "/usr/bin/swupdate";

fn have_tools() -> bool {
    let found = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    tools::have(SUITE, "swupdate", Path::new(SWUPDATE).exists())
        && tools::have(SUITE, "openssl", found("openssl"))
        && tools::have(SUITE, "cpio", found("cpio"))
}

fn sh(dir: &Path, cmd: &str) {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A signer: a self-signed certificate and its RSA key, as swupdate's documentation makes
/// them for CMS.
struct Signer {
    cert: PathBuf,
    key: PathBuf,
}

fn signer(dir: &Path, name: &str) -> Signer {
    sh(
        dir,
        &format!(
            "openssl req -x509 -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.pem \
             -days 2 -subj /O=aegis-test/CN={name} 2>/dev/null"
        ),
    );
    Signer {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    }
}

/// One test's world: a directory with the two slot files, the fake `nvbootctrl` and its
/// state, the signer.
struct World {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    signer: Signer,
    image: Vec<u8>,
}

const SLOT_SIZE: usize = 256 * 1024;

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let signer = signer(&dir, "signer");
    // The "partitions": files the sw-description names as devices.
    for slot in ["slot-a.img", "slot-b.img"] {
        std::fs::write(dir.join(slot), vec![0x5a; SLOT_SIZE]).unwrap();
    }
    let image: Vec<u8> = (0..SLOT_SIZE).map(|i| (i * 7 % 251) as u8).collect();
    // nvbootctrl: state "current active retry_a retry_b status_a status_b"; every call
    // appended to nvbootctrl.log.
    std::fs::write(dir.join("nvboot.state"), "0 0 2 3 normal normal\n").unwrap();
    let script = r#"#!/bin/sh
d=$(dirname "$0")
echo "$*" >> "$d/nvbootctrl.log"
read cur act ra rb sa sb < "$d/nvboot.state"
letter() { if [ "$1" = 1 ]; then echo B; else echo A; fi; }
case "$*" in
  get-current-slot) echo "$cur" ;;
  "set-active-boot-slot 0"|"set-active-boot-slot 1")
    echo "$cur ${2} $ra $rb $sa $sb" > "$d/nvboot.state" ;;
  verify)
    if [ "$cur" = 0 ]; then ra=3; else rb=3; fi
    echo "$cur $act $ra $rb $sa $sb" > "$d/nvboot.state" ;;
  "-t rootfs dump-slots-info")
    echo "Current rootfs slot: $(letter $cur)"
    echo "Active rootfs slot: $(letter $act)"
    echo "num_slots: 2"
    echo "slot: 0,             retry_count: $ra,             status: $sa"
    echo "slot: 1,             retry_count: $rb,             status: $sb" ;;
  *) echo "nvbootctrl: unknown command: $*" >&2; exit 1 ;;
esac
"#;
    let fake = dir.join("nvbootctrl");
    std::fs::write(&fake, script).unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    World {
        _tmp: tmp,
        dir,
        signer,
        image,
    }
}

impl World {
    fn driver(&self, board: &str) -> SwUpdate {
        SwUpdate {
            config: SwUpdateConfig {
                binary: SWUPDATE.into(),
                certificate: self.signer.cert.clone(),
                software_set: "system".into(),
                hwrevision: Some(format!("{board}:1.0")),
                config: None,
                bootloader: Some("none".into()),
                work_dir: self.dir.join("work"),
                timeout: Duration::from_secs(120),
            },
            boot: Nvbootctrl {
                binary: self.dir.join("nvbootctrl"),
                max_attempts: 3,
            },
        }
    }

    fn slot(&self, s: Slot) -> Vec<u8> {
        std::fs::read(self.dir.join(format!("slot-{}.img", s.letter()))).unwrap()
    }

    fn nvboot_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nvbootctrl.log")).unwrap_or_default()
    }

    fn set_nvboot(&self, state: &str) {
        std::fs::write(self.dir.join("nvboot.state"), format!("{state}\n")).unwrap();
    }

    /// tegra-demo-distro's sw-description shape: the board's section, software set
    /// `system`, mode `slot_a` (running on A) writing slot B and `slot_b` writing A.
    fn description(&self, version: &str, image_attrs: &str) -> String {
        let sha = aegis_ota::sha256_hex(&self.image);
        let entry = |target: &str| {
            format!(
                "images: ( {{ filename = \"rootfs.img\"; type = \"raw\"; device = \"{}\"; \
                 sha256 = \"{sha}\"; {image_attrs} }} );",
                self.dir.join(target).display()
            )
        };
        format!(
            "software =\n{{\n  version = \"{version}\";\n  {BOARD} = {{\n    \
             hardware-compatibility: [ \"1.0\" ];\n    system = {{\n      \
             slot_a: {{ {} }};\n      slot_b: {{ {} }};\n    }};\n  }};\n}}\n",
            entry("slot-b.img"),
            entry("slot-a.img")
        )
    }

    /// Packs a bundle: `sw-description` (signed by `by`, or unsigned), its signature, the
    /// image. `after_signing` may change the description once it is signed.
    fn bundle(
        &self,
        name: &str,
        description: &str,
        by: Option<&Signer>,
        after_signing: Option<&str>,
        image: &[u8],
    ) -> PathBuf {
        let d = self.dir.join(format!("{name}.d"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("sw-description"), description).unwrap();
        std::fs::write(d.join("rootfs.img"), image).unwrap();
        let mut files = vec!["sw-description"];
        if let Some(s) = by {
            sh(
                &d,
                &format!(
                    "openssl cms -sign -in sw-description -out sw-description.sig -signer {} \
                     -inkey {} -outform DER -nosmimecap -binary",
                    s.cert.display(),
                    s.key.display()
                ),
            );
            files.push("sw-description.sig");
        }
        if let Some(changed) = after_signing {
            std::fs::write(d.join("sw-description"), changed).unwrap();
        }
        files.push("rootfs.img");
        let out = self.dir.join(format!("{name}.swu"));
        sh(
            &d,
            &format!(
                "printf '{}\\n' | cpio -o -H crc --quiet > {}",
                files.join("\\n"),
                out.display()
            ),
        );
        out
    }

    fn good(&self) -> PathBuf {
        let desc = self.description("1.4.0", "");
        self.bundle("good", &desc, Some(&self.signer), None, &self.image)
    }
}

#[test]
fn a_signed_bundle_is_checked_by_the_real_swupdate_and_written_into_the_inactive_slot() {
    if !have_tools() {
        return;
    }
    let w = world();
    let mut driver = w.driver(BOARD);
    let bundle = w.good();
    let before_a = w.slot(Slot::A);
    driver.check(&bundle).unwrap();
    assert_eq!(
        w.slot(Slot::B),
        vec![0x5a; SLOT_SIZE],
        "a check writes nothing"
    );
    // Running on A: B is written, A is not; nothing was switched.
    assert_eq!(driver.install(&bundle).unwrap(), Slot::B);
    assert_eq!(w.slot(Slot::B), w.image);
    assert_eq!(w.slot(Slot::A), before_a);
    assert!(!w.nvboot_log().contains("set-active"), "{}", w.nvboot_log());
    // Switch, state, confirm through nvbootctrl.
    driver.switch(Slot::B).unwrap();
    let s = driver.state().unwrap();
    assert_eq!((s.current, s.next), (Slot::A, Slot::B));
    assert!(s.unconfirmed(), "retry_count 2 of 3 on the running slot");
    driver.mark_good().unwrap();
    assert!(!driver.state().unwrap().unconfirmed());
    let log = w.nvboot_log();
    assert!(
        log.contains("set-active-boot-slot 1\n") && log.contains("verify\n"),
        "{log}"
    );
    let e = driver.switch(Slot::A).unwrap_err();
    assert!(matches!(e, UpdaterError::State(_)), "{e}");
    // Running on B (after the reboot), the other mode writes A.
    w.set_nvboot("1 1 3 2 normal normal");
    std::fs::write(w.dir.join("slot-a.img"), vec![0x5a; SLOT_SIZE]).unwrap();
    assert_eq!(driver.install(&bundle).unwrap(), Slot::A);
    assert_eq!(w.slot(Slot::A), w.image);
}

#[test]
fn tampered_bundles_are_refused_before_anything_is_written() {
    if !have_tools() {
        return;
    }
    let w = world();
    let desc = w.description("1.4.0", "");
    let other = signer(&w.dir, "other");
    let mut flipped = w.image.clone();
    flipped[SLOT_SIZE / 2] ^= 0x01;
    // (case, bundle, board, swupdate's reason: one of `|`-separated texts)
    let cases: Vec<(&str, PathBuf, &str, &str)> = vec![
        (
            "one byte of the image",
            w.bundle("byte", &desc, Some(&w.signer), None, &flipped),
            BOARD,
            "HASH mismatch",
        ),
        (
            "sw-description changed after signing",
            w.bundle(
                "desc",
                &desc,
                Some(&w.signer),
                Some(&desc.replace("1.4.0", "9.9.9")),
                &w.image,
            ),
            BOARD,
            "Signature verification failed",
        ),
        (
            "signed by another key",
            w.bundle("other", &desc, Some(&other), None, &w.image),
            BOARD,
            "Authentication of all signatures failed",
        ),
        (
            "no signature",
            w.bundle("unsigned", &desc, None, None, &w.image),
            BOARD,
            // swupdate names no reason here, and which of its two failure lines is printed
            // before it exits varies from run to run.
            "|Not installing|SWUpdate *failed*",
        ),
        (
            "an image without a hash",
            w.bundle(
                "nohash",
                &w.description("1.4.0", "").replace(
                    &format!("sha256 = \"{}\";", aegis_ota::sha256_hex(&w.image)),
                    "",
                ),
                Some(&w.signer),
                None,
                &w.image,
            ),
            BOARD,
            "Hash not set",
        ),
        (
            "another board",
            w.good(),
            "jetson-agx-orin-devkit",
            "HW compatibility not found",
        ),
    ];
    for (name, bundle, board, reason) in cases {
        let before = (w.slot(Slot::A), w.slot(Slot::B));
        let mut driver = w.driver(board);
        let e = driver.install(&bundle).unwrap_err();
        match &e {
            UpdaterError::Refused(why) => assert!(
                reason.split('|').any(|r| !r.is_empty() && why.contains(r)),
                "{name}: {why}"
            ),
            other => panic!("{name}: {other}"),
        }
        assert_eq!(
            (w.slot(Slot::A), w.slot(Slot::B)),
            before,
            "{name}: a slot changed"
        );
    }
    assert!(!w.nvboot_log().contains("set-active"), "{}", w.nvboot_log());
}

#[test]
fn swupdate_alone_streams_a_tampered_image_into_the_slot_the_driver_does_not() {
    if !have_tools() {
        return;
    }
    let w = world();
    let desc = w.description("1.4.0", "installed-directly = true;");
    let mut flipped = w.image.clone();
    flipped[SLOT_SIZE - 1] ^= 0x80;
    let bundle = w.bundle("direct", &desc, Some(&w.signer), None, &flipped);
    let pristine = w.slot(Slot::B);
    // The driver: refused by the dry run, B untouched.
    let e = w.driver(BOARD).install(&bundle).unwrap_err();
    assert!(e.to_string().contains("HASH mismatch"), "{e}");
    assert_eq!(w.slot(Slot::B), pristine);
    // swupdate -i alone: refused too ("Not installing"), after it wrote the image.
    let work = w.dir.join("raw");
    std::fs::create_dir_all(&work).unwrap();
    let out = Command::new(SWUPDATE)
        .args([
            "-i",
            bundle.to_str().unwrap(),
            "-k",
            w.signer.cert.to_str().unwrap(),
        ])
        .args([
            "-e",
            "system,slot_a",
            "-H",
            &format!("{BOARD}:1.0"),
            "-B",
            "none",
        ])
        .env("TMPDIR", &work)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("HASH mismatch"), "{text}");
    assert_eq!(
        w.slot(Slot::B),
        flipped,
        "swupdate -i wrote the tampered image"
    );
}

#[test]
fn a_pending_switch_is_undone_before_the_slot_it_names_is_written() {
    if !have_tools() {
        return;
    }
    let w = world();
    // Running A, the next boot set to B (an order switched, then another arrived).
    w.set_nvboot("0 1 2 3 normal normal");
    let mut driver = w.driver(BOARD);
    assert_eq!(driver.install(&w.good()).unwrap(), Slot::B);
    // The state read, then the next boot pointed back at A, before swupdate ran.
    assert_eq!(
        w.nvboot_log(),
        "-t rootfs dump-slots-info\nset-active-boot-slot 0\n"
    );
    assert_eq!(driver.state().unwrap().next, Slot::A);
    assert_eq!(w.slot(Slot::B), w.image);
}
