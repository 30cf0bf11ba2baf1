//! The `intake` binary: `serve` (default), `migrate`, `admin …`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use intake::{App, AppState, Config, config::LogFormat, tiers::Tier};

#[derive(Parser)]
#[command(name = "intake", version, about = "Self-hostable upload API server")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Bring the database schema up to date and exit.
    Migrate,
    /// Administration from the command line.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an account; prints it as JSON.
    CreateAccount {
        /// E-mail address.
        #[arg(long)]
        email: String,
        /// Tier: free, starter, professional or enterprise.
        #[arg(long, value_parser = parse_tier)]
        tier: Tier,
        /// Password (omit for an API-key-only account).
        #[arg(long)]
        password: Option<String>,
    },
    /// Create an API key for an account; prints it (shown once) as JSON.
    CreateApiKey {
        /// Account id.
        #[arg(long)]
        account: uuid::Uuid,
        /// Key name.
        #[arg(long, default_value = "default")]
        name: String,
    },
    /// Change an account's tier and/or custom limits (as PATCH /admin/accounts/{id}).
    UpdateAccount {
        /// Account id.
        #[arg(long)]
        account: uuid::Uuid,
        /// New tier.
        #[arg(long, value_parser = parse_tier)]
        tier: Option<Tier>,
        /// Custom limits to merge, as a JSON object (e.g. '{"storage_bytes":null}'),
        /// or null to clear every override.
        #[arg(long)]
        custom_limits: Option<String>,
    },
    /// Print an account's limits and use as JSON (as GET /admin/accounts/{id}/usage).
    Usage {
        /// Account id.
        #[arg(long)]
        account: uuid::Uuid,
    },
    /// Run one pass of the reaper: expired upload leases, queued object deletions,
    /// and the pruning of idle rate-limit rows, forgotten login failures, ended sessions.
    Reap,
    /// Hold every account's usage against its files and open reservations,
    /// and storage's objects against the file rows; prints the drift as
    /// JSON and exits 1 when there is any.
    Reconcile {
        /// Repair: recount usage, queue orphan objects for deletion, end
        /// stuck leases.
        #[arg(long)]
        fix: bool,
        /// With --fix: also delete the rows of files whose object is gone.
        #[arg(long, requires = "fix")]
        forget_missing: bool,
        /// Keys per page of the storage listing and of the rows.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        page_size: u32,
        /// Seconds a lease may stay past its expiry before it counts as stuck.
        #[arg(long, default_value_t = 60)]
        stuck_after_secs: u64,
        /// Findings of each kind listed in the output (all are counted).
        #[arg(long, default_value_t = 1000)]
        max_items: usize,
    },
}

fn parse_tier(s: &str) -> Result<Tier, String> {
    serde_json::from_value(serde_json::Value::String(s.to_lowercase()))
        .map_err(|_| format!("unknown tier {s:?} (free, starter, professional, enterprise)"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Migrate) = cli.command {
        intake::telemetry::init_logs(LogFormat::Text);
        let url = std::env::var("DATABASE_URL")
            .context("environment variable DATABASE_URL is required but not set")?;
        let pool = intake::db::connect(&url, 2, std::time::Duration::from_secs(10)).await?;
        intake::db::migrate(&pool).await?;
        tracing::info!("database schema is up to date");
        return Ok(());
    }
    let config = Config::from_env()?;
    intake::telemetry::init_logs(config.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve | Command::Migrate => App::build(config).await?.run().await,
        Command::Admin(cmd) => {
            let state = AppState::connect(config).await?;
            let out = match cmd {
                AdminCommand::CreateAccount {
                    email,
                    tier,
                    password,
                } => {
                    let account = intake::admin::create_account(&state, &email, password, tier)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    serde_json::to_value(intake::admin::AdminAccountView::from(account))?
                }
                AdminCommand::UpdateAccount {
                    account,
                    tier,
                    custom_limits,
                } => {
                    let custom_limits = match custom_limits {
                        None => None,
                        Some(raw) => Some(
                            serde_json::from_str::<
                                Option<serde_json::Map<String, serde_json::Value>>,
                            >(&raw)
                            .context("--custom-limits must be a JSON object or null")?,
                        ),
                    };
                    let patch = intake::admin::AccountPatch {
                        tier,
                        custom_limits,
                    };
                    let account = intake::admin::patch_account(&state, account, patch)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    serde_json::to_value(intake::admin::AdminAccountView::from(account))?
                }
                AdminCommand::Usage { account } => {
                    let account = intake::auth::Account::find(&state.db, account)
                        .await?
                        .context("no account with that id")?;
                    let usage = intake::quota::usage_of(&state.db, &account)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    serde_json::to_value(usage)?
                }
                AdminCommand::Reconcile {
                    fix,
                    forget_missing,
                    page_size,
                    stuck_after_secs,
                    max_items,
                } => {
                    let opts = intake::admin::reconcile::Options {
                        fix,
                        forget_missing,
                        page_size: page_size as usize,
                        stuck_after: std::time::Duration::from_secs(stuck_after_secs),
                        max_items,
                    };
                    let report =
                        intake::admin::reconcile::run(&state.db, state.store.as_ref(), &opts)
                            .await?;
                    println!("{}", serde_json::to_string_pretty(&report)?);
                    if !report.clean {
                        std::process::exit(1);
                    }
                    return Ok(());
                }
                AdminCommand::Reap => {
                    let (leases, objects) = intake::reap(&state).await?;
                    let pruned = intake::prune(&state).await?;
                    serde_json::json!({"leases": leases, "objects": objects, "pruned": pruned})
                }
                AdminCommand::CreateApiKey { account, name } => {
                    let account = intake::auth::Account::find(&state.db, account)
                        .await?
                        .context("no account with that id")?;
                    let key = intake::auth::api_keys::create(&state.db, &account, &name)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    serde_json::to_value(key)?
                }
            };
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
    }
}
