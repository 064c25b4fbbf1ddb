//! `cargo xtask faults`: `kill -9` an experiment at random moments, rerun it
//! after every kill, and check that what it finally writes is, byte for byte,
//! what an uninterrupted run writes.
//!
//! The experiment runs as `xtask experiment FILE --out DIR` in a process
//! group of its own, so a kill takes the stage binary it is running with it,
//! whichever moment it lands on. A run that finishes between kills is
//! compared and started again from an empty directory, so every kill lands
//! on work in progress. The kill delay is uniform in `[0, cap]`; when a kill
//! came before any step finished, the cap doubles (up to the longest step),
//! so that long steps finish too.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

/// Options of `cargo xtask faults`.
#[derive(Debug, Args)]
pub struct FaultsArgs {
    /// The experiment to interrupt.
    #[arg(long, default_value = "experiments/demo.toml")]
    experiment: PathBuf,
    /// How many `kill -9`s to deal out.
    #[arg(long, default_value_t = 100)]
    kills: usize,
    /// Largest delay before a kill at first, in seconds (doubled after a kill that finished no step).
    #[arg(long, default_value_t = 10.0)]
    max_delay: f64,
    /// Seed of the kill delays.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run directory of the experiment (emptied first); the uninterrupted run's
    /// outputs are kept next to it, in `<out>.clean`.
    #[arg(long, default_value = "out/faults")]
    out: PathBuf,
    #[command(flatten)]
    prereqs: crate::prereqs::SkipPrereqs,
}

/// The files an experiment's result is judged by: the report and its figures.
fn result_files(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut files = vec![(PathBuf::from("report.md"), std::fs::read(dir.join("report.md")).context("reading report.md")?)];
    let figures = dir.join("figures");
    if figures.is_dir() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&figures)?.map(|e| e.map(|e| e.path())).collect::<std::io::Result<_>>()?;
        names.sort();
        for path in names {
            let rel = Path::new("figures").join(path.file_name().expect("a file name"));
            files.push((rel, std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?));
        }
    }
    Ok(files)
}

/// Names the first file that differs between two results, if any.
fn first_difference(clean: &[(PathBuf, Vec<u8>)], faulted: &[(PathBuf, Vec<u8>)]) -> Option<String> {
    if clean.len() != faulted.len() {
        return Some(format!("{} result files against {}", faulted.len(), clean.len()));
    }
    clean.iter().zip(faulted).find(|(a, b)| a != b).map(|((name, _), _)| name.display().to_string())
}

/// Steps the run directory's ledger records as done (0 when it has none yet).
fn finished_steps(dir: &Path) -> Result<usize> {
    let path = dir.join("ledger.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let ledger: serde_json::Value =
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not readable JSON after a kill", path.display()))?;
    Ok(ledger.get("steps").and_then(serde_json::Value::as_object).map_or(0, serde_json::Map::len))
}

/// Starts `xtask experiment` (the binary `xtask`) in a process group of its own, its output appended to `log`.
fn start(xtask: &Path, experiment: &Path, dir: &Path, log: &Path) -> Result<Child> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).with_context(|| format!("opening {}", log.display()))?;
    Command::new(xtask)
        .arg("experiment")
        .arg(experiment)
        .arg("--out")
        .arg(dir)
        .arg("--skip-prereqs")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting xtask experiment")
}

/// Kills the process group of `child` with SIGKILL and reaps it.
fn kill_group(child: &mut Child) -> Result<()> {
    let status = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status().context("running kill")?;
    if !status.success() {
        bail!("kill -KILL -{} failed ({status})", child.id());
    }
    child.wait()?;
    Ok(())
}

/// Waits up to `delay` for `child` to exit; its status if it did.
fn wait_at_most(child: &mut Child, delay: Duration) -> Result<Option<ExitStatus>> {
    let until = Instant::now() + delay;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= until {
            return Ok(None);
        }
        std::thread::sleep((until - now).min(Duration::from_millis(20)));
    }
}

/// A uniform draw in [0, 1) from a xorshift state.
fn uniform(state: &mut u64) -> f64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

/// `cargo xtask faults`.
pub fn faults(args: &FaultsArgs) -> Result<std::process::ExitCode> {
    if !(args.max_delay.is_finite() && args.max_delay > 0.0) {
        bail!("--max-delay must be a positive number of seconds; found {}", args.max_delay);
    }
    args.prereqs.ensure()?;
    let bin = crate::workspace::build_binaries()?;
    let dir = crate::workspace::absolute(&args.out)?;
    // A private copy of xtask: cargo relinks target/release/xtask whenever it
    // is built alone (`cargo xtask`) after a workspace build, or back.
    let xtask = PathBuf::from(format!("{}.xtask", dir.display()));
    std::fs::copy(bin.join("xtask"), &xtask).with_context(|| format!("copying {} to {}", bin.join("xtask").display(), xtask.display()))?;
    let clean_dir = PathBuf::from(format!("{}.clean", dir.display()));
    let log = PathBuf::from(format!("{}.log", dir.display()));
    let remove = |d: &Path| -> Result<()> {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
        Ok(())
    };

    // The uninterrupted run, in the same directory the faulted runs use (the report names it).
    remove(&dir)?;
    let started = Instant::now();
    eprintln!("faults: uninterrupted run of {} in {} (log: {})", args.experiment.display(), dir.display(), log.display());
    let status = start(&xtask, &args.experiment, &dir, &log)?.wait()?;
    if !status.success() {
        bail!("the uninterrupted run failed ({status}); see {}", log.display());
    }
    let clean_seconds = started.elapsed().as_secs_f64();
    let clean = result_files(&dir)?;
    remove(&clean_dir)?;
    std::fs::rename(&dir, &clean_dir).with_context(|| format!("keeping the clean run in {}", clean_dir.display()))?;
    eprintln!("faults: uninterrupted run took {clean_seconds:.1} s; now {} kills", args.kills);

    let mut state = args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut cap = args.max_delay;
    let (mut kills, mut rounds, mut restarts) = (0usize, 0usize, 0usize);
    let mut longest_cap = cap;
    let faulted_started = Instant::now();
    while kills < args.kills {
        let before = finished_steps(&dir)?;
        let mut child = start(&xtask, &args.experiment, &dir, &log)?;
        restarts += 1;
        let delay = Duration::from_secs_f64(uniform(&mut state) * cap);
        match wait_at_most(&mut child, delay)? {
            Some(status) if status.success() => {
                // The run finished before the kill: judge it, then start a fresh round.
                rounds += 1;
                if let Some(file) = first_difference(&clean, &result_files(&dir)?) {
                    bail!(
                        "after {kills} kills, round {rounds} finished with a different {file} than the uninterrupted run ({})",
                        dir.display()
                    );
                }
                eprintln!("faults: round {rounds} finished identical to the uninterrupted run after {kills} kills in all");
                remove(&dir)?;
                cap = args.max_delay;
            }
            Some(status) => bail!("a rerun after {kills} kills failed by itself ({status}); see {}", log.display()),
            None => {
                kill_group(&mut child)?;
                kills += 1;
                let after = finished_steps(&dir)?;
                // No step finished: a longer delay next time lets long steps complete.
                cap = if after > before { args.max_delay } else { (cap * 2.0).min(clean_seconds) };
                longest_cap = longest_cap.max(cap);
                if kills % 10 == 0 {
                    eprintln!("faults: {kills} kills, {after} steps recorded in the ledger");
                }
            }
        }
    }
    // Finish the last round without interruption.
    let status = start(&xtask, &args.experiment, &dir, &log)?.wait()?;
    if !status.success() {
        bail!("the final rerun after {kills} kills failed ({status}); see {}", log.display());
    }
    rounds += 1;
    if let Some(file) = first_difference(&clean, &result_files(&dir)?) {
        bail!("after {kills} kills the run finished with a different {file} than the uninterrupted run ({})", dir.display());
    }
    println!(
        "faults: {kills} kills (seed {}, delays up to {longest_cap:.0} s) over {rounds} rounds and {restarts} starts, {:.0} s; \
         every round ended with the uninterrupted run's report.md and {} figures, byte for byte",
        args.seed,
        faulted_started.elapsed().as_secs_f64(),
        clean.len() - 1
    );
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_differ_by_the_first_file_that_does() {
        let a = vec![(PathBuf::from("report.md"), b"x".to_vec()), (PathBuf::from("figures/f.png"), b"1".to_vec())];
        let mut b = a.clone();
        assert_eq!(first_difference(&a, &b), None);
        b[1].1 = b"2".to_vec();
        assert_eq!(first_difference(&a, &b).as_deref(), Some("figures/f.png"));
        assert!(first_difference(&a, &b[..1]).unwrap().contains("1 result files against 2"));
    }

    #[test]
    fn the_ledger_s_finished_steps_are_counted_and_a_torn_ledger_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(finished_steps(dir.path()).unwrap(), 0);
        std::fs::write(dir.path().join("ledger.json"), r#"{"steps": {"a": {}, "b": {}}, "hashes": {}}"#).unwrap();
        assert_eq!(finished_steps(dir.path()).unwrap(), 2);
        std::fs::write(dir.path().join("ledger.json"), r#"{"steps": {"a": "#).unwrap();
        assert!(finished_steps(dir.path()).unwrap_err().to_string().contains("not readable JSON"));
    }

    #[test]
    fn delays_are_uniform_in_the_unit_interval_and_fixed_by_the_seed() {
        let draw = |seed: u64| {
            let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            (0..1000).map(|_| uniform(&mut state)).collect::<Vec<_>>()
        };
        let (a, b) = (draw(3), draw(3));
        assert_eq!(a, b);
        assert_ne!(a, draw(4));
        assert!(a.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
    }
}
