//! `palettectl keys …`: publisher keys for signing releases.
//!
//! Owns: the `keys generate` command and what it tells the operator. Must
//! not: touch the server (the secret key never reaches it), or handle key
//! files itself (`signing` does).

use crate::cli::KeysCmd;
use crate::signing;

pub fn run(cmd: KeysCmd) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::Generate { out, no_password } => {
            let (pub_path, line) = signing::generate(&out, no_password)?;
            outln!(
                "wrote {} and the secret key beside it; trust it on hosts with:\ntrust:\n  keys:\n    - {line}",
                pub_path.display()
            );
            Ok(())
        }
    }
}
