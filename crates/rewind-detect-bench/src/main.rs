//! Detection benchmark for rewind's sequential tests.
//!
//! Simulated request streams with known ground truth, watched for one hour after a deploy by
//! rewind's anytime-valid tests, by Wald's SPRT told the true rates (the reference optimum)
//! and by re-implementations of the interval-based checks of Argo Rollouts, Flagger and
//! Kayenta. Prints markdown tables: false-alarm rates on streams without regression and time
//! to detect on streams with one, then checks the goals.
//!
//! Traffic model: requests arrive at fixed spacing (exactly `rps` per second, request `j`
//! at `(j + 1) / rps` seconds after the deploy); each request independently fails or draws a
//! lognormal latency. Fixed spacing keeps the interval-based peers' sample sizes exact, so
//! their behaviour is not blurred by Poisson noise in the counts.
//!
//! Usage: `rewind-detect-bench [--quick] [--streams N] [--reg-streams M] [--threads T]`.

mod sim;

use sim::{Experiment, Row, Summary};
use std::time::Instant;

struct Args {
    null_streams: usize,
    reg_streams: usize,
    threads: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        null_streams: 1000,
        reg_streams: 300,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let mut it = std::env::args().skip(1);
    let number = |v: Option<String>, flag: &str| -> usize {
        v.and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            eprintln!("{flag} needs a positive number");
            std::process::exit(2)
        })
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => {
                args.null_streams = 100;
                args.reg_streams = 40;
            }
            "--streams" => args.null_streams = number(it.next(), "--streams"),
            "--reg-streams" => args.reg_streams = number(it.next(), "--reg-streams"),
            "--threads" => args.threads = number(it.next(), "--threads").max(1),
            "-h" | "--help" => {
                println!(
                    "rewind-detect-bench [--quick] [--streams N] [--reg-streams M] [--threads T]\n\
                     --streams N      streams without regression per setting (default 1000)\n\
                     --reg-streams M  streams per regression setting (default 300)\n\
                     --quick          100 / 40 streams, a smoke run"
                );
                std::process::exit(0);
            }
            other => {
                eprintln!("unknown argument {other}; try --help");
                std::process::exit(2);
            }
        }
    }
    args
}

fn main() {
    let args = parse_args();
    let start = Instant::now();
    println!("# rewind detection benchmark\n");
    println!(
        "Streams: {} without regression per setting, {} per regression setting; \
         1-hour window; α = {}; {} worker threads.\n",
        args.null_streams,
        args.reg_streams,
        sim::ALPHA,
        args.threads
    );
    let mut summaries: Vec<Summary> = Vec::new();
    for exp in [Experiment::Errors, Experiment::Latency] {
        println!("{}", exp.intro());
        for &rps in sim::TRAFFIC {
            let t = Instant::now();
            let rows: Vec<Row> = exp
                .settings()
                .iter()
                .map(|s| sim::run_setting(exp, rps, s, &args_to_counts(&args, s)))
                .collect();
            let summary = Summary::new(exp, rps, rows);
            print!("{}", summary.table());
            println!("_(computed in {:.1} s)_\n", t.elapsed().as_secs_f64());
            summaries.push(summary);
        }
    }
    println!("## Goals\n");
    print!("{}", sim::goals(&summaries));
    println!("\nTotal runtime {:.1} s.", start.elapsed().as_secs_f64());
}

fn args_to_counts(args: &Args, s: &sim::Setting) -> sim::Counts {
    sim::Counts {
        streams: if s.null_like {
            args.null_streams
        } else {
            args.reg_streams
        },
        threads: args.threads,
    }
}
