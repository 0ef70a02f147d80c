//! Cross-crate test helpers (see tests/tests/ for the tests themselves).
