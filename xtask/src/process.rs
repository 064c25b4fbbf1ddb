//! Running child processes: print what runs, forward exit statuses, stream output.

use std::ffi::OsStr;
use std::process::{Command, ExitCode, ExitStatus, Stdio};

use anyhow::{Context, Result};

/// Quotes one word for display as a shell would need it.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The name under which a program is shown: `cargo` for the cargo binary, else as given.
fn program_name(program: &OsStr) -> String {
    let cargo = std::env::var_os("CARGO");
    if cargo.as_deref() == Some(program) {
        "cargo".to_string()
    } else {
        program.to_string_lossy().into_owned()
    }
}

/// A command line as a user could paste it into a shell, with the environment it sets.
pub fn display(cmd: &Command) -> String {
    let mut words: Vec<String> =
        cmd.get_envs().filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), shell_quote(&v.to_string_lossy())))).collect();
    words.push(program_name(cmd.get_program()));
    words.extend(cmd.get_args().map(|a| shell_quote(&a.to_string_lossy())));
    words.join(" ")
}

/// [`display`], with a long argument list cut to its first and last arguments.
pub fn display_short(cmd: &Command) -> String {
    const KEEP: usize = 16;
    let args: Vec<&OsStr> = cmd.get_args().collect();
    if args.len() <= 2 * KEEP {
        return display(cmd);
    }
    let mut short = Command::new(cmd.get_program());
    short.args(&args[..KEEP]).arg(format!("...({} more arguments)...", args.len() - 2 * KEEP)).args(&args[args.len() - KEEP..]);
    display(&short)
}

/// Prints the command to stderr, runs it with inherited stdio and returns its status.
pub fn run_status(cmd: &mut Command) -> Result<ExitStatus> {
    let shown = display_short(cmd);
    eprintln!("running: {shown}");
    cmd.status().with_context(|| format!("could not start `{shown}`"))
}

/// Runs the command, fails unless it exits successfully.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = run_status(cmd)?;
    anyhow::ensure!(status.success(), "`{}` failed ({status})", display_short(cmd));
    Ok(())
}

/// Runs the command with stderr inherited and returns its stdout; fails
/// unless it exits successfully.
pub fn output_checked(cmd: &mut Command) -> Result<Vec<u8>> {
    let shown = display_short(cmd);
    eprintln!("running: {shown}");
    let out = cmd.stderr(Stdio::inherit()).output().with_context(|| format!("could not start `{shown}`"))?;
    anyhow::ensure!(out.status.success(), "`{shown}` failed ({})", out.status);
    Ok(out.stdout)
}

/// Whether `program args...` can be started and exits successfully (output discarded).
pub fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// The exit code to forward for a child's status (128 + signal when killed by one).
pub fn exit_code(status: ExitStatus) -> ExitCode {
    if let Some(code) = status.code() {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return ExitCode::from(u8::try_from(128 + signal).unwrap_or(1));
        }
    }
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_and_shows_env() {
        let mut cmd = Command::new("tool");
        cmd.args(["run", "two words", "it's"]).env("KEY", "/a b/c");
        assert_eq!(display(&cmd), r"KEY='/a b/c' tool run 'two words' 'it'\''s'");
    }

    #[test]
    fn long_commands_are_shown_cut() {
        let mut cmd = Command::new("tool");
        cmd.args((0..40).map(|i| i.to_string()));
        let shown = display_short(&cmd);
        assert!(shown.starts_with("tool 0 1 2 ") && shown.ends_with(" 38 39"), "{shown}");
        assert!(shown.contains("...(8 more arguments)..."), "{shown}");
        let mut short = Command::new("tool");
        short.args(["a", "b"]);
        assert_eq!(display_short(&short), "tool a b");
    }
}
