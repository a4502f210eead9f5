//! Settings: flags, then environment (both through clap), then the
//! configuration file, then defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use crate::opt::GlobalOpts;

/// The configuration file looked for in the current directory.
const DEFAULT_CONFIG_FILE: &str = "hidra.toml";
/// How long to wait for the database by default.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Schemas migrated at once by default.
const DEFAULT_CONCURRENCY: u32 = 4;

/// The configuration file. Relative paths in it are relative to the file.
///
/// ```toml
/// database_url = "postgres://app@db.internal/app"
/// schema_prefix = "tenant_"
/// registry_table = "public.tenants"
/// shared_schemas = ["public"]
/// row_level_schema = "public"
/// tenant_column = "tenant_id"
/// tenant_migrations = "migrations/tenant"
/// shared_migrations = "migrations/shared"
/// connect_timeout = 5
/// concurrency = 4
/// ```
///
/// The API key pepper is a secret and is only read from the environment.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database_url: Option<String>,
    schema_prefix: Option<String>,
    registry_table: Option<String>,
    shared_schemas: Option<Vec<String>>,
    row_level_schema: Option<String>,
    tenant_column: Option<String>,
    tenant_migrations: Option<PathBuf>,
    shared_migrations: Option<PathBuf>,
    connect_timeout: Option<u64>,
    concurrency: Option<u32>,
}

/// The resolved settings of one invocation.
#[derive(Debug)]
pub(crate) struct Settings {
    /// `None` when nobody named one: see [`Settings::database_url`].
    pub(crate) database_url: Option<String>,
    pub(crate) schema_prefix: String,
    pub(crate) registry_table: String,
    pub(crate) shared_schemas: Vec<String>,
    pub(crate) row_level_schema: String,
    pub(crate) tenant_column: String,
    pub(crate) tenant_migrations: Option<PathBuf>,
    pub(crate) shared_migrations: Option<PathBuf>,
    pub(crate) connect_timeout: Duration,
    pub(crate) concurrency: u32,
}

impl Settings {
    /// Resolves the settings from the command line (flags and environment)
    /// and the configuration file.
    pub(crate) fn resolve(opts: &GlobalOpts) -> Result<Settings> {
        let file = match &opts.config {
            Some(path) => load(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).is_file() => {
                load(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => (FileConfig::default(), PathBuf::new()),
        };
        let (file, base) = file;
        let relative = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        let text = |s: &Option<String>| s.clone().filter(|s| !s.trim().is_empty());

        let concurrency = file.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if concurrency == 0 {
            bail!("invalid configuration: `concurrency` must be at least 1");
        }
        let connect_timeout = opts
            .connect_timeout
            .or(file.connect_timeout)
            .map_or(DEFAULT_CONNECT_TIMEOUT, Duration::from_secs);
        if connect_timeout.is_zero() {
            bail!("invalid configuration: `connect_timeout` must be at least 1 second");
        }
        let database_url = text(&opts.database_url).or(file.database_url);
        Ok(Settings {
            database_url,
            schema_prefix: opts
                .schema_prefix
                .clone()
                .or(file.schema_prefix)
                .unwrap_or_else(|| "tenant_".to_owned()),
            registry_table: text(&opts.registry_table)
                .or(file.registry_table)
                .unwrap_or_else(|| "public.tenants".to_owned()),
            shared_schemas: opts
                .shared_schemas
                .clone()
                .or(file.shared_schemas)
                .unwrap_or_else(|| vec!["public".to_owned()]),
            row_level_schema: text(&opts.row_level_schema)
                .or(file.row_level_schema)
                .unwrap_or_else(|| "public".to_owned()),
            tenant_column: text(&opts.tenant_column)
                .or(file.tenant_column)
                .unwrap_or_else(|| "tenant_id".to_owned()),
            tenant_migrations: nonempty(opts.tenant_migrations.clone())
                .or(file.tenant_migrations.map(relative)),
            shared_migrations: nonempty(opts.shared_migrations.clone())
                .or(file.shared_migrations.map(relative)),
            connect_timeout,
            concurrency,
        })
    }
}

impl Settings {
    /// The database to work on. There is no default: the commands create,
    /// migrate and delete things, so they never guess where (the `postgres`
    /// database of a local server is nobody's application database).
    pub(crate) fn database_url(&self) -> Result<&str> {
        self.database_url.as_deref().ok_or_else(|| {
            anyhow!(
                "no database given: set DATABASE_URL, pass --database-url URL, \
                 or set database_url in hidra.toml"
            )
        })
    }
}

fn nonempty(path: Option<PathBuf>) -> Option<PathBuf> {
    path.filter(|p| !p.as_os_str().is_empty())
}

/// Reads a configuration file; returns it and the directory its relative
/// paths are relative to.
fn load(path: &Path) -> Result<(FileConfig, PathBuf)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
    let config: FileConfig = toml::from_str(&text).map_err(|e| {
        // toml's message spans several lines (it quotes the source); keep one.
        let message = e.message().trim().to_owned();
        let at = e
            .span()
            .map(|span| {
                let line = text[..span.start].matches('\n').count() + 1;
                format!(" (line {line})")
            })
            .unwrap_or_default();
        anyhow::anyhow!(
            "invalid configuration file {}{at}: {message}",
            path.display()
        )
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok((config, base))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> GlobalOpts {
        GlobalOpts {
            database_url: None,
            config: None,
            schema_prefix: None,
            registry_table: None,
            shared_schemas: None,
            row_level_schema: None,
            tenant_column: None,
            tenant_migrations: None,
            shared_migrations: None,
            connect_timeout: None,
        }
    }

    #[test]
    fn file_values_fill_in_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("hidra-cli-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("hidra.toml");
        std::fs::write(
            &file,
            "database_url = \"postgres://file/db\"\nschema_prefix = \"t_\"\ntenant_migrations = \"m/tenant\"\nconcurrency = 7\n",
        )
        .unwrap();
        let mut o = opts();
        o.config = Some(file.clone());
        let s = Settings::resolve(&o).unwrap();
        assert_eq!(s.database_url().unwrap(), "postgres://file/db");
        assert_eq!(s.schema_prefix, "t_");
        assert_eq!(s.tenant_migrations, Some(dir.join("m/tenant")));
        assert_eq!(s.concurrency, 7);
        assert_eq!(s.registry_table, "public.tenants");

        o.database_url = Some("postgres://flag/db".into());
        o.schema_prefix = Some("x_".into());
        let s = Settings::resolve(&o).unwrap();
        assert_eq!(s.database_url().unwrap(), "postgres://flag/db");
        assert_eq!(s.schema_prefix, "x_");

        std::fs::write(&file, "databse_url = \"typo\"\n").unwrap();
        let err = Settings::resolve(&o).unwrap_err().to_string();
        assert!(err.contains("unknown field `databse_url`"), "{err}");
        assert!(err.contains("(line 1)"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn defaults() {
        let s = Settings::resolve(&opts()).unwrap();
        let err = s.database_url().unwrap_err().to_string();
        assert!(
            err.starts_with("no database given: set DATABASE_URL"),
            "{err}"
        );
        assert_eq!(s.schema_prefix, "tenant_");
        assert_eq!(s.shared_schemas, vec!["public".to_owned()]);
        assert_eq!(s.connect_timeout, Duration::from_secs(5));
        assert_eq!(s.tenant_migrations, None);
    }
}
