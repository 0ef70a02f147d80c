//! `aegis provision` and `aegis version`: this device's keys and what this build and this
//! machine can run.

use std::path::Path;

pub(super) fn provision(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let sign = aegis_ota::sign::SecretKey::generate()?;
    let kem = aegis_ota::seal::SealSecret::generate()?;
    let (sk, sp) = (dir.join("device.key"), dir.join("device.pub"));
    let kk = dir.join(aegis_ota::seal::DEVICE_SECRET_KEY_FILE);
    let kp = kk.with_extension("pub"); // device.kem.pub
    for p in [&sk, &kk] {
        anyhow::ensure!(
            !p.exists(),
            "{} exists: this device is provisioned already (keys are never overwritten)",
            p.display()
        );
    }
    sign.write(&sk)?;
    sign.public().write(&sp)?;
    kem.write(&kk)?;
    kem.public().write(&kp)?;
    println!("signing key {} -> {}", sign.public().id(), sp.display());
    println!("sealing key {} -> {}", kem.public().id(), kp.display());
    println!(
        "enrol on the gateway: chimera enroll DEVICE_ID {} --kem {}",
        sp.display(),
        kp.display()
    );
    Ok(())
}

pub(super) fn install_group_key(dir: &Path, delivery: &Path, issuer: &Path) -> anyhow::Result<()> {
    let installed = aegis_ota::seal::install_group_key(dir, delivery, issuer)?;
    println!(
        "group {}: key {} installed in {}",
        installed.group,
        installed.key_id,
        installed.path.display()
    );
    Ok(())
}

pub(super) fn found(present: bool) -> &'static str {
    if present { "found" } else { "not found" }
}

/// `aegis version`: the agent, the libav* it loaded, its encoder, and which vendor libraries
/// this machine has.
pub(super) fn version(config: Option<&std::path::Path>) -> anyhow::Result<()> {
    aegis_hal::init();
    let probe = aegis_hal::backend::probe();
    println!("aegis {}", env!("CARGO_PKG_VERSION"));
    println!("{}", aegis_hal::libav_versions());
    println!(
        "H.264 encoder: {}",
        aegis_hal::codec::h264_encoder_name().unwrap_or("none")
    );
    println!(
        "backends in this build: cpu, cuda (CUDA driver {}, NVRTC {}, NVDEC {} here)",
        found(probe.driver),
        found(probe.nvrtc),
        found(probe.nvdec)
    );
    if let Some(path) = config {
        let cfg = aegis_config::load(path)?;
        let dir = crate::web::tls::cert_dir(&cfg);
        match crate::web::tls::DeviceCert::fingerprint_in(&dir) {
            Ok((path, fp)) => println!("web certificate {}: SHA-256 {fp}", path.display()),
            Err(e) => println!("web certificate: {e} (made at the first start with TLS)"),
        }
    }
    Ok(())
}
