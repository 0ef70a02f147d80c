//! Schema version 5's part of the state (the online signer's allotments) in PostgreSQL: the
//! same operation as `store_signing::issue`, whose doc states its semantics, for several
//! replicas at once.
//!
//! One transaction at READ COMMITTED. `INSERT … ON CONFLICT DO UPDATE` locks the conflicting
//! row; a second transaction allotting for the same key and target waits on it (or, when
//! both insert a new key and target, on the unique index) and then updates the committed
//! row, so no two transactions return the same `last_sequence`.

use super::postgres_rollouts::Failure;
use super::store_signing::{Held, Issue, IssueRequest};

/// `Store::issue_sequence` for PostgreSQL (see `store_signing::issue`).
pub(crate) async fn issue(
    c: &mut deadpool_postgres::Object,
    r: &IssueRequest,
    now_ms: i64,
) -> Result<Issue, Failure> {
    let tx = c.transaction().await?;
    let mut held = Held::default();
    let st = tx
        .prepare_cached("SELECT sequence, targets FROM workflows WHERE key_id = $1")
        .await?;
    for row in tx.query(&st, &[&r.key_id]).await? {
        held.add(r, row.try_get(0)?, row.try_get(1)?);
    }
    let st = tx
        .prepare_cached(
            "INSERT INTO issue_sequences (key_id, target, last_sequence, updated_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (key_id, target) DO UPDATE SET \
             last_sequence = GREATEST(issue_sequences.last_sequence + 1, \
             excluded.last_sequence), updated_at = excluded.updated_at \
             RETURNING last_sequence",
        )
        .await?;
    let sequence: i64 = tx
        .query_one(&st, &[&r.key_id, &r.target, &held.wanted(r), &now_ms])
        .await?
        .try_get(0)?;
    let st = tx
        .prepare_cached(
            "INSERT INTO issue_clock (key_id, last_issued_s) VALUES ($1, $2) \
             ON CONFLICT (key_id) DO UPDATE SET \
             last_issued_s = GREATEST(issue_clock.last_issued_s, excluded.last_issued_s) \
             RETURNING last_issued_s",
        )
        .await?;
    let issued_at_s: i64 = tx
        .query_one(&st, &[&r.key_id, &r.now_s])
        .await?
        .try_get(0)?;
    tx.commit().await?;
    Ok(Issue::from_row(sequence, issued_at_s))
}
