//! The command line: every option's `///` comment is its help text.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Operate a Hidra deployment: set up the database, manage tenants, run
/// migrations, issue API keys and diagnose problems.
///
/// Settings come from flags, then the environment (`DATABASE_URL`, `HIDRA_*`),
/// then the configuration file (`--config FILE`, or `hidra.toml` in the
/// current directory), then the defaults.
#[derive(Debug, Parser)]
#[command(name = "hidra", version, max_term_width = 100)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalOpts,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every subcommand accepts.
#[derive(Debug, Args)]
#[command(next_help_heading = "Configuration")]
pub(crate) struct GlobalOpts {
    /// PostgreSQL URL of the application's database (required: no default)
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    pub(crate) database_url: Option<String>,

    /// Configuration file (TOML) [default: hidra.toml in the current directory, if present]
    #[arg(
        long,
        env = "HIDRA_CONFIG",
        hide_env_values = true,
        global = true,
        value_name = "FILE"
    )]
    pub(crate) config: Option<PathBuf>,

    /// Prefix of tenant schema names; must match the application's [default: tenant_]
    #[arg(
        long,
        env = "HIDRA_SCHEMA_PREFIX",
        hide_env_values = true,
        global = true,
        value_name = "PREFIX"
    )]
    pub(crate) schema_prefix: Option<String>,

    /// The tenant registry table, `name` or `schema.name` [default: public.tenants]
    #[arg(
        long,
        env = "HIDRA_REGISTRY_TABLE",
        hide_env_values = true,
        global = true,
        value_name = "TABLE"
    )]
    pub(crate) registry_table: Option<String>,

    /// Schemas searched after a tenant's own, comma-separated [default: public]
    #[arg(
        long,
        env = "HIDRA_SHARED_SCHEMAS",
        hide_env_values = true,
        global = true,
        value_name = "SCHEMAS",
        value_delimiter = ','
    )]
    pub(crate) shared_schemas: Option<Vec<String>>,

    /// Schema of the row-level tenants' shared tables [default: public]
    #[arg(
        long,
        env = "HIDRA_ROW_LEVEL_SCHEMA",
        hide_env_values = true,
        global = true,
        value_name = "SCHEMA"
    )]
    pub(crate) row_level_schema: Option<String>,

    /// Tenant column of the row-level tables [default: tenant_id]
    #[arg(
        long,
        env = "HIDRA_TENANT_COLUMN",
        hide_env_values = true,
        global = true,
        value_name = "COLUMN"
    )]
    pub(crate) tenant_column: Option<String>,

    /// Directory of tenant migrations, in sqlx's format (`<version>_<description>.sql`)
    #[arg(
        long,
        env = "HIDRA_TENANT_MIGRATIONS",
        hide_env_values = true,
        global = true,
        value_name = "DIR"
    )]
    pub(crate) tenant_migrations: Option<PathBuf>,

    /// Directory of shared migrations, in sqlx's format
    #[arg(
        long,
        env = "HIDRA_SHARED_MIGRATIONS",
        hide_env_values = true,
        global = true,
        value_name = "DIR"
    )]
    pub(crate) shared_migrations: Option<PathBuf>,

    /// Seconds to wait for the database to answer [default: 5]
    #[arg(long, env = "HIDRA_CONNECT_TIMEOUT", hide_env_values = true, global = true, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) connect_timeout: Option<u64>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create the registry table, the auth tables (logins, API keys), the
    /// server registry table and hidra's internal schema, then apply the
    /// shared migrations if a directory is configured. Safe to run again.
    Init,

    /// Create, list, inspect, suspend, activate and delete tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),

    /// Apply pending migrations: the shared ones, then every tenant's.
    Migrate(MigrateArgs),

    /// Create, list, rotate, revoke and verify per-tenant API keys.
    ///
    /// Keys are stored as a keyed hash: `create`, `rotate` and `verify` need
    /// the application's pepper in the environment variable
    /// `HIDRA_API_KEY_PEPPER` (at least 32 bytes).
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),

    /// Register the PostgreSQL servers tenants may live on besides the
    /// control server (the database of `--database-url`), list them with
    /// their tenant counts, drain them, and remove them.
    #[command(subcommand)]
    Server(ServerCommand),

    /// Check the deployment: database reachable, registry and schemas in
    /// agreement, migrations applied everywhere, row-level security when
    /// there are row-level tenants, and every registered server reachable. Exits with 1 if it finds a problem.
    Doctor {
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
        /// Also settle what a crash left half-made that can be settled
        /// safely: database-per-tenant registrations (login row written,
        /// user not linked) older than a minute are completed or undone
        #[arg(long)]
        repair: bool,
    },

    /// Run one SQL statement in every active tenant (or the named ones), a
    /// few tenants at a time, and print each tenant's rows with its id. A
    /// tenant whose statement fails is reported on standard error and the
    /// others go on; the exit code is then 1.
    Sql(SqlArgs),

    /// Adopt an existing single-tenant database: a schema becomes the first
    /// tenant, or shared tables are split by a tenant column.
    ///
    /// Make a schema the first tenant's (`--tenant ID --baseline VERSION`: its tables, sequences,
    /// views, functions and types move into the tenant's schema, no data
    /// copied), or split shared tables by a tenant column (`--split-by
    /// COLUMN --tables …`: one tenant per value, its rows copied into its
    /// own schema built by the tenant migrations, row counts checked and
    /// printed; run it again to finish an interrupted split). Everything is
    /// inspected first: nothing changes when something cannot be adopted.
    Adopt(AdoptArgs),

    /// Views over one table of every schema tenant (`hidra_reports.all_orders`,
    /// with a `tenant_id` column), for reporting tools. Each query plans one
    /// branch per tenant: see the guide before using them at thousands of
    /// tenants.
    #[command(subcommand)]
    View(ViewCommand),

    /// Watch which tenants load a running service, refreshed like `top`:
    /// connections held now, connection time and requests per second, waits
    /// and refusals at the tenant's pool cap, cancelled statements and
    /// rate-limit refusals. Reads the service's `/health/detailed` report
    /// (hidra-axum's health routes); needs no database access.
    Top(TopArgs),
}

/// `hidra server …`
#[derive(Debug, Subcommand)]
pub(crate) enum ServerCommand {
    /// Register a server. It is connected to once first: it must answer and
    /// run PostgreSQL 15 or later.
    Add {
        /// Its name: lowercase ASCII letters, digits, `-` and `_`, 1–50
        /// characters, starting with a letter
        name: String,
        /// Its connection URL, `postgres://user[:password]@host[:port]/database`
        /// (stored as given; shown with the password redacted)
        url: String,
        /// How many tenants it should hold at most (a hint for placement)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(..=i32::MAX as i64))]
        capacity: Option<u32>,
        /// Print the registered server as JSON
        #[arg(long)]
        json: bool,
    },

    /// List the registered servers, with how many tenants each holds.
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },

    /// Stop placing new tenants on a server; its tenants stay and are served.
    Drain {
        /// The server
        name: String,
    },

    /// Mark a server read-only: it takes no new tenants.
    #[command(name = "read-only")]
    ReadOnly {
        /// The server
        name: String,
    },

    /// Make a drained or read-only server take new tenants again.
    Activate {
        /// The server
        name: String,
    },

    /// Forget a server. Refused while any tenant lives on it; its databases
    /// are left as they are.
    Remove {
        /// The server
        name: String,
    },
}

/// `hidra view …`
#[derive(Debug, Subcommand)]
pub(crate) enum ViewCommand {
    /// Create (or rebuild) `all_TABLE` over TABLE of every active or
    /// suspended schema tenant, with the columns they all have.
    Create {
        /// The tenant table
        table: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Rebuild every view `create` made, over the tenants registered now
    /// (a deprovisioned tenant's view is dropped with its table).
    Refresh {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Drop `all_TABLE` and stop maintaining it.
    Drop {
        /// The tenant table
        table: String,
    },
}

/// `hidra sql`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["all_tenants", "tenant"])))]
pub(crate) struct SqlArgs {
    /// The statement, run unqualified in each tenant's schema
    pub(crate) sql: String,
    /// Run it in every active tenant
    #[arg(long)]
    pub(crate) all_tenants: bool,
    /// Run it in this tenant (repeat for several)
    #[arg(long, value_name = "ID")]
    pub(crate) tenant: Vec<String>,
    /// Tenants at a time
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) concurrency: u16,
    /// One JSON object per row (`{"tenant":…,"row":{…}}`) and per failed tenant
    #[arg(long, conflicts_with = "csv")]
    pub(crate) json: bool,
    /// CSV with a header line, the tenant id first
    #[arg(long)]
    pub(crate) csv: bool,
}

/// `hidra adopt`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("how").required(true).args(["tenant", "split_by"])))]
pub(crate) struct AdoptArgs {
    /// Make the schema this tenant's
    #[arg(long, value_name = "ID", requires = "baseline")]
    pub(crate) tenant: Option<String>,
    /// The tenant migration version the schema is at (with --tenant); the
    /// later ones apply with the next `hidra migrate`
    #[arg(long, value_name = "VERSION", requires = "tenant")]
    pub(crate) baseline: Option<i64>,
    /// A table that stays shared (with --tenant; repeat or comma-separate)
    #[arg(long, value_name = "TABLE", value_delimiter = ',', requires = "tenant")]
    pub(crate) keep: Vec<String>,
    /// The tenant's display name (with --tenant) [default: the id]
    #[arg(long, requires = "tenant")]
    pub(crate) name: Option<String>,
    /// Split shared tables by this column: one tenant per distinct value
    #[arg(long, value_name = "COLUMN", requires = "tables")]
    pub(crate) split_by: Option<String>,
    /// The tables to split, comma-separated (with --split-by)
    #[arg(
        long,
        value_name = "TABLES",
        value_delimiter = ',',
        requires = "split_by"
    )]
    pub(crate) tables: Vec<String>,
    /// What goes before each value to make its tenant id (with --split-by),
    /// e.g. `company-` turns 7 into `company-7` [default: none]
    #[arg(long, value_name = "PREFIX", requires = "split_by")]
    pub(crate) id_prefix: Option<String>,
    /// Fill the login lookup (email → tenant) from this users table, one of
    /// --tables
    #[arg(long, value_name = "TABLE", requires = "split_by")]
    pub(crate) users: Option<String>,
    /// The users table's email column [default: email]
    #[arg(long, value_name = "COLUMN", requires = "users")]
    pub(crate) email_column: Option<String>,
    /// The schema to adopt or split
    #[arg(long, value_name = "SCHEMA", default_value = "public")]
    pub(crate) from_schema: String,
    /// Print the result as JSON
    #[arg(long)]
    pub(crate) json: bool,
}

/// `hidra top`
#[derive(Debug, Args)]
pub(crate) struct TopArgs {
    /// The service's detailed health report
    #[arg(
        long,
        env = "HIDRA_TOP_URL",
        default_value = "http://127.0.0.1:3000/health/detailed"
    )]
    pub(crate) url: String,
    /// Seconds between refreshes
    #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
    pub(crate) interval: f64,
    /// Stop after this many refreshes [default: run until interrupted]
    #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) iterations: Option<u32>,
    /// Print each report as one line of JSON instead of a screen
    #[arg(long)]
    pub(crate) json: bool,
}

fn parse_interval(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(secs) if (0.1..=3600.0).contains(&secs) => Ok(secs),
        _ => Err("expected seconds between 0.1 and 3600".into()),
    }
}

/// `hidra tenant …`
#[derive(Debug, Subcommand)]
pub(crate) enum TenantCommand {
    /// Create a tenant: registry row, schema and every tenant migration, all
    /// or nothing.
    Create {
        /// The tenant id: lowercase ASCII letters, digits, `-` and `_`, 1–50
        /// characters, starting with a letter
        id: String,
        /// Display name [default: the id]
        #[arg(long)]
        name: Option<String>,
        /// How to isolate it [default: schema]
        #[arg(long, value_parser = ["schema", "row_level", "database"])]
        strategy: Option<String>,
        /// Free-form metadata, a JSON object (e.g. '{"plan":"pro"}')
        #[arg(long, value_name = "JSON")]
        metadata: Option<String>,
        /// The registered server to place it on (`control`: the control
        /// server) [default: the placement policy's choice]
        #[arg(long, value_name = "NAME")]
        server: Option<String>,
        /// Print the new tenant as JSON
        #[arg(long)]
        json: bool,
    },

    /// List tenants, ordered by id.
    List {
        /// Only tenants in this status
        #[arg(long, value_parser = ["provisioning", "active", "suspended", "deleting"])]
        status: Option<String>,
        /// Only tenants whose id or name contains this text, ignoring case
        #[arg(long, value_name = "TEXT")]
        search: Option<String>,
        /// At most this many tenants [default: all]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },

    /// Show one tenant.
    Show {
        /// The tenant id
        id: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },

    /// Suspend a tenant: its data stays, the application refuses its requests.
    Suspend {
        /// The tenant id
        id: String,
    },

    /// Re-activate a suspended tenant.
    Activate {
        /// The tenant id
        id: String,
    },

    /// Write one tenant to a portable archive (a tar file): its schema DDL at
    /// its migration version, every table's rows, its sequences, its registry
    /// record, its logins and API keys, with a manifest and checksums.
    ///
    /// Read in one consistent snapshot while the tenant keeps being written.
    /// Needs the tenant migrations the tenant was migrated with.
    Export {
        /// The tenant id
        id: String,
        /// The archive to write (replaced if it exists; written whole or not
        /// at all)
        #[arg(long, short, value_name = "FILE")]
        output: PathBuf,
        /// Leave the tenant's logins and API keys out
        #[arg(long)]
        skip_credentials: bool,
        /// Print a summary as JSON
        #[arg(long)]
        json: bool,
    },

    /// Restore a tenant from an archive written by `hidra tenant export`, all
    /// or nothing.
    ///
    /// The whole archive is checked first (every checksum, the format
    /// version, the migrations); the tenant's schema is then built by the
    /// tenant migrations up to the archived version, loaded, and migrated to
    /// the latest. Under a new id its API keys are left out (issue new ones);
    /// its logins come along unless their emails are taken.
    Import {
        /// The archive
        file: PathBuf,
        /// Import under this id instead of the archived one
        #[arg(long = "as", value_name = "NEW_ID")]
        as_id: Option<String>,
        /// The strategy to import onto [default: the one it had]
        #[arg(long, value_parser = ["schema", "row_level", "database"])]
        strategy: Option<String>,
        /// Display name [default: the archived one]
        #[arg(long)]
        name: Option<String>,
        /// Import neither logins nor API keys
        #[arg(long)]
        skip_credentials: bool,
        /// Place the tenant on this registered server (`hidra server list`):
        /// built on the control server, then moved there; a failed move
        /// takes the import back [default: the control server]
        #[arg(long, value_name = "NAME")]
        server: Option<String>,
        /// Print the summary as JSON
        #[arg(long)]
        json: bool,
    },

    /// Delete a tenant and all its data (its schema is dropped).
    ///
    /// Asks for the id again on a terminal; without a terminal, `--yes` is
    /// required.
    Delete {
        /// The tenant id
        id: String,
        /// Do not ask for confirmation
        #[arg(long, short)]
        yes: bool,
    },

    /// Move a tenant to another server, keeping every row. It stays readable;
    /// its writes wait while its tables are copied.
    Move {
        /// The tenant id
        id: String,
        /// The registered server to move it to (`control`: the control server)
        #[arg(long, value_name = "NAME")]
        to_server: String,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
}

/// `hidra migrate [status]`
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct MigrateArgs {
    #[command(subcommand)]
    pub(crate) command: Option<MigrateCommand>,

    #[command(flatten)]
    pub(crate) run: MigrateRun,
}

/// Options of a migration run.
#[derive(Debug, Args)]
pub(crate) struct MigrateRun {
    /// Only this tenant (repeat for several; spare schemas are then skipped).
    /// The shared migrations are applied first either way
    #[arg(long = "tenant", value_name = "ID")]
    pub(crate) tenants: Vec<String>,

    /// How many schemas to migrate at once [default: 4]
    #[arg(
        long,
        env = "HIDRA_CONCURRENCY",
        hide_env_values = true,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=256)
    )]
    pub(crate) concurrency: Option<u32>,

    /// Report what would be applied, apply nothing
    #[arg(long)]
    pub(crate) dry_run: bool,

    /// Print the summary as JSON
    #[arg(long)]
    pub(crate) json: bool,
}

/// `hidra migrate status`
#[derive(Debug, Subcommand)]
pub(crate) enum MigrateCommand {
    /// Show every tenant schema's version and pending migrations, and the
    /// shared schema's.
    Status {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },

    /// Create or migrate the template schema: the tenant migrations applied
    /// to a schema of no tenant, for sqlx's compile-time checked queries
    /// (`query!`). Prints the DATABASE_URL to build with.
    Template {
        /// The schema's name
        #[arg(long, default_value = hidra::migrate::DEFAULT_TEMPLATE_SCHEMA)]
        schema: String,
        /// Drop it first (after the tenant migrations were edited)
        #[arg(long)]
        recreate: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

/// `hidra api-key …`
#[derive(Debug, Subcommand)]
pub(crate) enum ApiKeyCommand {
    /// Create a key for a tenant. The key is printed once, on standard
    /// output; it cannot be shown again.
    Create {
        /// The tenant id
        tenant: String,
        /// A name for people ("ci", "billing export")
        #[arg(long, default_value = "default")]
        name: String,
        /// A scope the key grants (repeat for several; `*` and `prefix:*`
        /// allowed). A key without scopes passes no scope check
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// Expire the key after this long: `90d`, `12h`, `30m`, `1w2d`
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        expires_in: Option<Duration>,
        /// Print the key and its record as JSON
        #[arg(long)]
        json: bool,
    },

    /// List a tenant's keys (never their secrets).
    List {
        /// The tenant id
        tenant: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },

    /// Replace a key with a new one (same name, scopes and lifetime); the
    /// old key keeps working for the application's grace period. The new
    /// key is printed once.
    Rotate {
        /// The key id: the 24 hex digits after `hk_`, as `list` shows them
        key_id: String,
        /// Print the new key and its record as JSON
        #[arg(long)]
        json: bool,
    },

    /// Revoke a key at once.
    Revoke {
        /// The key id: the 24 hex digits after `hk_`, as `list` shows them
        key_id: String,
    },

    /// Check a key and show its tenant and scopes. Exits with 1 if it is
    /// refused.
    Verify {
        /// The full key `hk_<id>_<secret>` [default: read one line from standard input]
        key: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

/// Parses `90d`, `12h`, `30m`, `45s`, `2w` and sums like `1d12h`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration {s:?}: expected a number and a unit (s, m, h, d, w), e.g. 90d or 1d12h"
        )
    };
    let mut total: u64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let unit_len = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        let seconds = match &rest[digits..digits + unit_len] {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "w" => 604_800,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(seconds)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration {s:?} is too long"))?;
        rest = &rest[digits + unit_len..];
    }
    if total == 0 {
        return Err(format!("duration {s:?} must be longer than zero"));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(
            parse_duration("1d12h"),
            Ok(Duration::from_secs(86_400 + 12 * 3_600))
        );
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(2 * 604_800)));
        for bad in [
            "",
            "d",
            "12",
            "12x",
            "1.5h",
            "-1h",
            "0s",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
