//! `hidra api-key …`

use std::io::{BufRead, IsTerminal};

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use hidra::TenantId;
use hidra::auth::{ApiKeyInfo, ApiKeys, CreatedApiKey, NewApiKey};
use serde::Serialize;

use super::tenant_id;
use crate::config::Settings;
use crate::db::{self, Needs};
use crate::opt::ApiKeyCommand;
use crate::output::{self, Table, note, outln};

/// The environment variable holding the pepper.
const PEPPER_VAR: &str = "HIDRA_API_KEY_PEPPER";

/// Listing and revoking never hash a key (nor does creating the key table,
/// in `hidra init`), but [`ApiKeys`] is only built with a pepper; these
/// commands must work without the real one, so they use this stand-in, with
/// which nothing is ever created or verified.
pub(crate) const NO_PEPPER: &str = "hidra-cli: listing and revoking keys never hashes one";

pub(crate) async fn run(settings: &Settings, command: ApiKeyCommand) -> Result<()> {
    match command {
        ApiKeyCommand::Create {
            tenant,
            name,
            scopes,
            expires_in,
            json,
        } => {
            let tenant = tenant_id(&tenant)?;
            let pepper = pepper()?;
            let mut new = NewApiKey::new(name).scopes(scopes);
            if let Some(ttl) = expires_in {
                new = new.expires_in(ttl);
            }
            let (_db, keys) = connect(settings, &pepper).await?;
            let created = keys.create(&tenant, new).await?;
            print_created(&created, "created", json)
        }
        ApiKeyCommand::List { tenant, json } => {
            let tenant = tenant_id(&tenant)?;
            let (db, keys) = connect(settings, NO_PEPPER).await?;
            if db.hidra.tenant(&tenant).await?.is_none() {
                return Err(hidra::Error::NotFound(tenant).into());
            }
            let list = keys.list(&tenant).await?;
            print_list(&list, json)
        }
        ApiKeyCommand::Rotate { key_id, json } => {
            let key_id = parse_key_id(&key_id)?;
            let pepper = pepper()?;
            let (_db, keys) = connect(settings, &pepper).await?;
            let tenant = owner(&keys, &key_id).await?;
            let created = keys.rotate(&tenant, &key_id).await?;
            if !json {
                let old = keys.get(&tenant, &key_id).await?;
                let until = old
                    .and_then(|k| k.grace_until)
                    .map_or_else(|| "now".to_owned(), |t| output::time(&t));
                note!(
                    "rotated API key hk_{key_id} of tenant `{tenant}`; it stays valid until {until}"
                );
            }
            print_created(&created, "new", json)
        }
        ApiKeyCommand::Revoke { key_id } => {
            let key_id = parse_key_id(&key_id)?;
            let (_db, keys) = connect(settings, NO_PEPPER).await?;
            let tenant = owner(&keys, &key_id).await?;
            keys.revoke(&tenant, &key_id).await?;
            outln!("revoked API key hk_{key_id} of tenant `{tenant}`")
        }
        ApiKeyCommand::Verify { key, json } => {
            let key = match key {
                Some(key) => key,
                None => read_key()?,
            };
            let pepper = pepper()?;
            let (_db, keys) = connect(settings, &pepper).await?;
            let verified = keys.verify(key.trim()).await?;
            if json {
                return output::json(&serde_json::json!({
                    "key_id": verified.key_id(),
                    "tenant": verified.tenant(),
                    "name": verified.name(),
                    "scopes": verified.scopes(),
                }));
            }
            outln!(
                "valid: API key hk_{} ({:?}) of tenant `{}`, scopes: {}",
                verified.key_id(),
                verified.name(),
                verified.tenant(),
                scopes_text(verified.scopes())
            )
        }
    }
}

/// The pepper from the environment, or a clear error.
fn pepper() -> Result<String> {
    match std::env::var(PEPPER_VAR) {
        Ok(p) if !p.is_empty() => Ok(p),
        Ok(_) | Err(std::env::VarError::NotPresent) => bail!(
            "{PEPPER_VAR} is not set: API keys are hashed with the application's server-side pepper; \
             set it to the same value (at least 32 random bytes)"
        ),
        Err(std::env::VarError::NotUnicode(_)) => bail!("{PEPPER_VAR} is not valid UTF-8"),
    }
}

async fn connect(settings: &Settings, pepper: &str) -> Result<(db::Connected, ApiKeys)> {
    let db = db::connect(settings, Needs::default()).await?;
    let keys = ApiKeys::new(db.hidra.clone(), pepper).context(PEPPER_VAR)?;
    Ok((db, keys))
}

/// Accepts `<key id>`, `hk_<key id>` or a whole key, and returns the key id.
fn parse_key_id(raw: &str) -> Result<String> {
    let raw = raw.trim();
    let id = ApiKeys::key_id_of(raw).unwrap_or_else(|| raw.strip_prefix("hk_").unwrap_or(raw));
    if id.len() == 24 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(id.to_owned())
    } else {
        Err(anyhow!(
            "invalid API key id {raw:?}: expected the 24 hex digits after `hk_`, as `hidra api-key list` shows them"
        ))
    }
}

/// The tenant a key belongs to, or an error that says what to do.
async fn owner(keys: &ApiKeys, key_id: &str) -> Result<TenantId> {
    match keys.owner(key_id).await {
        Ok(Some(tenant)) => Ok(tenant),
        Ok(None) => bail!("unknown API key hk_{key_id}"),
        // The only configuration error of the lookup: no key table yet.
        Err(e) if e.is_table_missing() => bail!(
            "the API key table {} does not exist; run `hidra init` first",
            keys.table().table()
        ),
        Err(e) => Err(anyhow::Error::from(e).context("looking up an API key")),
    }
}

/// Reads a key from standard input, so that it stays out of the process list.
fn read_key() -> Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        note!("paste the API key and press Enter:");
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    if line.trim().is_empty() {
        bail!("no API key given: pass it as an argument or on standard input");
    }
    Ok(line)
}

fn scopes_text(scopes: &[String]) -> String {
    if scopes.is_empty() {
        "(none)".to_owned()
    } else {
        scopes.join(", ")
    }
}

/// A key's state at `now`, for people.
fn state(info: &ApiKeyInfo, now: DateTime<Utc>) -> String {
    if info.revoked_at.is_some() {
        "revoked".to_owned()
    } else if info.expires_at.is_some_and(|t| t <= now) {
        "expired".to_owned()
    } else if let Some(grace) = info.grace_until {
        if grace <= now {
            "replaced".to_owned()
        } else {
            format!("replaced, valid until {}", output::time(&grace))
        }
    } else {
        "active".to_owned()
    }
}

#[derive(Debug, Serialize)]
struct KeyJson<'a> {
    key_id: &'a str,
    prefix: String,
    tenant: &'a TenantId,
    name: &'a str,
    scopes: &'a [String],
    state: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    rotated_from: Option<&'a str>,
    grace_until: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
}

impl<'a> KeyJson<'a> {
    fn new(info: &'a ApiKeyInfo, now: DateTime<Utc>) -> Self {
        KeyJson {
            key_id: &info.key_id,
            prefix: info.prefix(),
            tenant: &info.tenant,
            name: &info.name,
            scopes: &info.scopes,
            state: state(info, now),
            created_at: info.created_at,
            expires_at: info.expires_at,
            revoked_at: info.revoked_at,
            rotated_from: info.rotated_from.as_deref(),
            grace_until: info.grace_until,
            last_used_at: info.last_used_at,
        }
    }
}

/// Prints a new key: the key alone on standard output (or in the JSON), the
/// rest on standard error. This is the only time the key is shown.
fn print_created(created: &CreatedApiKey, what: &str, json: bool) -> Result<()> {
    let info = created.info();
    if json {
        #[derive(Serialize)]
        struct Created<'a> {
            key: &'a str,
            #[serde(flatten)]
            info: KeyJson<'a>,
        }
        return output::json(&Created {
            key: created.secret(),
            info: KeyJson::new(info, Utc::now()),
        });
    }
    let expires = info
        .expires_at
        .map_or_else(|| "never".to_owned(), |t| output::time(&t));
    note!(
        "{what} API key {} ({:?}) for tenant `{}`; scopes: {}; expires: {expires}",
        info.prefix(),
        info.name,
        info.tenant,
        scopes_text(&info.scopes)
    );
    note!("the key is shown only this once; store it now:");
    outln!("{}", created.secret())
}

fn print_list(list: &[ApiKeyInfo], json: bool) -> Result<()> {
    let now = Utc::now();
    if json {
        let keys: Vec<KeyJson<'_>> = list.iter().map(|k| KeyJson::new(k, now)).collect();
        return output::json(&keys);
    }
    if list.is_empty() {
        note!("no API keys");
        return Ok(());
    }
    let mut table = Table::new([
        "KEY",
        "NAME",
        "SCOPES",
        "STATE",
        "CREATED",
        "EXPIRES",
        "LAST USED",
    ]);
    for k in list {
        table.row(vec![
            k.prefix(),
            k.name.clone(),
            scopes_text(&k.scopes),
            state(k, now),
            output::time(&k.created_at),
            k.expires_at
                .map_or_else(|| "never".to_owned(), |t| output::time(&t)),
            k.last_used_at
                .map_or_else(|| "never".to_owned(), |t| output::time(&t)),
        ]);
    }
    table.print()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_parsed_from_any_form() {
        let id = "0123456789abcdef01234567";
        assert_eq!(parse_key_id(id).unwrap(), id);
        assert_eq!(parse_key_id(&format!("hk_{id}")).unwrap(), id);
        let whole = format!("hk_{id}_{}", "a".repeat(64));
        assert_eq!(parse_key_id(&whole).unwrap(), id);
        assert!(parse_key_id("hk_xyz").is_err());
        assert!(parse_key_id("0123456789ABCDEF01234567").is_err());
    }

    #[test]
    fn the_stand_in_pepper_is_long_enough() {
        assert!(NO_PEPPER.len() >= 32);
    }
}
