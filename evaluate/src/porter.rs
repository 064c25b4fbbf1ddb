//! The Porter (1980) stemmer for English, following Martin Porter's C
//! reference implementation: words of one or two letters are left alone, and
//! step 2 has the paper's rules plus the reference's `bli` → `ble` and
//! `logi` → `log`. Input is expected lower-case; words with characters other
//! than ASCII letters are returned unchanged.

/// Whether `w[i]` is a consonant in Porter's sense (`y` after a consonant is a vowel).
fn cons(w: &[u8], i: usize) -> bool {
    match w[i] {
        b'a' | b'e' | b'i' | b'o' | b'u' => false,
        b'y' => i == 0 || !cons(w, i - 1),
        _ => true,
    }
}

/// Porter's measure m of `w[..len]`: the number of VC sequences.
fn measure(w: &[u8], len: usize) -> usize {
    let mut m = 0;
    let mut i = 0;
    while i < len && cons(w, i) {
        i += 1;
    }
    loop {
        while i < len && !cons(w, i) {
            i += 1;
        }
        if i >= len {
            return m;
        }
        while i < len && cons(w, i) {
            i += 1;
        }
        m += 1;
    }
}

fn has_vowel(w: &[u8], len: usize) -> bool {
    (0..len).any(|i| !cons(w, i))
}

/// `w[..len]` ends in a double consonant.
fn double_cons(w: &[u8], len: usize) -> bool {
    len >= 2 && w[len - 1] == w[len - 2] && cons(w, len - 1)
}

/// `w[..len]` ends consonant-vowel-consonant, the last not w, x or y.
fn cvc(w: &[u8], len: usize) -> bool {
    len >= 3 && cons(w, len - 3) && !cons(w, len - 2) && cons(w, len - 1) && !matches!(w[len - 1], b'w' | b'x' | b'y')
}

/// Replaces the longest suffix of `rules` that `w` ends with by its
/// replacement when the stem before it has measure > `min_m`; returns whether a
/// suffix matched (whatever the condition said).
fn replace_longest(w: &mut Vec<u8>, rules: &[(&str, &str)], cond: impl Fn(&[u8], usize) -> bool) -> bool {
    let Some((suffix, repl)) = rules.iter().filter(|(s, _)| w.ends_with(s.as_bytes()) && w.len() > s.len()).max_by_key(|(s, _)| s.len())
    else {
        return false;
    };
    let stem = w.len() - suffix.len();
    if cond(w, stem) {
        w.truncate(stem);
        w.extend_from_slice(repl.as_bytes());
    }
    true
}

/// The Porter stem of a lower-case English word.
pub fn stem(word: &str) -> String {
    if word.len() <= 2 || !word.bytes().all(|b| b.is_ascii_lowercase()) {
        return word.to_string();
    }
    let mut w = word.as_bytes().to_vec();
    step1ab(&mut w);
    // Step 1c.
    if w.last() == Some(&b'y') && has_vowel(&w, w.len() - 1) {
        *w.last_mut().expect("non-empty") = b'i';
    }
    replace_longest(
        &mut w,
        &[
            ("ational", "ate"),
            ("tional", "tion"),
            ("enci", "ence"),
            ("anci", "ance"),
            ("izer", "ize"),
            ("bli", "ble"),
            ("alli", "al"),
            ("entli", "ent"),
            ("eli", "e"),
            ("ousli", "ous"),
            ("ization", "ize"),
            ("ation", "ate"),
            ("ator", "ate"),
            ("alism", "al"),
            ("iveness", "ive"),
            ("fulness", "ful"),
            ("ousness", "ous"),
            ("aliti", "al"),
            ("iviti", "ive"),
            ("biliti", "ble"),
            ("logi", "log"),
        ],
        |w, s| measure(w, s) > 0,
    );
    replace_longest(
        &mut w,
        &[("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"), ("ful", ""), ("ness", "")],
        |w, s| measure(w, s) > 0,
    );
    replace_longest(
        &mut w,
        &[
            ("al", ""),
            ("ance", ""),
            ("ence", ""),
            ("er", ""),
            ("ic", ""),
            ("able", ""),
            ("ible", ""),
            ("ant", ""),
            ("ement", ""),
            ("ment", ""),
            ("ent", ""),
            ("ion", ""),
            ("ou", ""),
            ("ism", ""),
            ("ate", ""),
            ("iti", ""),
            ("ous", ""),
            ("ive", ""),
            ("ize", ""),
        ],
        |w, s| measure(w, s) > 1 && (!w[s..].starts_with(b"ion") || matches!(w[s - 1], b's' | b't')),
    );
    // Step 5a.
    if w.last() == Some(&b'e') {
        let s = w.len() - 1;
        let m = measure(&w, s);
        if m > 1 || (m == 1 && !cvc(&w, s)) {
            w.truncate(s);
        }
    }
    // Step 5b.
    if w.last() == Some(&b'l') && double_cons(&w, w.len()) && measure(&w, w.len()) > 1 {
        w.pop();
    }
    String::from_utf8(w).expect("ASCII letters")
}

fn step1ab(w: &mut Vec<u8>) {
    // Step 1a.
    if w.ends_with(b"sses") || w.ends_with(b"ies") {
        w.truncate(w.len() - 2);
    } else if w.ends_with(b"s") && !w.ends_with(b"ss") {
        w.pop();
    }
    // Step 1b.
    if w.ends_with(b"eed") {
        if measure(w, w.len() - 3) > 0 {
            w.pop();
        }
        return;
    }
    let cut = if w.ends_with(b"ed") && has_vowel(w, w.len() - 2) {
        2
    } else if w.ends_with(b"ing") && has_vowel(w, w.len() - 3) {
        3
    } else {
        return;
    };
    w.truncate(w.len() - cut);
    if w.ends_with(b"at") || w.ends_with(b"bl") || w.ends_with(b"iz") {
        w.push(b'e');
    } else if double_cons(w, w.len()) && !matches!(w[w.len() - 1], b'l' | b's' | b'z') {
        w.pop();
    } else if measure(w, w.len()) == 1 && cvc(w, w.len()) {
        w.push(b'e');
    }
}

#[cfg(test)]
mod tests {
    use super::stem;

    /// Examples from Porter's 1980 paper, step by step.
    #[test]
    fn paper_examples() {
        let cases = [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "ti"),
            ("caress", "caress"),
            ("cats", "cat"),
            ("feed", "feed"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("bled", "bled"),
            ("motoring", "motor"),
            ("sing", "sing"),
            ("conflated", "conflat"),
            ("troubled", "troubl"),
            ("sized", "size"),
            ("hopping", "hop"),
            ("tanned", "tan"),
            ("falling", "fall"),
            ("hissing", "hiss"),
            ("fizzed", "fizz"),
            ("failing", "fail"),
            ("filing", "file"),
            ("happy", "happi"),
            ("sky", "sky"),
            ("relational", "relat"),
            ("conditional", "condit"),
            ("rational", "ration"),
            ("valenci", "valenc"),
            ("digitizer", "digit"),
            ("conformabli", "conform"),
            ("radicalli", "radic"),
            ("differentli", "differ"),
            ("vileli", "vile"),
            ("analogousli", "analog"),
            ("vietnamization", "vietnam"),
            ("predication", "predic"),
            ("operator", "oper"),
            ("feudalism", "feudal"),
            ("decisiveness", "decis"),
            ("hopefulness", "hope"),
            ("callousness", "callous"),
            ("formaliti", "formal"),
            ("sensitiviti", "sensit"),
            ("sensibiliti", "sensibl"),
            ("triplicate", "triplic"),
            ("formative", "form"),
            ("formalize", "formal"),
            ("electriciti", "electr"),
            ("electrical", "electr"),
            ("hopeful", "hope"),
            ("goodness", "good"),
            ("revival", "reviv"),
            ("allowance", "allow"),
            ("inference", "infer"),
            ("airliner", "airlin"),
            ("gyroscopic", "gyroscop"),
            ("adjustable", "adjust"),
            ("defensible", "defens"),
            ("irritant", "irrit"),
            ("replacement", "replac"),
            ("adjustment", "adjust"),
            ("dependent", "depend"),
            ("adoption", "adopt"),
            ("homologou", "homolog"),
            ("communism", "commun"),
            ("activate", "activ"),
            ("angulariti", "angular"),
            ("homologous", "homolog"),
            ("effective", "effect"),
            ("bowdlerize", "bowdler"),
            ("probate", "probat"),
            ("rate", "rate"),
            ("cease", "ceas"),
            ("controll", "control"),
            ("roll", "roll"),
            ("generalizations", "gener"),
            ("oscillators", "oscil"),
            ("is", "is"),
            ("running", "run"),
            ("dogs", "dog"),
        ];
        for (word, expected) in cases {
            assert_eq!(stem(word), expected, "stem({word})");
        }
    }
}
