//! What the CLI prints: one-line errors with exit codes, warnings, JSON and files.
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;

/// Exit code of an operational failure (network, TLS, refusal, invalid input file).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of a usage error (clap's default).
pub const EXIT_USAGE: u8 = 2;

/// A failed command: printed as `error: <what failed>; <what to do>` on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    what: String,
    todo: String,
    code: u8,
}

impl Failure {
    /// An operational failure (exit code 1).
    pub fn new(what: impl Into<String>, todo: impl Into<String>) -> Failure {
        Failure {
            what: what.into(),
            todo: todo.into(),
            code: EXIT_FAILURE,
        }
    }

    /// A usage error found after argument parsing (exit code 2).
    pub fn usage(what: impl Into<String>, todo: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_USAGE,
            ..Failure::new(what, todo)
        }
    }

    /// A failure whose message needs no advice after it.
    pub fn bare(what: impl Into<String>) -> Failure {
        Failure::new(what, "")
    }

    /// The process exit code for this failure.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }

    /// Prints the failure as one line on stderr.
    pub fn report(&self) {
        eprintln!("error: {self}");
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.todo.is_empty() {
            write!(f, "{}", one_line(&self.what))
        } else {
            write!(f, "{}; {}", one_line(&self.what), one_line(&self.todo))
        }
    }
}

/// Prints a warning as one line on stderr.
pub fn warn(message: impl AsRef<str>) {
    eprintln!("warning: {}", one_line(message.as_ref()));
}

/// Prints a note as one line on stderr (information that is not the command's output).
pub fn note(message: impl AsRef<str>) {
    eprintln!("note: {}", one_line(message.as_ref()));
}

/// Writes bytes to stdout; a closed pipe is not an error.
pub fn stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::bare(format!("cannot write to stdout: {e}"))),
    }
}

/// Writes one line of human output to stdout.
pub fn line(text: impl AsRef<str>) -> Result<(), Failure> {
    let mut s = text.as_ref().to_owned();
    s.push('\n');
    stdout(s.as_bytes())
}

/// Prints a value as pretty JSON on stdout.
pub fn json<T: Serialize>(value: &T) -> Result<(), Failure> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::bare(format!("cannot encode the JSON output: {e}")))?;
    text.push('\n');
    stdout(text.as_bytes())
}

/// Writes `bytes` to `path` (replacing an existing file), with `mode` for a new file.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Failure> {
    write_with(path, bytes, mode, false)
}

/// Writes `bytes` to a new file at `path` with `mode`; refuses to replace an existing file.
pub fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Failure> {
    write_with(path, bytes, mode, true)
}

/// Writes and syncs `bytes`; `only_new` refuses an existing file instead of truncating it.
fn write_with(path: &Path, bytes: &[u8], mode: u32, only_new: bool) -> Result<(), Failure> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(mode);
    if only_new {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    options
        .open(path)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .map_err(|e| write_failure(path, &e))
}

/// Reads a whole file, with an error that names it and the flag it came from.
pub fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| {
        Failure::new(
            format!("cannot read {what} {}: {e}", path.display()),
            "check the path and its permissions",
        )
    })
}

/// Turns a clap error into the CLI's output: help and version as clap prints them,
/// every other error as one line on stderr with exit code 2.
pub fn clap_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // Printing help can only fail on a closed stdout; nothing useful is left to do.
            let _ = err.print();
            ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(EXIT_USAGE))
        }
        _ => {
            eprintln!("{}", clap_one_line(&err.render().to_string()));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Folds clap's multi-line error text into `error: …; usage: …` on one line.
fn clap_one_line(text: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut usage = None;
    for raw in text.lines() {
        let l = raw.trim();
        if l.is_empty() || l.starts_with("For more information") {
            continue;
        }
        if let Some(u) = l.strip_prefix("Usage:") {
            usage = Some(u.trim().to_owned());
            continue;
        }
        parts.push(l.to_owned());
    }
    let mut out = String::new();
    for (i, p) in parts.iter().enumerate() {
        // "…were not provided:" is followed by the list of arguments.
        let sep = if i == 0 {
            ""
        } else if parts[i - 1].ends_with(':') {
            " "
        } else {
            "; "
        };
        out.push_str(sep);
        out.push_str(p);
    }
    if !out.starts_with("error:") {
        out = format!("error: {out}");
    }
    match usage {
        Some(u) => format!("{out}; usage: {u} (see --help)"),
        None => format!("{out}; see --help"),
    }
}

fn write_failure(path: &Path, e: &std::io::Error) -> Failure {
    let todo = if e.kind() == std::io::ErrorKind::AlreadyExists {
        "choose another path or move the existing file away"
    } else {
        "check the path and its permissions"
    };
    Failure::new(format!("cannot write {}: {e}", path.display()), todo)
}

/// Collapses line breaks and runs of whitespace so a message fits on one line.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_prints_what_and_todo_on_one_line() {
        let f = Failure::new("cannot read x:\n  gone", "check it");
        assert_eq!(f.to_string(), "cannot read x: gone; check it");
        assert_eq!(Failure::bare("only this").to_string(), "only this");
    }

    #[test]
    fn clap_errors_fold_into_one_line_with_usage() {
        let text = "error: the following required arguments were not provided:\n  <FILE>\n\nUsage: quarry manifest check <FILE>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            clap_one_line(text),
            "error: the following required arguments were not provided: <FILE>; usage: quarry manifest check <FILE> (see --help)"
        );
        let text = "error: unexpected argument '--jsn' found\n\n  tip: a similar argument exists: '--json'\n\nUsage: quarry status --json\n";
        assert_eq!(
            clap_one_line(text),
            "error: unexpected argument '--jsn' found; tip: a similar argument exists: '--json'; usage: quarry status --json (see --help)"
        );
    }
}
