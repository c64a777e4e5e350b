//! How long a watch list of 100,000 watches takes to parse and validate.
//!
//! Run: `cargo bench -p polld-config --bench parse_watchlist`
//! (prints the best and median of 5 runs; figures are kept in BENCHMARKS.md).

use std::fmt::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use polld_config::Config;

fn watch_list(n: usize) -> String {
    let mut text = String::from(
        "[daemon]\nlisten = \"127.0.0.1:8377\"\n\n[defaults]\ninterval = \"5m\"\nmax_body = \"1MiB\"\n\n",
    );
    for i in 0..n {
        let _ = write!(
            text,
            "[[watch]]\nid = \"watch-{i}\"\nurl = \"https://host{}.example.org/feeds/{i}.json\"\n",
            i % 500
        );
        match i % 4 {
            0 => text.push_str("interval = \"10m\"\nheaders = { Accept = \"application/json\" }\n"),
            1 => text.push_str("schedule = \"0 */5 * * * *\"\n"),
            2 => text.push_str(
                "[watch.cursor]\nparam = \"since\"\nfrom = \"json:/next\"\ninitial = \"0\"\n",
            ),
            _ => text.push_str("backoff = 2.0\njitter = 0.2\n"),
        }
        text.push('\n');
    }
    text
}

fn main() {
    let n = 100_000;
    let text = watch_list(n);
    let mut times: Vec<Duration> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let config = Config::from_str_with_env(Path::new("bench.toml"), &text, |_| None)
                .expect("the generated list is valid");
            assert_eq!(config.watches.len(), n);
            start.elapsed()
        })
        .collect();
    times.sort();
    println!(
        "parse+validate {n} watches ({:.1} MiB of TOML): best {:.0} ms, median {:.0} ms",
        text.len() as f64 / (1 << 20) as f64,
        times[0].as_secs_f64() * 1e3,
        times[2].as_secs_f64() * 1e3
    );
}
