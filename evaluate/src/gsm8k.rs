//! GSM8K 8-shot chain-of-thought: the prompt of lm-evaluation-harness's
//! `gsm8k_cot` (the 8 exemplars of Wei et al., 2022, each
//! `Q: {question}\nA: {chain of thought} The answer is {n}.`, joined by a
//! blank line, then `Q: {question}\nA:`), the answer extraction and the
//! exact match of the final number.

/// The 8 chain-of-thought exemplars of Wei et al. (2022): (question, answer).
pub const EXEMPLARS: [(&str, &str); 8] = [
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The answer is 6.",
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39. The answer is 39.",
    ),
    (
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason give to Denny?",
        "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. The answer is 8.",
    ),
    (
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
        "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. The answer is 9.",
    ),
    (
        "There were nine computers in the server room. Five more computers were installed each day, from monday to thursday. How many computers are now in the server room?",
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29.",
    ),
    (
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls did he have at the end of wednesday?",
        "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33.",
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8.",
    ),
];

/// Where generation stops: the next exemplar's `Q:` or a blank line.
pub const STOP: [&str; 2] = ["Q:", "\n\n"];

/// The 8-shot prompt of one question.
pub fn prompt(question: &str) -> String {
    let mut p = String::new();
    for (q, a) in EXEMPLARS {
        p.push_str(&format!("Q: {q}\nA: {a}\n\n"));
    }
    p.push_str(&format!("Q: {question}\nA:"));
    p
}

/// The harness's normalisation before the exact match: commas and `$`
/// removed, one trailing `.` removed, surrounding space trimmed.
pub fn normalize(answer: &str) -> String {
    let s: String = answer.trim().chars().filter(|c| *c != ',' && *c != '$').collect();
    s.strip_suffix('.').unwrap_or(&s).trim().to_string()
}

/// The gold number of a GSM8K answer: the text after the last `####`, normalised.
pub fn gold_answer(answer: &str) -> Option<String> {
    answer.rsplit_once("####").map(|(_, n)| normalize(n)).filter(|n| !n.is_empty())
}

fn is_num_char(c: char) -> bool {
    c.is_ascii_digit() || c == '.' || c == ',' || c == '$'
}

/// Runs of `-?[$0-9.,]+` in `text` that hold a digit, in order.
fn numbers(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = None;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for (k, &(i, c)) in chars.iter().enumerate() {
        let begins = is_num_char(c) || (c == '-' && chars.get(k + 1).is_some_and(|&(_, n)| is_num_char(n)));
        match (start, begins || (start.is_some() && is_num_char(c))) {
            (None, true) => start = Some(i),
            (Some(s), false) => {
                out.push(&text[s..i]);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(&text[s..]);
    }
    out.retain(|n| n.chars().any(|c| c.is_ascii_digit()));
    out
}

/// The model's final number: the one after the first `The answer is`, else
/// the last number in the text (the harness's strict, then flexible,
/// extraction), normalised.
pub fn extract_answer(generation: &str) -> Option<String> {
    if let Some(pos) = generation.find("The answer is") {
        let after = generation[pos + "The answer is".len()..].trim_start();
        if let Some(first) = numbers(after).first().filter(|n| after.starts_with(**n)) {
            return Some(normalize(first));
        }
    }
    numbers(generation).last().map(|n| normalize(n)).filter(|n| !n.is_empty())
}

/// Whether a predicted and a gold answer are the same number (or the same text where either is not a number).
pub fn answers_match(pred: &str, gold: &str) -> bool {
    match (pred.parse::<f64>(), gold.parse::<f64>()) {
        (Ok(a), Ok(b)) => (a - b).abs() <= 1e-9 * b.abs().max(1.0),
        _ => pred.eq_ignore_ascii_case(gold),
    }
}
