//! The Hugging Face data sets the paper calibrated each domain with, and how
//! to turn their records into documents, so that
//! `datasets collect --preset NAME --from downloaded.parquet` needs no more flags.

/// One preset: a Hugging Face data set and the text to take from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// The preset's name (`--preset NAME`).
    pub name: &'static str,
    /// The domain its documents get.
    pub domain: &'static str,
    /// The Hugging Face data set id.
    pub dataset: &'static str,
    /// The data set's configuration (subset), if it needs one.
    pub config: Option<&'static str>,
    /// The template (or single `{field}`) that makes a record's text.
    pub template: &'static str,
    /// A note on the fields.
    pub note: &'static str,
}

/// Every preset, grouped by domain.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "python-alpaca",
        domain: "python",
        dataset: "iamtarun/python_code_instructions_18k_alpaca",
        config: None,
        template: "{prompt}",
        note: "`prompt` holds instruction, input and the Python output",
    },
    Preset {
        name: "apps",
        domain: "python",
        dataset: "codeparrot/apps",
        config: None,
        template: "{solutions}",
        note: "`solutions` is a JSON string holding a list; its solutions are joined with blank lines",
    },
    Preset {
        name: "github-python",
        domain: "python",
        dataset: "thomwolf/github-python",
        config: None,
        template: "{content}",
        note: "file contents",
    },
    Preset {
        name: "java",
        domain: "java",
        dataset: "semeru/code-text-java",
        config: None,
        template: "{code}",
        note: "one method per record",
    },
    Preset {
        name: "javascript",
        domain: "javascript",
        dataset: "semeru/code-text-javascript",
        config: None,
        template: "{code}",
        note: "one function per record",
    },
    Preset {
        name: "cpp",
        domain: "cpp",
        dataset: "nguyentruong-ins/nhlcoding_cleaned_cpp_dataset",
        config: None,
        template: "{solution}",
        note: "competitive-programming solutions",
    },
    Preset {
        name: "orca-math",
        domain: "math",
        dataset: "microsoft/orca-math-word-problems-200k",
        config: None,
        template: "{question}\\n{answer}",
        note: "word problem and worked answer",
    },
    Preset {
        name: "metamathqa",
        domain: "math",
        dataset: "meta-math/MetaMathQA",
        config: None,
        template: "{query}\\n{response}",
        note: "",
    },
    Preset {
        name: "mathinstruct",
        domain: "math",
        dataset: "TIGER-Lab/MathInstruct",
        config: None,
        template: "{instruction}\\n{output}",
        note: "",
    },
    Preset {
        name: "openbookqa",
        domain: "csr",
        dataset: "allenai/openbookqa",
        config: Some("main"),
        template: "{question_stem}\\n{choices.text}",
        note: "`choices` is a struct of lists; its texts are joined with blank lines",
    },
    Preset {
        name: "hellaswag",
        domain: "csr",
        dataset: "Rowan/hellaswag",
        config: None,
        template: "{ctx}\\n{endings}",
        note: "context and its candidate endings",
    },
    Preset {
        name: "commonsense-qa",
        domain: "csr",
        dataset: "tau/commonsense_qa",
        config: None,
        template: "{question}\\n{choices.text}",
        note: "question and its answer choices",
    },
    Preset {
        name: "opus-books",
        domain: "translation",
        dataset: "Helsinki-NLP/opus_books",
        config: Some("en-fr"),
        template: "{translation.en}\\n{translation.fr}",
        note: "`translation` is a struct {en, fr}",
    },
    Preset {
        name: "wmt14-fr-en",
        domain: "translation",
        dataset: "wmt/wmt14",
        config: Some("fr-en"),
        template: "{translation.en}\\n{translation.fr}",
        note: "`translation` is a struct {en, fr}",
    },
    Preset { name: "c4", domain: "general", dataset: "allenai/c4", config: Some("en"), template: "{text}", note: "web text" },
];

/// The preset called `name`, if any.
pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// The names of all presets, comma separated.
pub fn names() -> String {
    PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
}

impl Preset {
    /// The `collect` command that turns a downloaded file of this data set into documents.
    pub fn command(&self) -> String {
        format!("datasets collect --preset {} --from {}.parquet --out {}.documents.parquet", self.name, self.name, self.name)
    }

    /// The field of a single-field template, for display (`prompt`), or `None` for a multi-field template.
    pub fn single_field(&self) -> Option<&'static str> {
        let inner = self.template.strip_prefix('{')?.strip_suffix('}')?;
        (!inner.contains('{') && !inner.contains('}')).then_some(inner)
    }
}

/// The presets as a text table with the exact `collect` command of each.
pub fn table() -> String {
    let mut out = String::new();
    out.push_str("Calibration data sets of the paper, per domain (download a split as Parquet or JSONL from Hugging Face, then run the command):\n\n");
    let w_name = PRESETS.iter().map(|p| p.name.len()).max().unwrap_or(0);
    let w_dom = PRESETS.iter().map(|p| p.domain.len()).max().unwrap_or(0);
    let w_ds = PRESETS.iter().map(|p| p.dataset.len() + p.config.map_or(0, |c| c.len() + 3)).max().unwrap_or(0);
    out.push_str(&format!("{:w_name$}  {:w_dom$}  {:w_ds$}  text\n", "preset", "domain", "dataset"));
    for p in PRESETS {
        let ds = match p.config {
            Some(c) => format!("{} ({c})", p.dataset),
            None => p.dataset.to_string(),
        };
        let text = match p.single_field() {
            Some(f) => format!("--field {f}"),
            None => format!("--template \"{}\"", p.template),
        };
        out.push_str(&format!("{:w_name$}  {:w_dom$}  {:w_ds$}  {text}\n", p.name, p.domain, ds));
        if !p.note.is_empty() {
            out.push_str(&format!("{:w_name$}  {:w_dom$}  {:w_ds$}  ({})\n", "", "", "", p.note));
        }
        out.push_str(&format!("{:w_name$}  $ {}\n", "", p.command()));
    }
    out
}
