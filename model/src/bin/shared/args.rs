//! Command-line options of the model crate's benchmark binaries.

/// The value after `name` on the command line, or `default` where it is
/// missing or does not parse.
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Every value given after `name` on the command line (an option that may repeat), in order.
#[allow(dead_code, reason = "not every benchmark takes a repeated option")]
pub fn repeated_arg(name: &str) -> Vec<String> {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2).filter(|w| w[0] == name).map(|w| w[1].clone()).collect()
}
