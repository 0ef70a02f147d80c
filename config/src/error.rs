//! Error types.
//!
//! A configuration mistake is reported as a list of [`Problem`]s, each tied to
//! the YAML path of the offending value, so an operator can fix every mistake
//! in one edit instead of restarting the agent once per typo.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// One mistake in a configuration, located by its YAML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Path of the offending value using YAML field names, e.g.
    /// `pipeline.sources[0].url`. Empty for problems with the document as a
    /// whole (such as a YAML syntax error).
    pub path: String,
    /// What is wrong, in words meant for the operator.
    pub reason: String,
}

impl Problem {
    pub(crate) fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is larger than a configuration file can reasonably be.
    #[error("{} is larger than the {limit_bytes}-byte limit for configuration files", path.display())]
    TooLarge {
        /// The file that was being read.
        path: PathBuf,
        /// The size limit in bytes.
        limit_bytes: u64,
    },
    /// The text was read but contains one or more mistakes.
    #[error("{}", render_problems(origin, problems))]
    Invalid {
        /// Name of the configuration (usually the file name), used as the
        /// prefix of every message line.
        origin: String,
        /// Every mistake found, in the order found.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The individual mistakes, for [`ConfigError::Invalid`]; empty otherwise.
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Invalid { problems, .. } => problems,
            Self::Io { .. } | Self::TooLarge { .. } => &[],
        }
    }
}

fn render_problems(origin: &str, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|problem| format!("{origin}: {problem}"))
        .collect::<Vec<_>>()
        .join("\n")
}
