//! `chimera new`, `sign`, `seal`, `verify`: making, signing, sealing and checking workflow documents.

// The command modules share the binary's imports, helpers and argument types.
use super::*;

/// `chimera new`.
pub(crate) fn new(args: NewArgs) -> anyhow::Result<()> {
    let NewArgs {
        out,
        issuer,
        device,
        group,
        sequence,
        days,
    } = args;
    let (id, issued, expires) = (uuid_v4()?, now_rfc3339(0), now_rfc3339(i64::from(days)));
    let devices: Vec<&str> = device.iter().map(String::as_str).collect();
    let groups: Vec<&str> = group.iter().map(String::as_str).collect();
    let draft = maml::Draft {
        id: &id,
        issuer: &issuer,
        devices: &devices,
        groups: &groups,
        sequence,
        issued_at: &issued,
        expires_at: &expires,
    };
    let text = maml::workflow_text(&draft, maml::TEMPLATE_PIPELINE);
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&out)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    println!("{}", out.display());
    Ok(())
}

/// `chimera sign`.
pub(crate) fn sign(args: SignArgs) -> anyhow::Result<()> {
    let SignArgs { file, key, out } = args;
    let key = SecretKey::read(&key)?;
    let doc = read_file(&file)?;
    let out_bytes = aegis_ota::sign_workflow(&doc, &key)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let out = out.unwrap_or_else(|| derived_name(&file, "signed"));
    write_file(&out, out_bytes)?;
    println!("{} signed by {}", out.display(), key.public().id());
    Ok(())
}

/// `chimera seal`.
pub(crate) fn seal(args: SealArgs) -> anyhow::Result<()> {
    let SealArgs {
        file,
        to,
        registry,
        out,
    } = args;
    let reg = read_registry(&registry)?;
    let mut recipients = Vec::new();
    for r in &to {
        let p = PathBuf::from(r);
        if p.exists() {
            recipients.push(SealPublic::read(&p)?);
        } else {
            recipients.push(
                gateway::sealing_key(&reg, &registry, r)
                    .map_err(|e| anyhow::anyhow!("{r:?} is not a key file, and {e}"))?,
            );
        }
    }
    let text = String::from_utf8(maml::normalise(&read_file(&file)?))
        .map_err(|e| anyhow::anyhow!("{}: not UTF-8 text: {e}", file.display()))?;
    maml::parse(text.as_bytes()).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let sealed = aegis_ota::seal::seal(&text, &recipients)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let out = out.unwrap_or_else(|| derived_name(&file, "sealed"));
    write_file(&out, sealed)?;
    println!(
        "{} sealed for {}",
        out.display(),
        recipients
            .iter()
            .map(|r| r.id())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// `chimera verify`.
pub(crate) fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let VerifyArgs {
        file,
        trust,
        trust_metadata,
        root,
        threshold,
        device,
        group,
        open,
    } = args;
    let doc = read_file(&file)?;
    let open_keys = open
        .iter()
        .map(|p| SealSecret::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    let open_refs: Vec<&SealSecret> = open_keys.iter().collect();
    let v = match trust_metadata {
        None => {
            anyhow::ensure!(
                !trust.is_empty(),
                "give --trust KEY.pub or --trust-metadata with --root"
            );
            let keys = trust
                .iter()
                .map(|p| PublicKey::read(p))
                .collect::<Result<Vec<_>, _>>()?;
            aegis_ota::verify_document(&doc, &keys, &open_refs)
                .map_err(|e| anyhow::anyhow!("REFUSED: {e}"))?
        }
        Some(tm) => {
            let (meta, now) = checked_trust(&tm, &root, threshold)?;
            let me = aegis_ota::device::Identity {
                id: device.ok_or_else(|| anyhow::anyhow!("--trust-metadata needs --device ID"))?,
                groups: group,
            };
            let policy = aegis_ota::device::Policy {
                source_hosts: vec!["*".into()],
                paths: vec!["/".into()],
                ..Default::default()
            };
            let v = aegis_ota::device::check(
                &doc,
                &meta,
                &me,
                &policy,
                &Default::default(),
                now,
                &open_refs,
            )
            .map_err(|e| anyhow::anyhow!("REFUSED: {e}"))?;
            println!(
                "ok  issuer may target {:?} / {:?}; time valid now; sequence {} (fresh state)",
                v.document.front.target.devices,
                v.document.front.target.groups,
                v.document.front.sequence
            );
            v
        }
    };
    println!(
        "ok  size {} bytes (limit {})",
        doc.len(),
        maml::MAX_DOCUMENT_BYTES
    );
    println!(
        "ok  signature {} by {}",
        aegis_ota::sign::ALG,
        v.signer.id()
    );
    println!(
        "ok  front matter: {} sequence {}",
        v.document.front.id, v.document.front.sequence
    );
    match &v.pipeline {
        Some(p) => println!(
            "ok  pipeline: {} sources, {} stages, {} sinks",
            p.sources.len(),
            p.stages.len(),
            p.sinks.len()
        ),
        None => println!("--  no Pipeline section"),
    }
    println!("sha256 {}", v.digest);
    println!("not checked here: this device's replay state and time floor, its own policy");
    Ok(())
}

/// Trust metadata as a device would take it (first install: version 0 held), signed by
/// `threshold` of the `--root` keys (default: the metadata's own `root.threshold`), and
/// the time now. Prints what it found; errors start with `REFUSED`.
pub(crate) fn checked_trust(
    tm: &Path,
    root: &[PathBuf],
    threshold: Option<u32>,
) -> anyhow::Result<(TrustMetadata, i64)> {
    let roots = root
        .iter()
        .map(|p| PublicKey::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    anyhow::ensure!(!roots.is_empty(), "--trust-metadata needs --root ROOT.pub");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let tm_bytes = read_file(tm)?;
    let (needed, source) = root_threshold(&tm_bytes, threshold)
        .map_err(|e| anyhow::anyhow!("REFUSED trust metadata {}: {e}", tm.display()))?;
    let meta = TrustMetadata::verify_update(&tm_bytes, &roots, needed, 0, now).map_err(|e| {
        anyhow::anyhow!(
            "REFUSED trust metadata {}: {e} (threshold {needed}, {source})",
            tm.display()
        )
    })?;
    println!(
        "ok  trust metadata version {} (expires {}): {} of the {} --root keys \
         signed it, threshold {needed} ({source})",
        meta.version,
        meta.expires_at,
        root_signers(&tm_bytes, &roots),
        roots.len()
    );
    Ok((meta, now))
}
