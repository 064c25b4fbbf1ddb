//! Time estimates of experiment runs: each step's expected work in tokens
//! through the model ([`Work`]), turned into seconds by the model's speeds
//! measured on this machine just before the run (`evaluate speed`).
//!
//! The work of a task item is given in "equivalent tokens": the seconds an
//! item took, times the speed measured in the same way, on the reference
//! run below. It covers what a token count would miss (padding, batches
//! waiting for their longest answer, compiling and running code), so an
//! estimate is only as good as the reference run is typical: expect ±30%
//! on another model or machine.
//!
//! Reference: Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M) on 2 Zen 4 cores,
//! 176 prefill tokens/s (`evaluate ppl`) and 35 decode tokens/s
//! (`bench-generate`); multiple-choice tasks on 50 items of the dense model,
//! generation tasks on 4-10 items of the dense and a 50% Wanda sub-model.
//! On the same machine `evaluate speed` later measured 230 and 30.8, and the
//! estimate of a whole `paper --quick` run (41 min) came out 10% below its
//! wall time (45.8 min). The reference's generation ran at `evaluate`'s
//! default batch of 8 prompts, so its equivalent tokens hold that batch's
//! gain; a task run at another batch is estimated as if at 8.
//!
//! Since 2026-12-08 `evaluate speed` times prefill as `evaluate ppl` runs it,
//! one streamed layer at a time (before, it built the whole model in f32:
//! 4.8 GB for this 0.5B model). On Qwen2.5-Coder-0.5B it reads 1.41x the
//! old probe's prefill speed (142 and 158 against 103 and 109 tokens/s,
//! back to back on a 2-core Xeon), so the multiple-choice equivalents were
//! scaled by 1.4 to give the same seconds.
//!
//! The generation equivalents were measured again on 2026-12-08, after
//! prompt-lookup drafts and cheaper masked decoding had cut masked models'
//! code steps to about two thirds of their time: a whole `paper --quick`
//! run (4 items per generation step at batch 8; dense and nine 50%
//! sub-models) on a 2-core Xeon, at the probe's 221 prefill and 24.2
//! decode tokens/s, averaged over its ten models. The same run confirmed
//! the multiple-choice equivalents within 20% (the estimate before the
//! update said 52 min for its 39.2).

use std::path::Path;

use anyhow::{Context, Result};

/// Expected work of one step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Work {
    /// Tokens through the whole model in parallel (calibration, perplexity
    /// windows, multiple-choice requests).
    pub prefill_tokens: f64,
    /// Tokens generated one at a time (generation tasks, their prompts and
    /// code runs included as equivalent tokens).
    pub decode_tokens: f64,
}

/// Seconds every step takes besides its work: starting the stage, loading
/// the model, reading and writing artifacts (1-3 s measured on the reference).
const STEP_OVERHEAD_S: f64 = 2.0;

/// The model's speeds on this machine, as `evaluate speed` prints them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
pub struct Speed {
    /// Tokens per second of one sequence's forward pass.
    pub prefill_tokens_per_s: f64,
    /// Tokens per second of greedy decoding at batch 1 with the cache.
    pub decode_tokens_per_s: f64,
}

impl Speed {
    /// Runs `evaluate speed` on `model` and reads its speeds.
    pub fn measure(bin_dir: &Path, model: &Path, device: &str) -> Result<Self> {
        let mut cmd = std::process::Command::new(bin_dir.join("evaluate"));
        cmd.args(["speed", "--model"]).arg(model).args(["--device", device]);
        let out = crate::process::output_checked(&mut cmd)?;
        let line = String::from_utf8_lossy(&out).lines().last().unwrap_or_default().to_string();
        serde_json::from_str(&line).with_context(|| format!("`evaluate speed` printed {line:?}; expected its JSON line of speeds"))
    }

    /// Seconds of a step of `work`.
    pub fn seconds(&self, work: &Work) -> f64 {
        STEP_OVERHEAD_S + work.prefill_tokens / self.prefill_tokens_per_s + work.decode_tokens / self.decode_tokens_per_s
    }
}

/// Tokens of a perplexity task's whole text when its windows are not
/// limited (WikiText-2's test split is about 300,000 tokens).
pub const PPL_TEXT_TOKENS: usize = 300_000;

/// Items of a task's shipped data (the first `limit` when given).
pub fn task_items(task: &str, limit: Option<usize>) -> usize {
    let all = match task {
        "humaneval-x" => 164,
        "mbpp" => 500,
        "gsm8k" => 1319,
        "piqa" => 1838,
        "hellaswag" => 10042,
        "arc-easy" => 2376,
        "arc-challenge" => 1172,
        "winogrande" => 1267,
        "boolq" => 3270,
        "translation" => 1000,
        _ => 0,
    };
    limit.map_or(all, |l| l.min(all))
}

/// The work of `items` items of a task (`language` for HumanEval-X), in
/// equivalent tokens of the reference run; `ppl` tasks are counted by their windows instead.
pub fn task_work(task: &str, language: Option<&str>, items: usize) -> Work {
    let n = items as f64;
    let prefill = |tokens: f64| Work { prefill_tokens: n * tokens, decode_tokens: 0.0 };
    let decode = |tokens: f64| Work { prefill_tokens: 0.0, decode_tokens: n * tokens };
    match (task, language) {
        ("piqa", _) => prefill(73.0),
        ("hellaswag", _) => prefill(115.0),
        ("arc-easy", _) => prefill(76.0),
        ("arc-challenge", _) => prefill(88.0),
        ("winogrande", _) => prefill(39.0),
        ("boolq", _) => prefill(161.0),
        ("humaneval-x", Some("java")) => decode(134.0),
        ("humaneval-x", Some("js")) => decode(140.0),
        ("humaneval-x", _) => decode(110.0),
        ("mbpp", _) => decode(95.0),
        // 175 before its prompts shared their 8-shot prefix's keys and
        // values (16 items then took 0.62 of their time, 54-56 s against
        // 86-89 s), 110 before the measurement of 2026-12-08.
        ("gsm8k", _) => decode(88.0),
        ("translation", _) => decode(19.0),
        _ => Work::default(),
    }
}

/// A warning that the estimate may run long, when the machine was already
/// busy as the speeds were measured: a one-minute load average (the first
/// field of `/proc/loadavg`'s text `loadavg`) of at least half the `cores`.
/// None on an idle machine or unreadable text.
pub fn busy_warning(loadavg: &str, cores: usize) -> Option<String> {
    let load: f64 = loadavg.split_whitespace().next()?.parse().ok()?;
    (load >= 0.5 * cores as f64).then(|| {
        format!(
            "the machine was busy while the speeds were measured (load average {load:.1} on {cores} cores), so the estimate may be too long"
        )
    })
}

/// Seconds as `1 h 05 min`, `12 min` or `40 s`.
pub fn human(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=89 => format!("{s} s"),
        90..=3599 => format!("{} min", (s + 30) / 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600 + 30) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_costs_its_overhead_plus_its_tokens_at_the_measured_speeds() {
        let speed = Speed { prefill_tokens_per_s: 200.0, decode_tokens_per_s: 40.0 };
        // 20 PIQA items: 20 * 73 = 1460 prefill tokens, 7.3 s; 4 Java problems: 536 decode tokens, 13.4 s.
        assert!((speed.seconds(&task_work("piqa", None, task_items("piqa", Some(20)))) - (2.0 + 7.3)).abs() < 1e-9);
        assert!((speed.seconds(&task_work("humaneval-x", Some("java"), 4)) - (2.0 + 13.4)).abs() < 1e-9);
        assert_eq!(task_items("humaneval-x", Some(1000)), 164);
        assert_eq!(task_items("boolq", None), 3270);
        assert_eq!((human(40.0), human(725.0), human(3900.0)), ("40 s".to_string(), "12 min".to_string(), "1 h 05 min".to_string()));
    }

    #[test]
    fn a_load_of_half_the_cores_or_more_warns_that_the_estimate_may_run_long() {
        assert_eq!(busy_warning("0.42 0.30 0.20 1/123 4567", 2), None);
        let busy = busy_warning("2.10 1.90 1.50 3/130 4600", 2).expect("a load of 2.1 on 2 cores is busy");
        assert!(busy.contains("load average 2.1 on 2 cores"), "{busy}");
        assert!(busy_warning("1.00 0.5 0.5 1/1 1", 2).is_some());
        assert_eq!(busy_warning("", 2), None);
        assert_eq!(busy_warning("not-a-number 1 1", 2), None);
    }
}
