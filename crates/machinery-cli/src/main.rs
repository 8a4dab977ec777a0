//! `machinery`: run a worker, send the example tasks, run the quickstart, or benchmark a
//! broker / backend pair.

mod bench;
mod steps;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use machinery::{Config, Error, Server, server_from_config};
use machinery_cli::example_tasks;

// The worker allocates and frees many small buffers per task (JSON in and out); mimalloc
// takes about a tenth less CPU per task than glibc's malloc here (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// machinery-rs: a distributed task queue compatible with Go Machinery.
#[derive(Debug, Parser)]
#[command(name = "machinery", version, about, long_about = None)]
struct Cli {
    /// Broker URL (memory://, redis://, amqp://). Default: $BROKER, the config file, or memory://.
    #[arg(long, global = true)]
    broker: Option<String>,
    /// Result backend URL. Default: $RESULT_BACKEND, the config file, or memory://.
    #[arg(long, alias = "result-backend", global = true)]
    backend: Option<String>,
    /// YAML configuration file (Go Machinery's keys).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Queue to send to / consume (default: the config's default_queue, machinery_tasks).
    #[arg(long, global = true)]
    queue: Option<String>,
    /// Log filter (tracing env-filter syntax), e.g. `info` or `machinery_core=debug`.
    #[arg(long, global = true, env = "MACHINERY_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a worker and a sender in this process on the memory drivers and print every result.
    Quickstart {
        /// Skip the ten-second long_running_task.
        #[arg(long)]
        skip_long: bool,
    },
    /// Run a worker with the example tasks until SIGINT / SIGTERM (twice = at once).
    Worker {
        /// Tasks run at once (0 = unlimited, 1 = serial).
        #[arg(long, short = 'c', default_value_t = 4)]
        concurrency: usize,
        /// Consumer tag.
        #[arg(long, default_value = "machinery_worker")]
        tag: String,
    },
    /// Send the example tasks to a running worker and print their results.
    Send {
        /// Skip the ten-second long_running_task.
        #[arg(long)]
        skip_long: bool,
        /// Seconds to wait for each result.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Measure throughput and latency (prints its figures).
    Bench(bench::BenchArgs),
}

fn load_config(cli: &Cli) -> machinery::Result<Config> {
    let mut config = match &cli.config {
        Some(path) => Config::from_yaml(path)?,
        None => {
            let mut c = Config::from_env()?;
            if std::env::var_os("BROKER").is_none() {
                c.broker = "memory://".to_owned();
            }
            if std::env::var_os("RESULT_BACKEND").is_none() {
                c.result_backend = "memory://".to_owned();
            }
            c
        }
    };
    if let Some(b) = &cli.broker {
        config.broker.clone_from(b);
    }
    if let Some(b) = &cli.backend {
        config.result_backend.clone_from(b);
    }
    if let Some(q) = &cli.queue {
        config.default_queue.clone_from(q);
    }
    config.validate()?;
    Ok(config)
}

fn init_logging(filter: Option<&str>, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter.unwrap_or(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// One line: the error and its causes.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn server(config: Config) -> machinery::Result<Server> {
    let server = server_from_config(config).await?;
    example_tasks::register(&server)?;
    Ok(server)
}

async fn run(cli: Cli) -> machinery::Result<()> {
    match &cli.command {
        Command::Quickstart { skip_long } => {
            // The quickstart prints its own lines; logs only when asked for (--log info).
            init_logging(cli.log.as_deref(), "off");
            let mut config = load_config(&cli)?;
            if cli.broker.is_none() && cli.config.is_none() {
                config.broker = "memory://".to_owned();
            }
            if cli.backend.is_none() && cli.config.is_none() {
                config.result_backend = "memory://".to_owned();
            }
            config.no_unix_signals = true;
            println!(
                "machinery quickstart: broker {}, backend {}, one worker (concurrency 4) and a sender in this process",
                machinery::redact_url(&config.broker),
                machinery::redact_url(&config.result_backend)
            );
            let server = server(config).await?;
            let worker = server
                .new_worker("quickstart", 4)
                .no_unix_signals()
                .launch();
            let outcome = steps::run_all(&server, *skip_long, Duration::from_secs(60)).await;
            worker.quit();
            worker.join().await?;
            outcome
        }
        Command::Worker { concurrency, tag } => {
            init_logging(cli.log.as_deref(), "info");
            let config = load_config(&cli)?;
            let server = server(config).await?;
            server.new_worker(tag.clone(), *concurrency).run().await
        }
        Command::Send { skip_long, timeout } => {
            init_logging(cli.log.as_deref(), "warn");
            let config = load_config(&cli)?;
            if config.broker.starts_with("memory") || config.broker == "eager" {
                return Err(Error::config(
                    "broker",
                    "the memory broker lives inside one process, so a separate worker cannot see what `send` publishes: give --broker redis://... (and a worker on it), or run `machinery quickstart`",
                ));
            }
            let server = server(config).await?;
            steps::run_all(&server, *skip_long, Duration::from_secs(*timeout)).await
        }
        Command::Bench(args) => {
            init_logging(cli.log.as_deref(), "warn");
            let config = load_config(&cli)?;
            bench::run(config, args).await
        }
    }
}

/// A task that panics becomes a task failure with a log line; the default hook would also
/// print a backtrace to stderr for every such task.
fn quiet_task_panics() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::debug!(panic = %info, "panic{location}");
    }));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    quiet_task_panics();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Aborted) => {
            eprintln!(
                "worker quit at once on a second signal; unfinished tasks will be delivered again"
            );
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}
