//! `chimera keygen`, `kem-keygen`, `group-key`, `enroll`, `unenroll`: the gateway's keys and
//! the device registry.

// The command modules share the binary's imports, helpers and argument types.
use super::*;

/// `chimera group-key`.
pub(crate) fn group_key(args: GroupKeyArgs) -> anyhow::Result<()> {
    let GroupKeyArgs {
        group,
        registry,
        key,
        out,
    } = args;
    let signer = SecretKey::read(&key)?;
    let mut reg: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&read_file(&registry)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", registry.display()))?;
    create_dir(&out)?;
    // A rerun rotates the key: members are whoever is enrolled in the group now (a
    // device re-enrolled without the group is left out), and `seal --to GROUP`
    // uses only the new key from then on.
    let gk = SealSecret::generate()?;
    let stem = aegis_ota::seal::group_key_stem(&group, gk.public());
    gk.write(&out.join(format!("{stem}{SECRET_KEY_SUFFIX}")))?;
    gk.public()
        .write(&out.join(format!("{stem}{PUBLIC_KEY_SUFFIX}")))?;
    let members: Vec<(String, String)> = reg
        .iter()
        .filter(|(_, e)| {
            e["groups"]
                .as_array()
                .is_some_and(|g| g.iter().any(|x| x == group.as_str()))
        })
        .filter_map(|(d, e)| Some((d.clone(), e["kem_key"].as_str()?.to_string())))
        .collect();
    anyhow::ensure!(
        !members.is_empty(),
        "no enrolled device with an ML-KEM key is in group {group:?}"
    );
    for (device, kem) in &members {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(kem)
            .map_err(|e| anyhow::anyhow!("{}: {device}'s kem_key: {e}", registry.display()))?;
        let member = SealPublic::from_bytes(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {device}'s kem_key: {e}", registry.display()))?;
        let mut text = aegis_ota::seal::group_key_delivery(&group, &gk, &member)?.into_bytes();
        let block = signer.sign_block(&text, Purpose::KeyDelivery)?;
        text.extend_from_slice(block.render().as_bytes());
        write_file(&out.join(format!("{group}.for-{device}.delivery")), text)?;
    }
    let pub_line = gk
        .public()
        .to_file_text()
        .lines()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let mut retired: Vec<serde_json::Value> = reg
        .get(&group)
        .and_then(|g| g["retired"].as_array().cloned())
        .unwrap_or_default();
    if let Some(old) = reg.get(&group).and_then(|g| g["key_id"].as_str()) {
        retired.push(old.into());
    }
    reg.insert(group.clone(), serde_json::json!({ "group": true, "kem_key": pub_line, "key_id": gk.public().id(), "retired": retired }));
    write_file(&registry, serde_json::to_vec_pretty(&reg)?)?;
    println!(
        "group {group}: key {} delivered to {} members in {}",
        gk.public().id(),
        members.len(),
        out.display()
    );
    Ok(())
}

/// `chimera kem-keygen`.
pub(crate) fn kem_keygen(args: KemKeygenArgs) -> anyhow::Result<()> {
    let KemKeygenArgs { out } = args;
    let key = SealSecret::generate()?;
    // PREFIX.kem.key / PREFIX.kem.pub (the suffixes without their leading dot).
    let (secret, public) = (
        out.with_extension(&SECRET_KEY_SUFFIX[1..]),
        out.with_extension(&PUBLIC_KEY_SUFFIX[1..]),
    );
    key.write(&secret)?;
    key.public().write(&public)?;
    print_pair(&secret, &public, key.public().id());
    Ok(())
}

/// `chimera keygen`.
pub(crate) fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let KeygenArgs { out } = args;
    let key = SecretKey::generate()?;
    let secret = out.with_extension("key");
    let public = out.with_extension("pub");
    key.write(&secret)?;
    key.public().write(&public)?;
    print_pair(&secret, &public, key.public().id());
    Ok(())
}

/// `chimera enroll`.
pub(crate) fn enroll(args: EnrollArgs) -> anyhow::Result<()> {
    let EnrollArgs {
        device,
        pubkey,
        group,
        kem,
        registry,
    } = args;
    let key = PublicKey::read(&pubkey)?;
    let mut reg = read_registry(&registry)?;
    let kem_key = match &kem {
        Some(p) => {
            // Validated (with the key file checks), then stored as base64.
            use base64::Engine as _;
            let k = SealPublic::read(p)?;
            Some(base64::engine::general_purpose::STANDARD.encode(k.to_bytes()))
        }
        None => None,
    };
    reg.insert(device.clone(), serde_json::json!({ "signing_key": b64_pub(&pubkey)?, "key_id": key.id(), "groups": group, "kem_key": kem_key }));
    write_file(&registry, serde_json::to_vec_pretty(&reg)?)?;
    println!("enrolled {device} ({}) in {}", key.id(), registry.display());
    Ok(())
}

/// `chimera unenroll`: the device's entry leaves the registry, so `publish`, `group-key`
/// and `seal --to GROUP` no longer count it. A device held a group's key: rotate it.
pub(crate) fn unenroll(args: UnenrollArgs) -> anyhow::Result<()> {
    let UnenrollArgs { device, registry } = args;
    let mut reg = read_registry(&registry)?;
    let groups: Vec<String> = match reg.get(&device) {
        Some(e) if e["group"] != true => e["groups"]
            .as_array()
            .map(|g| {
                g.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        _ => anyhow::bail!("{device:?} is not a device in {}", registry.display()),
    };
    reg.remove(&device);
    write_file(&registry, serde_json::to_vec_pretty(&reg)?)?;
    println!("un-enrolled {device} from {}", registry.display());
    for g in &groups {
        if reg.get(g).is_some_and(|e| e["kem_key"].is_string()) {
            println!(
                "it held group {g:?}'s sealing key: rotate it (`chimera group-key --group {g} …`)"
            );
        }
    }
    Ok(())
}

/// What `keygen` and `kem-keygen` print about the pair they wrote.
fn print_pair(secret: &Path, public: &Path, id: &str) {
    println!(
        "{} (secret, 0600)\n{} (public)\nkey id {id}",
        secret.display(),
        public.display()
    );
}

/// The one line of a private file holding a secret (`what`: "the PIN", "the password"): the
/// private-file checks of [`aegis_ota::read_private`] (owned by this process's user, no group
/// or other permission bits, no symbolic link), one trailing line break (LF or CRLF) dropped,
/// UTF-8, not empty, no other line. The text is exactly sized (its buffer can become a boxed
/// secret without a copy left behind) and wiped on drop. The error is the reason, never the
/// content.
pub(crate) fn read_secret_line(
    path: &Path,
    what: &str,
) -> Result<zeroize::Zeroizing<String>, String> {
    let bytes = aegis_ota::read_private(path).map_err(|(_, reason)| reason)?;
    let mut line: &[u8] = &bytes;
    for end in [&b"\n"[..], b"\r"] {
        line = line.strip_suffix(end).unwrap_or(line);
    }
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8 text".to_string())?;
    if text.is_empty() {
        return Err(format!("empty: it must hold {what}"));
    }
    if text.contains(['\n', '\r']) {
        return Err(format!("must hold {what} on one line"));
    }
    let mut s = zeroize::Zeroizing::new(String::with_capacity(text.len()));
    s.push_str(text);
    Ok(s)
}
