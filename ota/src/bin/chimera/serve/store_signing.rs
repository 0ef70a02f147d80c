//! Schema version 5's part of the state: what the online signer is allotted for each
//! document — its sequence and its issue time — in one transaction, so replicas sharing a
//! database never hand out the same sequence (docs/chimera-serve.md, "Online signing").
//! The SQLite implementation is here, `postgres_signing.rs` the PostgreSQL one; [`issue`]'s
//! doc states the semantics both follow, and the parts they share (which stored documents
//! hold a sequence, the sequence wanted) are functions here.

use rusqlite::{Connection, TransactionBehavior, params};

/// What one document is allotted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Issue {
    /// Its sequence: above every sequence handed out or held for its issuer key and target.
    pub(crate) sequence: u64,
    /// Its `issued_at` (unix seconds): now, or the last one handed out for the key if a
    /// replica with a faster clock issued later.
    pub(crate) issued_at_s: i64,
}

/// What [`issue`] is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IssueRequest {
    /// The issuer key id.
    pub(crate) key_id: String,
    /// The canonical target (`maml::Target::canonical`).
    pub(crate) target: String,
    /// The least sequence wanted (the draft's own `sequence`: an operator moves past
    /// sequences used outside the service with it).
    pub(crate) floor: u64,
    /// The issuing replica's clock (unix seconds).
    pub(crate) now_s: i64,
}

/// `issue_sequence`: in one transaction (SQLite: `BEGIN IMMEDIATE`, which takes the write
/// lock first, so concurrent allotments — from this process or another on the same file —
/// run one after the other):
///
/// 1. `held` = the largest `sequence` of the stored `workflows` rows with this `key_id`
///    whose `targets` JSON is this canonical target (compared in Rust: JSON is not
///    compared in SQL), 0 when none;
/// 2. `want = max(floor, held + 1, 1)`;
///    `INSERT INTO issue_sequences (key_id, target, last_sequence, updated_at)
///     VALUES (k, t, want, now_ms) ON CONFLICT (key_id, target) DO UPDATE SET
///     last_sequence = MAX(issue_sequences.last_sequence + 1, excluded.last_sequence),
///     updated_at = excluded.updated_at RETURNING last_sequence` — the sequence;
/// 3. `INSERT INTO issue_clock (key_id, last_issued_s) VALUES (k, now_s) ON CONFLICT
///     (key_id) DO UPDATE SET last_issued_s = MAX(issue_clock.last_issued_s,
///     excluded.last_issued_s) RETURNING last_issued_s` — the issue time.
///
/// PostgreSQL: the same statements with `GREATEST` for the two-argument `MAX`, in one
/// transaction at READ COMMITTED. `INSERT … ON CONFLICT DO UPDATE` locks the conflicting
/// row and, when another transaction holds it, waits and then updates the committed row
/// (two first allotments racing on a new key/target: one inserts, the other waits on the
/// unique index and takes the update path), so no two transactions return the same
/// `last_sequence`. Step 1 may miss a workflow uploaded concurrently; it only raises the
/// floor. A sequence allotted to a document that is then not signed or not stored is
/// skipped: devices accept gaps up to their `max_sequence_jump` (1000 by default).
pub(crate) fn issue(c: &mut Connection, r: &IssueRequest, now_ms: i64) -> rusqlite::Result<Issue> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut held = Held::default();
    {
        let mut st =
            tx.prepare_cached("SELECT sequence, targets FROM workflows WHERE key_id = ?1")?;
        let mut rows = st.query([&r.key_id])?;
        while let Some(row) = rows.next()? {
            held.add(r, row.get(0)?, &row.get::<_, String>(1)?);
        }
    }
    let sequence: i64 = tx.query_row(
        "INSERT INTO issue_sequences (key_id, target, last_sequence, updated_at) \
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (key_id, target) DO UPDATE SET \
         last_sequence = MAX(issue_sequences.last_sequence + 1, excluded.last_sequence), \
         updated_at = excluded.updated_at RETURNING last_sequence",
        params![r.key_id, r.target, held.wanted(r), now_ms],
        |row| row.get(0),
    )?;
    let issued_at_s: i64 = tx.query_row(
        "INSERT INTO issue_clock (key_id, last_issued_s) VALUES (?1, ?2) \
         ON CONFLICT (key_id) DO UPDATE SET \
         last_issued_s = MAX(issue_clock.last_issued_s, excluded.last_issued_s) \
         RETURNING last_issued_s",
        params![r.key_id, r.now_s],
        |row| row.get(0),
    )?;
    tx.commit()?;
    Ok(Issue::from_row(sequence, issued_at_s))
}

/// Step 1 of [`issue`]: the largest sequence of the stored documents of the request's key
/// and target, fed one `workflows` row (`sequence`, `targets`) at a time.
#[derive(Debug, Default)]
pub(crate) struct Held(u64);

impl Held {
    /// Counts one stored document of the request's key: its sequence when its `targets`
    /// JSON is the request's target (a row that does not parse holds nothing).
    pub(crate) fn add(&mut self, r: &IssueRequest, sequence: i64, targets: &str) {
        let same = serde_json::from_str::<aegis_ota::maml::Target>(targets)
            .is_ok_and(|t| t.canonical() == r.target);
        if same {
            self.0 = self.0.max(u64::try_from(sequence).unwrap_or(0));
        }
    }

    /// Step 2's `want`: `max(floor, held + 1, 1)`, as the BIGINT it is stored as.
    pub(crate) fn wanted(&self, r: &IssueRequest) -> i64 {
        let want = r.floor.max(self.0.saturating_add(1)).max(1);
        i64::try_from(want).unwrap_or(i64::MAX)
    }
}

impl Issue {
    /// The allotment from the stored `last_sequence` and `last_issued_s`.
    pub(crate) fn from_row(sequence: i64, issued_at_s: i64) -> Issue {
        Issue {
            sequence: u64::try_from(sequence).unwrap_or(0),
            issued_at_s,
        }
    }
}
