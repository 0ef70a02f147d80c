//! `aegis user add|passwd|del|list`: the technician web page's accounts. A password is read
//! from the terminal without echo (asked twice), or as one line of standard input.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use clap::Subcommand;

use crate::web::auth::{Accounts, Role};

/// `aegis user …`
#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add an account; its password is read from the terminal or standard input.
    Add {
        /// The login name (A-Z a-z 0-9 . _ -).
        name: String,
        /// What it may do.
        #[arg(long, value_enum)]
        role: Role,
        /// The agent's config (its `web.accounts_file`).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Change an account's password.
    Passwd {
        /// The login name.
        name: String,
        /// The agent's config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Delete an account.
    Del {
        /// The login name.
        name: String,
        /// The agent's config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List the accounts and their roles.
    List {
        /// The agent's config.
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Runs `aegis user …`.
pub fn run(what: UserCommand) -> anyhow::Result<()> {
    let (UserCommand::Add { config, .. }
    | UserCommand::Passwd { config, .. }
    | UserCommand::Del { config, .. }
    | UserCommand::List { config }) = &what;
    let path = aegis_config::load(config)?.accounts_path();
    let mut accounts = Accounts::load(&path)?;
    match what {
        UserCommand::Add { name, role, .. } => {
            accounts.add(&name, role, &read_password()?)?;
            accounts.save(&path)?;
            println!("added {name} ({}) to {}", role.as_str(), path.display());
        }
        UserCommand::Passwd { name, .. } => {
            accounts.set_password(&name, &read_password()?)?;
            accounts.save(&path)?;
            println!("changed {name}'s password");
        }
        UserCommand::Del { name, .. } => {
            accounts.remove(&name)?;
            accounts.save(&path)?;
            println!("deleted {name}");
        }
        UserCommand::List { .. } => {
            for a in &accounts.users {
                println!("{}\t{}", a.name, a.role.as_str());
            }
        }
    }
    Ok(())
}

/// The new password: from a terminal, typed twice without echo; else stdin's first line.
fn read_password() -> anyhow::Result<zeroize::Zeroizing<String>> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = zeroize::Zeroizing::new(String::new());
        stdin.lock().read_line(&mut line)?;
        return Ok(zeroize::Zeroizing::new(
            line.trim_end_matches(['\r', '\n']).to_string(),
        ));
    }
    let first = prompt("Password: ")?;
    let again = prompt("Again: ")?;
    anyhow::ensure!(*first == *again, "the two passwords differ");
    Ok(first)
}

/// One line from the terminal with echo off (restored afterwards, also on error).
fn prompt(text: &str) -> anyhow::Result<zeroize::Zeroizing<String>> {
    eprint!("{text}");
    std::io::stderr().flush()?;
    // SAFETY: a zeroed termios is a valid out-parameter; fd 0 is a terminal (checked).
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `old` is a valid termios to write.
    let got = unsafe { libc::tcgetattr(0, &mut old) };
    anyhow::ensure!(got == 0, "cannot read the terminal's settings");
    let mut quiet = old;
    quiet.c_lflag &= !libc::ECHO;
    // SAFETY: `quiet` is a termios read from this terminal, with ECHO cleared.
    unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) };
    let mut line = zeroize::Zeroizing::new(String::new());
    let read = std::io::stdin().lock().read_line(&mut line);
    // SAFETY: restores the settings read above.
    unsafe { libc::tcsetattr(0, libc::TCSANOW, &old) };
    eprintln!();
    read?;
    Ok(zeroize::Zeroizing::new(
        line.trim_end_matches(['\r', '\n']).to_string(),
    ))
}
