//! Generation on the real SmolLM2-135M-Instruct (CPU): greedy decoding with
//! the key/value cache equals decoding without it, batched equals one prompt
//! at a time (prompts joining a running batch included), sampling is
//! deterministic for a seed and independent of batching, stop strings cut the text; the chat template renders what
//! transformers renders, and greedy output equals transformers' for one
//! prompt; generation resumes from finished samples (a killed `evaluate`
//! from its journal) with the results of an uninterrupted run; prompt-lookup
//! drafts change no token at any batch.

use std::sync::OnceLock;

use evaluate::chat::{render_model_chat, ChatMessage};
use evaluate::generate::{generate, FinishReason, GenerationConfig, GenerationRequest};
use model::{load_model, select_device, Decoder, DeviceChoice, LoadedModel};

struct Smol {
    loaded: LoadedModel,
    model: Decoder,
}

fn smol() -> &'static Smol {
    static SMOL: OnceLock<Smol> = OnceLock::new();
    SMOL.get_or_init(|| {
        let loaded = load_model(&testkit::smollm2_gguf()).unwrap();
        let model = loaded.build(&select_device(DeviceChoice::Cpu).unwrap().device).unwrap();
        Smol { loaded, model }
    })
}

fn prompts() -> Vec<String> {
    vec!["The capital of France is".to_string(), "def fibonacci(n):".to_string(), "Question: What is 12 plus 30?\nAnswer:".to_string()]
}

fn greedy(max_new_tokens: usize, use_cache: bool) -> GenerationConfig {
    GenerationConfig { max_new_tokens, use_cache, ..GenerationConfig::default() }
}

#[test]
fn greedy_with_the_cache_equals_greedy_without_it_token_for_token() {
    let s = smol();
    let tok = s.loaded.tokenizer().unwrap();
    let cached = generate(&s.model, tok, &prompts(), &greedy(24, true), 1, |_| {}).unwrap();
    let uncached = generate(&s.model, tok, &prompts(), &greedy(24, false), 1, |_| {}).unwrap();
    for (i, (c, u)) in cached.iter().zip(&uncached).enumerate() {
        assert!(!c.tokens.is_empty(), "prompt {i}: nothing generated");
        assert_eq!(c.tokens, u.tokens, "prompt {i}: cached {:?} vs uncached {:?}", c.text, u.text);
        assert_eq!(c.text, u.text);
    }
}

#[test]
fn batched_prompts_of_different_lengths_equal_one_at_a_time() {
    let s = smol();
    let tok = s.loaded.tokenizer().unwrap();
    let lengths: Vec<usize> = prompts().iter().map(|p| tok.encode(p, true).unwrap().len()).collect();
    assert!(lengths.iter().any(|&l| l != lengths[0]), "the prompts must differ in length to exercise padding: {lengths:?}");
    let single = generate(&s.model, tok, &prompts(), &greedy(24, true), 1, |_| {}).unwrap();
    let batched = generate(&s.model, tok, &prompts(), &greedy(24, true), 3, |_| {}).unwrap();
    let batched_uncached = generate(&s.model, tok, &prompts(), &greedy(8, false), 3, |_| {}).unwrap();
    for (i, (a, b)) in single.iter().zip(&batched).enumerate() {
        assert_eq!(a.tokens, b.tokens, "prompt {i}: one at a time {:?} vs batched {:?}", a.text, b.text);
        assert_eq!(a.tokens[..8], batched_uncached[i].tokens[..], "prompt {i}: batched without the cache");
    }
}

#[test]
fn prompts_joining_a_batch_as_rows_finish_equal_one_at_a_time() {
    let s = smol();
    let tok = s.loaded.tokenizer().unwrap();
    let mut many = prompts();
    many.extend(["Once upon a time".to_string(), "import numpy as np\nx = np.".to_string(), "1, 2, 3, 4,".to_string()]);
    // A stop string ends rows at different steps, so later prompts join a batch already decoding.
    let config = GenerationConfig { stop: vec!["\n".into()], ..greedy(20, true) };
    let single = generate(&s.model, tok, &many, &config, 1, |_| {}).unwrap();
    let lengths: Vec<usize> = single.iter().map(|g| g.tokens.len()).collect();
    assert!(lengths.iter().any(|&l| l != lengths[0]), "rows must finish at different steps to exercise joining: {lengths:?}");
    for batch in [2, 4] {
        let mut finished = 0;
        let batched = generate(&s.model, tok, &many, &config, batch, |n| finished += n).unwrap();
        assert_eq!(finished, many.len(), "batch {batch}: progress counts every prompt once");
        for (i, (a, b)) in single.iter().zip(&batched).enumerate() {
            assert_eq!((&a.tokens, &a.text, a.finish), (&b.tokens, &b.text, b.finish), "batch {batch}, prompt {i}");
        }
    }
}

#[test]
fn prompt_lookup_drafts_change_no_token_at_any_batch() {
    let s = smol();
    let tok = s.loaded.tokenizer().unwrap();
    let mut many = prompts();
    many.extend([
        "1, 2, 3, 4, 1, 2, 3, 4, 1, 2,".to_string(),
        "def add(a, b):\n    return a + b\n\n\ndef add3(a, b, c):\n    return".to_string(),
        "The cat sat on the mat. The dog sat on the".to_string(),
    ]);
    // Rows end by the token budget, by a stop string or by EOS, inside a draft or not.
    let config = GenerationConfig { stop: vec!["\n\n\n".into()], ..greedy(40, true) };
    let plain = generate(&s.model, tok, &many, &GenerationConfig { draft_tokens: 0, ..config.clone() }, 1, |_| {}).unwrap();
    for batch in [1, 2, 5] {
        let before = evaluate::generate::drafted_tokens_on_this_thread();
        let drafted = generate(&s.model, tok, &many, &config, batch, |_| {}).unwrap();
        let taken = evaluate::generate::drafted_tokens_on_this_thread() - before;
        let total: usize = drafted.iter().map(|g| g.tokens.len()).sum();
        assert!(taken >= 10, "batch {batch}: only {taken} of {total} tokens came from drafts: the drafts were hardly checked");
        for (i, (a, b)) in plain.iter().zip(&drafted).enumerate() {
            assert_eq!((&a.tokens, &a.text, a.finish), (&b.tokens, &b.text, b.finish), "batch {batch}, prompt {i}");
        }
    }
}

#[test]
fn sampling_is_deterministic_for_a_seed_and_independent_of_batching() {
    let s = smol();
    let tok = s.loaded.tokenizer().unwrap();
    let config = GenerationConfig { max_new_tokens: 8, temperature: 0.8, top_p: 0.95, seed: 7, ..GenerationConfig::default() };
    let few = &prompts()[..2];
    let request = GenerationRequest { model: &s.model, tokenizer: tok, prompts: few, samples: 3, config: &config, batch: 1 };
    let a = request.run(|_| {}).unwrap();
    let b = GenerationRequest { batch: 4, ..request }.run(|_| {}).unwrap();
    assert_eq!(a, b, "same seed, batch 1 vs batch 4");
    assert_eq!(a.len(), 2);
    assert!(a.iter().all(|samples| samples.len() == 3));
    // Samples of one prompt draw from different streams: at temperature 0.8 they differ.
    assert!(a[0][0].tokens != a[0][1].tokens || a[0][1].tokens != a[0][2].tokens, "{:?}", a[0]);
    let other = GenerationConfig { seed: 8, ..config.clone() };
    let c = GenerationRequest { config: &other, batch: 4, ..request }.run(|_| {}).unwrap();
    assert_ne!(a, c, "seeds 7 and 8 gave the same samples");
}

#[test]
fn stop_strings_cut_the_text_before_them() {
    let s = smol();
    let tok = s.loaded.tokenizer().unwrap();
    let full = generate(&s.model, tok, &prompts()[1..2], &greedy(16, true), 1, |_| {}).unwrap().remove(0);
    assert_eq!(full.finish, FinishReason::Length);
    // A stop string taken from the middle of the unstopped text.
    let chars: Vec<char> = full.text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let cut_at = full.text.find(&stop).unwrap();
    let config = GenerationConfig { stop: vec!["never appears \u{1F600}".into(), stop.clone()], ..greedy(16, true) };
    let stopped = generate(&s.model, tok, &prompts()[1..2], &config, 1, |_| {}).unwrap().remove(0);
    assert_eq!(stopped.finish, FinishReason::Stop, "stop {stop:?} in {:?}", full.text);
    assert_eq!(stopped.text, full.text[..cut_at], "stop {stop:?}");
    assert!(full.tokens.starts_with(&stopped.tokens));
    // The last token is the one that completed the stop string.
    let before = tok.decode(&stopped.tokens[..stopped.tokens.len() - 1]).unwrap();
    assert!(!before.contains(&stop), "{before:?} already held {stop:?}");
}

#[test]
fn chat_template_renders_what_transformers_renders() {
    let s = smol();
    // Reference: transformers 4.x, AutoTokenizer.from_pretrained(models_dir,
    // gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf").apply_chat_template(
    // [{"role": "user", "content": "What is 2+2?"}], tokenize=False, add_generation_prompt=True).
    let expected = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
                    <|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n";
    let got = render_model_chat(&s.loaded, &[ChatMessage::user("What is 2+2?")], true).unwrap();
    assert_eq!(got, expected);
    // Same source, with a system message, a whole exchange and add_generation_prompt=False.
    let messages = [
        ChatMessage { role: "system".into(), content: "Be brief.".into() },
        ChatMessage::user("Hi"),
        ChatMessage { role: "assistant".into(), content: "Hello!".into() },
        ChatMessage::user("Bye"),
    ];
    let expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
                    <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n";
    assert_eq!(render_model_chat(&s.loaded, &messages, false).unwrap(), expected);
}

#[test]
fn greedy_output_matches_transformers() {
    let s = smol();
    let tok = s.loaded.tokenizer().unwrap();
    // Reference: transformers, AutoModelForCausalLM.from_pretrained(models_dir,
    // gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=float32).generate(
    // tokenizer("def fibonacci(n):").input_ids, max_new_tokens=24, do_sample=False).
    let prompt = "def fibonacci(n):".to_string();
    assert_eq!(tok.encode(&prompt, true).unwrap(), vec![1604, 3987, 46477, 24, 94, 727]);
    let expected = [472, 585, 304, 1758, 216, 32, 42, 448, 1003, 216, 33, 472, 1003, 304, 1672, 3987, 46477, 24, 94, 731, 216, 33, 25, 198];
    let got = generate(&s.model, tok, &[prompt], &greedy(24, true), 1, |_| {}).unwrap().remove(0);
    assert_eq!(got.tokens, expected, "{:?}", got.text);
    assert_eq!(got.text, "\n    if n == 0:\n        return 1\n    return n * fibonacci(n - 1)\n");
}

/// Runs `evaluate translation` on the first Multi30k test pairs with SmolLM2 into `out`.
fn translation_run(out: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_evaluate"));
    cmd.args(["translation", "--device", "cpu", "--quiet", "--batch", "1", "--limit", "12", "--max-new-tokens", "24", "--model"])
        .arg(testkit::smollm2_gguf())
        .arg("--data")
        .arg(testkit::shared_data().join("multi30k-en-de"))
        .arg("--out")
        .arg(out);
    cmd
}

#[test]
fn a_killed_evaluation_resumes_from_its_journal_with_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean.parquet");
    let run = translation_run(&clean).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let clean_metric = String::from_utf8(run.stdout).unwrap().lines().last().map(str::to_string);
    let journal_of = |out: &std::path::Path| out.with_file_name(format!("{}.journal.jsonl", out.file_name().unwrap().to_string_lossy()));
    assert!(!journal_of(&clean).exists(), "a finished run removes its journal");

    // Kill a second run once its journal holds two generations (a header line and two entries).
    let out = dir.path().join("resumed.parquet");
    let mut child = translation_run(&out).stderr(std::process::Stdio::null()).spawn().unwrap();
    let journal = journal_of(&out);
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&journal).map_or(0, |t| t.lines().count()) < 3 {
        assert!(child.try_wait().unwrap().is_none(), "the run finished before it could be stopped");
        assert!(started.elapsed().as_secs() < 300, "no generation was journaled in 300 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "a killed run wrote no results");
    let held = std::fs::read_to_string(&journal).unwrap().lines().count() - 1;

    let run = translation_run(&out).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("resuming: {held} of 12 generations")), "{stderr}");
    assert!(!journal.exists());
    let items = |p: &std::path::Path| artifacts::read_items(&artifacts::items_path_for(p)).unwrap().1;
    assert_eq!(items(&out), items(&clean), "the resumed run's items equal an uninterrupted run's");
    assert_eq!(String::from_utf8(run.stdout).unwrap().lines().last().map(str::to_string), clean_metric);
}

#[test]
fn generation_resumed_from_finished_samples_equals_a_whole_run() {
    let s = smol();
    let tok = s.loaded.tokenizer().unwrap();
    let config = GenerationConfig { max_new_tokens: 8, temperature: 0.8, top_p: 0.95, seed: 3, ..GenerationConfig::default() };
    let all = prompts();
    let request = GenerationRequest { model: &s.model, tokenizer: tok, prompts: &all, samples: 2, config: &config, batch: 2 };
    let whole = request.run(|_| {}).unwrap();
    // Two of the six samples already finished (as a journal would give them back).
    let finished: evaluate::journal::Finished = [((0, 1), whole[0][1].clone()), ((2, 0), whole[2][0].clone())].into_iter().collect();
    let mut generated = Vec::new();
    let resumed = request
        .resume(&finished, |p, j, _| {
            generated.push((p, j));
            Ok(())
        })
        .unwrap();
    assert_eq!(resumed, whole);
    generated.sort();
    assert_eq!(generated, vec![(0, 0), (1, 0), (1, 1), (2, 1)], "only the samples not finished are generated");
}

/// Last-token logits of `rows` (left-padded to one length) prefilled together.
fn prefill_logits(model: &Decoder, rows: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let longest = rows.iter().map(Vec::len).max().unwrap();
    let padding: Vec<usize> = rows.iter().map(|r| longest - r.len()).collect();
    let padded: Vec<Vec<u32>> =
        rows.iter().zip(&padding).map(|(r, &p)| std::iter::repeat_n(r[0], p).chain(r.iter().copied()).collect()).collect();
    let logits = model.forward_cached_last(&padded, &mut model.new_padded_cache(padding)).unwrap();
    let values = logits.into_data().try_into_vec::<f32>().unwrap();
    values.chunks_exact(values.len() / rows.len()).map(<[f32]>::to_vec).collect()
}

#[test]
fn a_prompt_prefilled_on_its_own_side_of_the_few_row_bound_has_the_same_bits_in_a_batch() {
    let s = smol();
    let tok = s.loaded.tokenizer().unwrap();
    let short = tok.encode("def fibonacci(n):", true).unwrap();
    let other_short = tok.encode("Question: What is 12 plus 30? Think step by step.\nAnswer:", true).unwrap();
    let long = tok.encode(&evaluate::gsm8k::prompt("How many clips did Natalia sell?"), true).unwrap();
    let medium: Vec<u32> = short.iter().copied().cycle().take(model::FEW_ROWS + 16).collect();
    assert!(2 * other_short.len() <= model::FEW_ROWS && long.len() > model::FEW_ROWS, "{} and {} tokens", other_short.len(), long.len());
    let alone = |row: &Vec<u32>| prefill_logits(&s.model, std::slice::from_ref(row)).remove(0);
    // Few rows in all: the few-row kernels, as alone.
    assert_eq!(prefill_logits(&s.model, &[other_short.clone(), short.clone()])[1], alone(&short));
    // Past the bound alone and in the batch: the general matmul both times.
    assert_eq!(prefill_logits(&s.model, &[long.clone(), medium.clone()])[1], alone(&medium));
    // What the generator avoids: a short prompt in a forward past the bound rounds differently.
    assert_ne!(prefill_logits(&s.model, &[long, short.clone()])[1], alone(&short));
}

#[test]
fn a_prompt_continued_from_a_cached_prefix_has_the_bits_of_its_whole_prefill() {
    let s = smol();
    let tok = s.loaded.tokenizer().unwrap();
    let prompt = tok.encode(&evaluate::gsm8k::prompt("How many clips did Natalia sell?"), true).unwrap();
    let whole = prefill_logits(&s.model, std::slice::from_ref(&prompt)).remove(0);
    // The rest past the few-row bound takes the general matmul, as the whole prompt does.
    let split = prompt.len() - model::FEW_ROWS - 5;
    let mut cache = s.model.new_padded_cache(vec![0]);
    s.model.forward_cached_last(&[prompt[..split].to_vec()], &mut cache).unwrap();
    let rest = s.model.forward_cached_last(&[prompt[split..].to_vec()], &mut cache).unwrap();
    assert_eq!(rest.into_data().try_into_vec::<f32>().unwrap(), whole);
}

#[test]
fn prompts_sharing_a_few_shot_prefix_generate_what_each_generates_alone() {
    let s = smol();
    let tok = s.loaded.tokenizer().unwrap();
    let questions = ["How many clips did Natalia sell?", "What is 12 plus 30?", "A farmer has 3 cows and buys 4 more. How many cows?"];
    let prompts: Vec<String> = questions.iter().map(|q| evaluate::gsm8k::prompt(q)).collect();
    let tokens: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p, true).unwrap()).collect();
    let shared = evaluate::generate::shared_prefix_tokens(&tokens.iter().map(Vec::as_slice).collect::<Vec<_>>());
    assert!(shared >= evaluate::generate::MIN_SHARED_PREFIX, "the 8-shot prompts share {shared} tokens");
    let together = generate(&s.model, tok, &prompts, &greedy(32, true), 3, |_| {}).unwrap();
    for (i, prompt) in prompts.iter().enumerate() {
        let alone = generate(&s.model, tok, std::slice::from_ref(prompt), &greedy(32, true), 1, |_| {}).unwrap().remove(0);
        assert_eq!(together[i].tokens, alone.tokens, "prompt {i}: shared prefix {:?} vs alone {:?}", together[i].text, alone.text);
    }
}
