//! `chimera firmware publish`: the online side of firmware orders. A signed order goes,
//! retained and with QoS 1, to the firmware topic of every device and group its `target`
//! names (`aegis/v1/{device}/firmware`, `aegis/v1/groups/{group}/firmware`), so a device
//! that is offline gets the latest order when it reconnects. The order's own target decides
//! the topics: it is signed, and a device acts only on an order that names it, so there is
//! no `--to` to get wrong.
//!
//! Before the broker is involved the order is checked ([`check_for_publish`]): its shape
//! always (one signature block, the JSON and format rules devices apply, not expired), and
//! with `--trust-metadata` also its signature, its issuer's `firmware` grant and that the
//! issuer may target every device and group named. What only a device knows (its image,
//! board, running version, last sequence, download hosts) is left to `chimera firmware
//! verify`. Devices answer on their receipts topic; `chimera watch-receipts` verifies and
//! records those answers (`json_receipts`).

use std::path::PathBuf;

use aegis_ota::firmware::{self, check_for_publish};

use crate::broker::BrokerArgs;
use crate::gateway::{Session, client_id, runtime};

/// Clock skew tolerated for an order's `issued_at` (devices' default).
const MAX_CLOCK_SKEW_S: i64 = 300;

/// `chimera firmware publish`.
#[derive(clap::Args)]
pub(crate) struct PublishArgs {
    /// The signed order (`chimera firmware order`).
    order: PathBuf,
    /// Signed trust metadata, as devices hold it: the order's signature, its issuer's
    /// `firmware` grant and the issuer's targets are checked against it first. Without
    /// it only the order's shape is checked (and the output says so).
    #[arg(long, requires = "root")]
    trust_metadata: Option<PathBuf>,
    /// Root public key files that must have signed the trust metadata.
    #[arg(long, requires = "trust_metadata")]
    root: Vec<PathBuf>,
    /// Valid root signatures needed (default: the metadata's own `root.threshold`).
    #[arg(long, requires = "trust_metadata")]
    threshold: Option<u32>,
    /// The MQTT 5 broker, its TLS and credentials.
    #[command(flatten)]
    broker: BrokerArgs,
}

/// `chimera firmware publish`.
pub(crate) fn publish(a: PublishArgs) -> anyhow::Result<()> {
    let shown = a.order.display().to_string();
    let trust = match &a.trust_metadata {
        Some(tm) => Some(crate::docs::checked_trust(tm, &a.root, a.threshold)?.0),
        None => None,
    };
    let bytes = crate::read_file(&a.order)?;
    let p = check_for_publish(
        &bytes,
        trust.as_ref(),
        aegis_ota::maml::now_s(),
        MAX_CLOCK_SKEW_S,
    )
    .map_err(|e| anyhow::anyhow!("{shown} is not a firmware order devices would take: {e}"))?;
    let o = &p.order;
    let topics =
        topics(&o.target.devices, &o.target.groups).map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
    let broker = a.broker.resolve()?;
    let rt = runtime()?;
    rt.block_on(async {
        let mut s = Session::connect(&broker, &client_id("firmware")).await?;
        s.publish_retained(topics.iter().map(|t| (t.clone(), bytes.clone())).collect())
            .await?;
        s.close().await;
        anyhow::Ok(())
    })?;
    println!(
        "published {} {} for {} (order sha256 {}, sequence {}, signed by {}{}) to {} — retained",
        o.image,
        o.version,
        o.board,
        &p.digest[..16],
        o.sequence,
        p.key_id,
        if p.signature_verified {
            ", signature ok"
        } else {
            ", signature NOT checked: no --trust-metadata"
        },
        topics.join(", ")
    );
    Ok(())
}

/// The firmware topics of an order's target: each device's, then each group's, each once.
/// A name no device or group can have (the agent's id rule: 1 to 64 of `a-z`, `0-9`, `-`,
/// `_`) is refused: as a topic level it could name another topic (`/`) or none (`+`, `#`),
/// and no device would act on it.
fn topics(devices: &[String], groups: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for (what, names, topic) in [
        (
            "device",
            devices,
            firmware::device_topic as fn(&str) -> String,
        ),
        ("group", groups, firmware::group_topic),
    ] {
        for n in names {
            let id_like = (1..=64).contains(&n.len())
                && n.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            anyhow::ensure!(
                id_like,
                "target {what} {n:?} is not a {what} id (1 to 64 of a-z, 0-9, -, _): no {what} \
                 subscribes to its topic"
            );
            let t = topic(n);
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_goes_to_each_device_and_group_topic_once() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            topics(&s(&["orin-1", "orin-2", "orin-1"]), &s(&["site-a"])).unwrap(),
            s(&[
                "aegis/v1/orin-1/firmware",
                "aegis/v1/orin-2/firmware",
                "aegis/v1/groups/site-a/firmware"
            ])
        );
        assert_eq!(
            topics(&[], &s(&["a", "b_2"])).unwrap(),
            s(&["aegis/v1/groups/a/firmware", "aegis/v1/groups/b_2/firmware"])
        );
        let long = "x".repeat(65);
        for (devices, groups, named) in [
            (s(&["a/b"]), vec![], "device \"a/b\""),
            (s(&["+"]), vec![], "device \"+\""),
            (vec![], s(&["#"]), "group \"#\""),
            (vec![], s(&[""]), "group \"\""),
            (vec![], s(&["Site-A"]), "group \"Site-A\""),
            (s(&[&long]), vec![], "device"),
        ] {
            let e = topics(&devices, &groups).unwrap_err().to_string();
            assert!(e.contains(named), "{e}");
        }
    }
}
