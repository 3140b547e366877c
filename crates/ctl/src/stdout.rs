//! Standard output that ends quietly when its reader goes away.
//!
//! Owns: every write to stdout (`outln!`, `out!`). `palettectl … | head -1`
//! closes the pipe early; `println!` would then panic ("Broken pipe") and
//! exit 101. Here a closed pipe ends the program at once with exit code 0,
//! as other Unix tools do, and any other failure to write is an error
//! (exit code 1). Must not: write anything else, or to stderr.

use std::io::Write;

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
    () => { $crate::stdout::write(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::stdout::write(format_args!($($arg)*), true) };
}

/// `print!` that ends quietly on a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => { $crate::stdout::write(format_args!($($arg)*), false) };
}
