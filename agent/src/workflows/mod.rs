//! Signed workflows on the running agent: live apply, health check and rollback
//! ([`apply`]), driving ota's workflow state machine (`aegis_ota::state`).

pub mod apply;
