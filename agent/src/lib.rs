//! Aegis agent library.
