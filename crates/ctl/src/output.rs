//! What palettectl writes to standard output, and in which shape.
//!
//! Owns: every write to stdout (`outln!`, `out!`), the `--output` choice
//! (`Output`: a table for people, JSON or YAML for scripts) and
//! `print_structured` (the v2 API's shapes as JSON or YAML).
//! `palettectl … | head -1` closes the pipe early; `println!` would then
//! panic ("Broken pipe") and exit 101. Here a closed pipe ends the program
//! at once with exit code 0, as other Unix tools do, and any other failure
//! to write is an error (exit code 1). Must not: know any command's table
//! (each command lays out its own), call the server, or write anything to
//! stderr but its own failure to write.

use std::io::Write;

use clap::ValueEnum;

/// Writes `args` (and a newline when `newline`) to stdout.
pub fn write(args: std::fmt::Arguments<'_>, newline: bool) {
    let mut out = std::io::stdout().lock();
    let r = out.write_fmt(args).and_then(|()| {
        if newline {
            out.write_all(b"\n")
        } else {
            Ok(())
        }
    });
    if let Err(e) = r {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("palettectl: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` that ends quietly on a closed pipe.
macro_rules! outln {
    () => { $crate::output::write(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*), true) };
}

/// `print!` that ends quietly on a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*), false) };
}

/// The output of read commands (`--output`).
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    /// The JSON shapes written as YAML.
    Yaml,
}

/// Prints `v` as pretty JSON or as YAML (the same shapes).
pub fn print_structured<T: serde::Serialize>(out: Output, v: &T) -> anyhow::Result<()> {
    match out {
        Output::Yaml => out!("{}", serde_saphyr::to_string(v)?),
        _ => outln!("{}", serde_json::to_string_pretty(v)?),
    }
    Ok(())
}
